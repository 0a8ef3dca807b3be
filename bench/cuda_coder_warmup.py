"""Compile (and cache) every CUDA coder kernel with a tiny encode + decode of both codecs on the GPU,
timing it: the first step of bench/device_check.sh, so that a compile failure shows on its own and
later processes load the kernels from numba-cuda's cache.

    python bench/cuda_coder_warmup.py [--device cuda]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import craystack as cs  # noqa: E402
from bits_back_diffusion.codec_registry import build_codec, codec_class  # noqa: E402
from bits_back_diffusion.coding import initial_message  # noqa: E402
from bits_back_diffusion.latent_model import DiffusionLatentModel  # noqa: E402
from improved_diffusion.script_util import create_gaussian_diffusion, create_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(image_size=8, num_channels=32, num_res_blocks=1, learn_sigma=True, class_cond=False,
                         use_checkpoint=False, attention_resolutions="", num_heads=1, num_heads_upsample=-1,
                         use_scale_shift_norm=True, dropout=0.0, channel_mult="1,2").eval().to(device)
    diffusion = create_gaussian_diffusion(steps=40, learn_sigma=True, noise_schedule="cosine", use_kl=True,
                                          rescale_timesteps=True, timestep_respacing="3")
    lm = DiffusionLatentModel(model, diffusion, device)
    x = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8))
    coder = "cuda" if device.type == "cuda" else "host"
    for name in ("bitswap", "bbans"):
        codec = build_codec(name, lm, codec_class(name).default_precisions, coder=coder)
        head = 1 if codec.shares_lanes else x.shape[0]
        start = initial_message(codec, (head,) + x.shape[1:], seed=0)
        began = time.perf_counter()
        with torch.no_grad():
            decoded, back = codec.decode(codec.encode(start, x), x.shape[0])
        ok = np.array_equal(back, x) and cs.message_equal(decoded, start)
        print(f"{name} on the {coder} coder: first encode + decode {time.perf_counter() - began:.1f} s "
              f"(compiling or loading its kernels), exact: {ok}", flush=True)
        if not ok:
            raise SystemExit(f"{name}: the {coder} coder did not decode its own message exactly")


if __name__ == "__main__":
    main()
