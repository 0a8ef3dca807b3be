"""What the normal CDF and its inverse cost the codec: the floor under an exact compiled path.

Both codec paths must call scipy's `ndtr`/`ndtri` (the NumPy reference's functions) to write the
reference's bits, so no exact compiled path can code a step faster than its calls to them take.
`bench/codec_speed.py` prints these figures beside its timings, measured in the same run:

* `count_reference_calls`: ndtr and ndtri evaluations (array elements) the NumPy reference makes
  while it codes, by wrapping the names its modules imported. This is the reference's count; the
  compiled path reuses some values (a coarse bin's edges for its sub-bins, and it evaluates one
  branch where NumPy's `np.where` evaluates both), so it makes fewer (`bitswap_lanes` shows which).
* `compiled_calls_per_latent`: the calls the compiled path makes, counted by running its kernels
  as plain Python (``NUMBA_DISABLE_JIT=1``, in a child process: numba reads it at import) on the
  first images of the same batch, with the same model and steps.
* `compiled_ns_per_call`: nanoseconds per call of the compiled `ndtr`/`ndtri` (scipy's C functions
  called from a numba loop on one thread, as the kernels call them, independent calls one after
  another), on arguments spread like the codec's standardized bin edges and quantiles.

The compiled count times the cost per call is the floor: the time one thread spends in these
functions alone, before any other work of the step.

    python bench/special_cost.py count-compiled --codec bitswap   # the child's command line
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator

import numba
import numpy as np

from bits_back_diffusion import bitswap
from craystack import gaussian
from craystack.compiled.special import ndtr as compiled_ndtr
from craystack.compiled.special import ndtri as compiled_ndtri

_MODULES = (bitswap, gaussian)  # the reference's modules that call scipy's ndtr/ndtri by name
_PACKAGES = ("craystack.", "bits_back_diffusion.")  # where the compiled path's callers live


@contextlib.contextmanager
def count_reference_calls() -> Iterator[Dict[str, int]]:
    """Counts, into the yielded dict, the elements the NumPy reference passes to ndtr and ndtri."""
    counts = {"ndtr": 0, "ndtri": 0}
    saved = [(m, name, getattr(m, name)) for m in _MODULES for name in counts]

    def counting(name: str, fn: Callable) -> Callable:
        def wrapper(x, *args, **kwargs):
            counts[name] += int(np.size(x))
            return fn(x, *args, **kwargs)
        return wrapper

    try:
        for module, name, fn in saved:
            setattr(module, name, counting(name, fn))
        yield counts
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


@numba.njit(cache=False)
def _sum_ndtr(z):
    total = 0.0
    for v in z:
        total += compiled_ndtr(v)
    return total


@numba.njit(cache=False)
def _sum_ndtri(u):
    total = 0.0
    for v in u:
        total += compiled_ndtri(v)
    return total


def compiled_ns_per_call(n: int = 1 << 20, repeats: int = 5) -> Dict[str, float]:
    """Best-of-`repeats` nanoseconds per compiled call of ndtr (z ~ N(0, 3)) and ndtri (u uniform)."""
    rng = np.random.default_rng(0)
    args = {"ndtr": (_sum_ndtr, rng.normal(0.0, 3.0, n)), "ndtri": (_sum_ndtri, rng.uniform(1e-12, 1.0, n))}
    out = {}
    for name, (fn, x) in args.items():
        fn(x[:16])  # compile
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - start)
        out[name] = 1e9 * best / n
    return out


@contextlib.contextmanager
def _count_compiled_calls() -> Iterator[Dict[str, int]]:
    """Counts calls of the compiled path's ndtr/ndtri while its kernels run as plain Python:
    every loaded module of the project that holds `craystack.compiled.special`'s functions gets
    a counting wrapper in their place (the modules look them up at each call in Python mode)."""
    counts = {"ndtr": 0, "ndtri": 0}
    originals = {"ndtr": compiled_ndtr, "ndtri": compiled_ndtri}
    patched = [(m, name) for m in list(sys.modules.values()) if getattr(m, "__name__", "").startswith(_PACKAGES)
               and not m.__name__.endswith(".special") for name in counts if getattr(m, name, None) is originals[name]]

    def counting(name: str) -> Callable:
        fn = originals[name]

        def wrapper(x):
            counts[name] += 1
            return fn(x)
        return wrapper

    try:
        for module, name in patched:
            setattr(module, name, counting(name))
        yield counts
    finally:
        for module, name in patched:
            setattr(module, name, originals[name])


def compiled_calls_per_latent(codec: str, model: str, respacing: str, steps: int, batch: int,
                              images: int = 2) -> Dict[str, Dict[str, float]]:
    """{direction: {"ndtr": .., "ndtri": ..}} per latent per step on the compiled path (see the
    module doc), on the first `images` images of codec_speed's batch of `batch`."""
    command = [sys.executable, str(Path(__file__).resolve()), "count-compiled", "--codec", codec, "--model", model,
               "--respacing", respacing, "--steps", str(steps), "--batch", str(batch), "--images", str(images)]
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONWARNINGS="ignore")
    run = subprocess.run(command, env=env, capture_output=True, text=True)
    if run.returncode:
        raise SystemExit(f"counting the compiled path's calls failed:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def _count_compiled_main(args: argparse.Namespace) -> None:
    import numba
    import torch

    import codec_speed  # noqa: E402 (bench/, beside this script)
    from bits_back_diffusion.codec_registry import build_codec, codec_class
    from bits_back_diffusion.coding import initial_message

    if not numba.config.DISABLE_JIT:
        raise SystemExit("count-compiled runs the kernels as Python: start it with NUMBA_DISABLE_JIT=1")
    flags, model, diffusion = codec_speed.bench_model(args.model, args.respacing, torch.device("cpu"))
    shape = (args.batch, flags.get("in_channels", 3), flags["image_size"], flags["image_size"])
    x = codec_speed.bench_batch(shape)[:args.images]
    lm = codec_speed.RecordingModel(model, diffusion, torch.device("cpu"), steps=args.steps)
    codec = build_codec(args.codec, lm, codec_class(args.codec).default_precisions, backend="numba", coder="host")
    head = (1,) + x.shape[1:] if codec.shares_lanes else x.shape
    start = initial_message(codec, head, seed=0)
    out = {}
    with torch.no_grad(), _count_compiled_calls() as counts:
        encoded = codec.encode(start, x)
        out["encode"] = {k: v / args.steps / x.size for k, v in counts.items()}
        counts.update(ndtr=0, ndtri=0)
        codec.decode(encoded, x.shape[0])
        out["decode"] = {k: v / args.steps / x.size for k, v in counts.items()}
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    count = sub.add_parser("count-compiled", help="print the compiled path's calls per latent (JSON)")
    count.add_argument("--codec", default="bitswap")
    count.add_argument("--model", default="cifar10")
    count.add_argument("--respacing", default="vlb100")
    count.add_argument("--steps", type=int, default=4)
    count.add_argument("--batch", type=int, default=16, help="codec_speed's batch (the images are its first ones)")
    count.add_argument("--images", type=int, default=2)
    sub.add_parser("ns-per-call", help="print the compiled ndtr/ndtri cost per call (JSON)")
    args = parser.parse_args()
    if args.command == "count-compiled":
        _count_compiled_main(args)
    else:
        print(json.dumps(compiled_ns_per_call()))


if __name__ == "__main__":
    main()
