"""Where the time of bits-back coding goes: model evaluations vs the codec (ANS + discretization).

    python bench/encode_overhead.py                       # CIFAR-10 L_vlb architecture, batch 16, CPU
    python bench/encode_overhead.py --batch 64 --device cuda

Weights are random (the architecture, not the training, sets the cost). The respaced process
has --steps steps; the ratio is per step, so a few steps suffice. Prints codec/model time.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bits_back_diffusion.codec_registry import build_codec, codec_class
from bits_back_diffusion.coding import initial_message
from bits_back_diffusion.latent_model import DiffusionLatentModel
from bits_back_diffusion.runtime import set_determinism
from improved_diffusion.script_util import create_gaussian_diffusion, create_model

ROOT = Path(__file__).resolve().parents[1]


class TimedLatentModel(DiffusionLatentModel):
    """Accumulates the wall time of the network calls (synchronising the GPU)."""

    model_seconds: float = 0.0

    def reverse_raw(self, z, t):  # the network call under reverse (and under BB-ANS decode's tape)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = super().reverse_raw(z, t)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.model_seconds += time.perf_counter() - start
        return out


def load_model_flags(name: str) -> dict:
    import yaml

    return yaml.safe_load((ROOT / "config" / "model" / f"{name}.yaml").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar10", help="a config/model/*.yaml name")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4, help="respaced steps to time")
    parser.add_argument("--codec", default="bbans")
    parser.add_argument("--lane-images", type=int, default=0,
                        help="images' worth of ANS lanes (bitswap; default 1 as in config/codec/bitswap.yaml; "
                             "bbans always uses the whole batch)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    set_determinism(True)
    flags = load_model_flags(args.model)
    model = create_model(**flags).to(args.device).eval()
    diffusion = create_gaussian_diffusion(steps=4000, learn_sigma=True, noise_schedule="cosine", use_kl=True,
                                          rescale_timesteps=True, timestep_respacing=str(args.steps))
    lm = TimedLatentModel(model, diffusion, torch.device(args.device))
    codec = build_codec(args.codec, lm, codec_class(args.codec).default_precisions)
    shape = (args.batch, flags.get("in_channels", 3), flags["image_size"], flags["image_size"])
    x = np.random.default_rng(0).integers(0, 256, shape)
    head = min(args.lane_images or 1, args.batch) if getattr(codec, "shares_lanes", False) else args.batch
    msg = initial_message(codec, (head,) + shape[1:], seed=0)
    with torch.no_grad():
        lm.reverse(lm.latent_to_model(np.zeros(shape)), 0)  # warm-up (allocations, kernels)
    lm.model_seconds = 0.0

    start = time.perf_counter()
    msg = codec.encode(msg, x)
    encode_total = time.perf_counter() - start
    encode_model = lm.model_seconds
    lm.model_seconds = 0.0
    start = time.perf_counter()
    codec.decode(msg, args.batch)
    decode_total = time.perf_counter() - start
    decode_model = lm.model_seconds

    rows = {
        "encode": (encode_model, encode_total - encode_model),
        "decode": (decode_model, decode_total - decode_model),
    }
    print(f"{args.codec} | model={args.model} batch={args.batch} lanes for {head} image(s) device={args.device} "
          f"steps={args.steps}")
    print("| phase | model s/step | codec s/step | codec / model |")
    print("|---|---|---|---|")
    for phase, (m, c) in rows.items():
        print(f"| {phase} | {m / args.steps:.4f} | {c / args.steps:.4f} | {c / m:.3f} |")
    print(json.dumps({phase: {"model_s": m, "codec_s": c, "ratio": c / m} for phase, (m, c) in rows.items()}))


if __name__ == "__main__":
    main()
