"""What the normal CDF and its inverse cost the codec: the floor under an exact compiled path.

Both codec paths must call scipy's `ndtr`/`ndtri` (the NumPy reference's functions) to write the
reference's bits, so no exact compiled path can code a step faster than its calls to them take.
`bench/codec_speed.py` prints these figures beside its timings, measured in the same run:

* `count_reference_calls`: ndtr and ndtri evaluations (array elements) the NumPy reference makes
  while it codes, by wrapping the names its modules imported. This is the reference's count; the
  compiled path reuses some values (a coarse bin's edges for its sub-bins, and it evaluates one
  branch where NumPy's `np.where` evaluates both), so it makes fewer (`bitswap_lanes` shows which).
* `compiled_ns_per_call`: nanoseconds per call of the compiled `ndtr`/`ndtri` (scipy's C functions
  called from a numba loop on one thread, as the kernels call them), on arguments spread like
  the codec's standardized bin edges and quantiles.
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Dict, Iterator

import numba
import numpy as np

from bits_back_diffusion import bitswap
from craystack import gaussian
from craystack.compiled.special import ndtr as compiled_ndtr
from craystack.compiled.special import ndtri as compiled_ndtri

_MODULES = (bitswap, gaussian)  # the reference's modules that call scipy's ndtr/ndtri by name


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
