"""Codec time per diffusion step: the NumPy reference vs the compiled codec (codec.backend).

    python bench/codec_speed.py              # CIFAR-10 architecture, batch 16, vlb100 of 4000 steps
    python bench/codec_speed.py --steps 3    # quick: only the first 3 respaced steps

For each codec (bitswap with lanes for one image, bbans with lanes for the whole batch) and
direction, the model runs once (its time per step is reported) and its outputs are recorded;
the codec is then timed on the NumPy path and on the compiled path's host coder with 1 and 2
numba threads, replaying the recorded outputs, so every path codes the very same batch (best of
--repeats rounds over the three paths). All
these paths must give the same message (checked). With --device cuda, each codec is also timed
on the CUDA coder (kernels on the GPU; Bit-Swap's model values stay there), replaying model
outputs recorded for it the same way; its messages differ from the host's in the last bits of
the CDFs, so it is checked by decoding. Weights are random: the architecture sets the model's cost, and
the codec's cost does not depend on the weights. Prints a markdown table, then
what scipy's ndtr/ndtri cost per call in compiled code, how many the NumPy reference and the
compiled path evaluate per latent, and the compiled path's floor, the time of those calls alone
(`special_cost`): the part of a step no exact compiled path can avoid; then a JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numba
import numpy as np
import torch

import craystack as cs
from bits_back_diffusion.codec_registry import build_codec, codec_class
from bits_back_diffusion.coding import initial_message
from bits_back_diffusion.latent_model import DiffusionLatentModel
from improved_diffusion.script_util import create_gaussian_diffusion, create_model

import special_cost  # noqa: E402 (bench/, beside this script)

ROOT = Path(__file__).resolve().parents[1]


class RecordingModel(DiffusionLatentModel):
    """Runs the network, timing it, and records every output (in call order) for replays; with
    `steps` set, the process is cut to its first `steps` respaced steps."""

    def __init__(self, *args, steps: int = 0, **kwargs):
        super().__init__(*args, **kwargs)
        self.steps = steps or self.diffusion.num_timesteps
        self.calls, self.seconds, self.replay = [], 0.0, None

    @property
    def num_steps(self) -> int:
        return self.steps

    def _timed(self, name, fn, *args):
        if self.replay is not None:
            return self.replay.pop(0)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        out = fn(*args)
        sync()
        self.seconds += time.perf_counter() - start
        self.calls.append(out)
        return out

    def reverse_raw(self, z, t):  # the network call under reverse (and under BB-ANS decode's tape)
        return self._timed("reverse", super().reverse_raw, z, t)

    def reverse_raw_on_device(self, z, t):  # the CUDA coder's network call
        return self._timed("reverse", super().reverse_raw_on_device, z, t)

    def posterior_top_on_device(self, x):
        return self._timed("posterior_top", super().posterior_top_on_device, x)

    def posterior_on_device(self, x, z_next, t_next):
        return self._timed("posterior", super().posterior_on_device, x, z_next, t_next)

    def posterior_top(self, x):
        return self._timed("posterior_top", super().posterior_top, x)

    def posterior(self, x, z_next, t_next):
        return self._timed("posterior", super().posterior, x, z_next, t_next)


def bench_model(name: str, respacing: str, device: torch.device):
    """(flags, model, diffusion): config/model/<name>.yaml with random weights (seed 0) on `device`,
    and the 4000-step cosine process of the L_vlb checkpoints, respaced."""
    import yaml

    flags = yaml.safe_load((ROOT / "config" / "model" / f"{name}.yaml").read_text())
    torch.manual_seed(0)
    model = create_model(**flags).eval().to(device)
    diffusion = create_gaussian_diffusion(steps=4000, learn_sigma=True, noise_schedule="cosine", use_kl=True,
                                          rescale_timesteps=True, timestep_respacing=respacing)
    return flags, model, diffusion


def bench_batch(shape) -> np.ndarray:
    """The coded images: uniform random levels (seed 0)."""
    return np.random.default_rng(0).integers(0, 256, shape)


def timed(codec, lm, fn, outputs, threads):
    """Seconds of `fn()` on replayed model outputs with `threads` numba threads (and its result)."""
    numba.set_num_threads(threads)
    lm.replay = list(outputs)
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_codec(name, model, diffusion, x, steps, device, repeats=3):
    lm = RecordingModel(model, diffusion, device, steps=steps)
    precisions = codec_class(name).default_precisions
    codecs = {b: build_codec(name, lm, precisions, backend=b, coder="host") for b in ("numpy", "numba")}
    head = 1 if codecs["numpy"].shares_lanes else x.shape[0]
    start = initial_message(codecs["numpy"], (head,) + x.shape[1:], seed=0)
    rows = {}
    with torch.no_grad():
        encoded = codecs["numpy"].encode(start, x)  # runs and records the model
    enc_model, enc_calls = lm.seconds, lm.calls
    lm.calls, lm.seconds = [], 0.0
    with torch.no_grad():
        decoded, _ = codecs["numpy"].decode(encoded, x.shape[0])
    dec_model, dec_calls = lm.seconds, lm.calls
    # warm the compiled path up (loading or compiling its functions) before timing it
    for threads in (1, 2):
        timed(codecs["numba"], lm, lambda: codecs["numba"].encode(start, x), enc_calls, threads)
        timed(codecs["numba"], lm, lambda: codecs["numba"].decode(encoded, x.shape[0]), dec_calls, threads)
    for direction, model_s, calls, run in (
        ("encode", enc_model, enc_calls, lambda c: c.encode(start, x)),
        ("decode", dec_model, dec_calls, lambda c: c.decode(encoded, x.shape[0])[0]),
    ):
        reference = cs.flatten(encoded if direction == "encode" else decoded)
        times = {}
        for _ in range(repeats):  # rounds over all paths, so that a disturbance hits one round, not one path
            for label, backend, threads in (("numpy", "numpy", 1), ("numba_1", "numba", 1), ("numba_2", "numba", 2)):
                seconds, message = timed(codecs[backend], lm, lambda: run(codecs[backend]), calls, threads)
                if not np.array_equal(cs.flatten(message), reference):
                    raise SystemExit(f"{name} {direction}: the {label} path gave a different message")
                times[label] = min(times.get(label, np.inf), seconds / steps)
        with special_cost.count_reference_calls() as counts:  # an untimed replay, counting
            timed(codecs["numpy"], lm, lambda: run(codecs["numpy"]), calls, 1)
        per_latent = {f"{k}_per_latent": v / steps / x.size for k, v in counts.items()}
        rows[direction] = dict(model=model_s / steps, **times, **per_latent)
    if device.type == "cuda":
        for direction, seconds in bench_cuda_coder(name, lm, precisions, start, x, steps).items():
            rows[direction]["cuda"] = seconds
    return rows


def bench_cuda_coder(name, lm, precisions, start, x, steps):
    """Seconds per step of the CUDA coder's encode and decode, on replayed model outputs of its own
    (recorded on a first pass that also compiles the kernels); its decode must give back x and
    the initial message."""
    codec = build_codec(name, lm, precisions, backend="numba", coder="cuda")
    lm.calls, lm.replay = [], None
    with torch.no_grad():
        encoded = codec.encode(start, x)
    enc_calls = lm.calls
    lm.calls = []
    with torch.no_grad():
        decoded, back = codec.decode(encoded, x.shape[0])
    dec_calls = lm.calls
    if not (np.array_equal(back, x) and cs.message_equal(decoded, start)):
        raise SystemExit(f"{name}: the CUDA coder did not decode its own message exactly")
    out = {}
    for direction, calls, run in (("encode", enc_calls, lambda: codec.encode(start, x)),
                                  ("decode", dec_calls, lambda: codec.decode(encoded, x.shape[0])[0])):
        seconds, message = timed(codec, lm, run, calls, 1)
        torch.cuda.synchronize()
        if not cs.message_equal(message, encoded if direction == "encode" else decoded):
            raise SystemExit(f"{name} {direction}: the CUDA coder is not repeatable")
        out[direction] = seconds / steps
    lm.replay = None
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="cifar10", help="a config/model/*.yaml name")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--respacing", default="vlb100")
    parser.add_argument("--steps", type=int, default=0, help="time only the first N respaced steps (0: all)")
    parser.add_argument("--codecs", default="bitswap,bbans")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda); with cuda, Bit-Swap's CUDA coder is timed too")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per path; the fastest counts")
    parser.add_argument("--no-floor", action="store_true",
                        help="skip the special-function floor (it counts calls in a child process, ~10 s per codec)")
    parser.add_argument("--json", default="", help="also write the results (and the settings) to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    flags, model, diffusion = bench_model(args.model, args.respacing, device)
    steps = args.steps or diffusion.num_timesteps
    shape = (args.batch, flags.get("in_channels", 3), flags["image_size"], flags["image_size"])
    x = bench_batch(shape)
    print(f"device={device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''} "
          f"model={args.model} batch={args.batch} respacing={args.respacing} of 4000, timed steps={steps}, "
          f"CPU threads={torch.get_num_threads()} (torch), numba threads={numba.config.NUMBA_NUM_THREADS}")
    results = {}
    print("| codec | direction | model ms/step | NumPy ms/step | compiled 1 thread | compiled 2 threads "
          "| NumPy / compiled 1T | 1T / 2T | codec (2T) / model | CUDA coder ms/step | CUDA coder / model |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.codecs.split(","):
        results[name] = bench_codec(name, model, diffusion, x, steps, device, args.repeats)
        for direction, r in results[name].items():
            gpu = (f"{1e3 * r['cuda']:.2f} | {r['cuda'] / r['model']:.3f}" if "cuda" in r else "- | -")
            print(f"| {name} | {direction} | {1e3 * r['model']:.1f} | {1e3 * r['numpy']:.1f} | "
                  f"{1e3 * r['numba_1']:.1f} | {1e3 * r['numba_2']:.1f} | {r['numpy'] / r['numba_1']:.2f} | "
                  f"{r['numba_1'] / r['numba_2']:.2f} | {r['numba_2'] / r['model']:.3f} | {gpu} |", flush=True)
    ns = special_cost.compiled_ns_per_call()
    for name, rows in ([] if args.no_floor else results.items()):
        counted = special_cost.compiled_calls_per_latent(name, args.model, args.respacing, steps, args.batch)
        for direction, r in rows.items():
            c = counted[direction]
            r.update(compiled_ndtr_per_latent=c["ndtr"], compiled_ndtri_per_latent=c["ndtri"],
                     floor=1e-9 * x.size * (c["ndtr"] * ns["ndtr"] + c["ndtri"] * ns["ndtri"]))
    print(f"\nscipy's ndtr / ndtri called from compiled code (one thread): {ns['ndtr']:.1f} / {ns['ndtri']:.1f} ns "
          "per call. Evaluations per latent per step, by the NumPy reference and by the compiled path (counted on "
          "the batch's first 2 images), and the compiled path's floor: its calls times their cost, the time one "
          "thread spends in them alone:")
    print("| codec | direction | NumPy ndtr | NumPy ndtri | compiled ndtr | compiled ndtri | floor ms/step | "
          "NumPy / floor |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for direction, r in rows.items():
            if "floor" in r:
                compiled = (f"{r['compiled_ndtr_per_latent']:.2f} | {r['compiled_ndtri_per_latent']:.2f} | "
                            f"{1e3 * r['floor']:.1f} | {r['numpy'] / r['floor']:.2f}")
            else:
                compiled = "- | - | - | -"
            print(f"| {name} | {direction} | {r['ndtr_per_latent']:.2f} | {r['ndtri_per_latent']:.2f} | {compiled} |")
    layer = numba.threading_layer()
    spin = f" (GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')})" if layer == "omp" else ""
    print(f"numba threading layer: {layer}{spin}")
    print(json.dumps(results))
    if args.json:
        settings = {"threading_layer": layer, "device": str(device), "model": args.model, "batch": args.batch,
                    "respacing": args.respacing,
                    "steps": steps, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "cuda_threads": os.environ.get("BBD_CUDA_THREADS", "256"),
                    "cuda_blocks": os.environ.get("BBD_CUDA_BLOCKS", "1"), "special_ns_per_call": ns}
        Path(args.json).write_text(json.dumps({"settings": settings, "seconds_per_step": results}, indent=1))


if __name__ == "__main__":
    main()
