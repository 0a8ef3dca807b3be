"""Does the threaded codec slow the model down? A real Bit-Swap encode (model and codec
interleaved, as encode.py runs them) with 2 numba threads, reporting the model's time per step.

    python bench/codec_threads_model.py                                  # the default layer (OpenMP, bounded spin)
    NUMBA_THREADING_LAYER=workqueue python bench/codec_threads_model.py  # numba's workqueue layer
    GOMP_SPINCOUNT=300000 python bench/codec_threads_model.py            # libgomp's default spin

Run the three in turn on an idle machine: the model's time per step should match across them
unless the codec's idle threads spin while the model runs (craystack/compiled/kernels.py).
CIFAR-10 architecture with random weights, batch 16, vlb100, the first `--steps` steps.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numba
import numpy as np
import torch

from bits_back_diffusion.codec_registry import build_codec, codec_class
from bits_back_diffusion.coding import initial_message

sys.path.insert(0, str(Path(__file__).resolve().parent))
from codec_speed import RecordingModel, bench_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="numba threads for the codec")
    args = parser.parse_args()
    _, model, diffusion = bench_model("cifar10", "vlb100", torch.device("cpu"))
    x = np.random.default_rng(0).integers(0, 256, (16, 3, 32, 32))
    lm = RecordingModel(model, diffusion, torch.device("cpu"), steps=args.steps)
    codec = build_codec("bitswap", lm, codec_class("bitswap").default_precisions, backend="numba")
    start = initial_message(codec, (1,) + x.shape[1:], seed=0)
    numba.set_num_threads(args.threads)
    with torch.no_grad():
        codec.encode(start, x)  # warm-up: compiled functions loaded, threads started
        lm.seconds, lm.calls = 0.0, []
        began = time.perf_counter()
        codec.encode(start, x)
        total = time.perf_counter() - began
    layer = numba.threading_layer()
    spin = f", GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT')}" if layer == "omp" else ""
    print(f"layer={layer}{spin} numba threads={args.threads} torch threads={torch.get_num_threads()}: "
          f"model {lm.seconds / args.steps * 1e3:.0f} ms/step, whole encode {total / args.steps * 1e3:.0f} ms/step")


if __name__ == "__main__":
    main()
