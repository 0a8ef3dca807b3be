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
def _counting(targets) -> Iterator[Dict[str, int]]:
    """Counts, into the yielded dict, the elements passed to ndtr and ndtri through the names in
    `targets` ((module, name) pairs), each replaced by a counting wrapper until the block ends."""
    counts = {"ndtr": 0, "ndtri": 0}
    saved = [(module, name, getattr(module, name)) for module, name in targets]

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


def count_reference_calls():
    """Counts the elements the NumPy reference passes to ndtr and ndtri (`_counting`)."""
    return _counting([(m, name) for m in _MODULES for name in ("ndtr", "ndtri")])


def _summing(fn: Callable) -> Callable:
    """A compiled loop that adds up fn over an array: independent calls one after another."""
    @numba.njit(cache=False)
    def total_of(values):
        total = 0.0
        for v in values:
            total += fn(v)
        return total
    return total_of


def compiled_ns_per_call(n: int = 1 << 20, repeats: int = 5) -> Dict[str, float]:
    """Best-of-`repeats` nanoseconds per compiled call of ndtr (z ~ N(0, 3)) and ndtri (u uniform)."""
    rng = np.random.default_rng(0)
    args = {"ndtr": (_summing(compiled_ndtr), rng.normal(0.0, 3.0, n)),
            "ndtri": (_summing(compiled_ndtri), rng.uniform(1e-12, 1.0, n))}
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


def _count_compiled_calls():
    """Counts calls of the compiled path's ndtr/ndtri while its kernels run as plain Python
    (`_counting`): every loaded module of the project that holds `craystack.compiled.special`'s
    functions is patched (the modules look them up at each call in Python mode)."""
    originals = {"ndtr": compiled_ndtr, "ndtri": compiled_ndtri}
    return _counting([(m, name) for m in list(sys.modules.values())
                      if getattr(m, "__name__", "").startswith(_PACKAGES) and not m.__name__.endswith(".special")
                      for name in originals if getattr(m, name, None) is originals[name]])


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


def count_calls(codec_name: str, backend: str, counting: Callable, model: str, respacing: str, steps: int,
                batch: int, images: int) -> Dict[str, Dict[str, float]]:
    """{direction: {"ndtr": .., "ndtri": ..}} per latent per step of `backend` coding the first
    `images` images of codec_speed's batch of `batch` (random weights, the first `steps` steps),
    counted with `counting` (`count_reference_calls` or, as Python, `_count_compiled_calls`)."""
    import torch

    import codec_speed  # noqa: E402 (bench/, beside this script)
    from bits_back_diffusion.codec_registry import build_codec, codec_class
    from bits_back_diffusion.coding import initial_message

    flags, net, diffusion = codec_speed.bench_model(model, respacing, torch.device("cpu"))
    shape = (batch, flags.get("in_channels", 3), flags["image_size"], flags["image_size"])
    x = codec_speed.bench_batch(shape)[:images]
    lm = codec_speed.RecordingModel(net, diffusion, torch.device("cpu"), steps=steps)
    codec = build_codec(codec_name, lm, codec_class(codec_name).default_precisions, backend=backend, coder="host")
    head = (1,) + x.shape[1:] if codec.shares_lanes else x.shape
    out = {}
    with torch.no_grad(), counting() as counts:
        encoded = codec.encode(initial_message(codec, head, seed=0), x)
        out["encode"] = {k: v / steps / x.size for k, v in counts.items()}
        counts.update(ndtr=0, ndtri=0)
        codec.decode(encoded, x.shape[0])
        out["decode"] = {k: v / steps / x.size for k, v in counts.items()}
    return out


def _count_compiled_main(args: argparse.Namespace) -> None:
    if not numba.config.DISABLE_JIT:
        raise SystemExit("count-compiled runs the kernels as Python: start it with NUMBA_DISABLE_JIT=1")
    print(json.dumps(count_calls(args.codec, "numba", _count_compiled_calls, args.model, args.respacing, args.steps,
                                 args.batch, args.images)))


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
