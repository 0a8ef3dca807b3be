"""How the compiled functions are built: cached on disk per version of their sources, and lane
kernels in two builds (threaded over lanes with numba prange, and single-threaded).

Why a cache folder per source version: numba checks only the timestamp of the decorated
function's own file before loading cached machine code, so after an update that changes a
helper in another file (say `cdfs.py`) a kernel in `phases.py` would run the old helper. Here
the folder's name is a digest of every file of craystack.compiled and of every file in the
function's own folder (whose kernels inline helpers from sibling modules), so changed sources
never meet old code.

Why two builds: starting threads for a prange costs a few microseconds on an idle machine and
more on a busy one, which dwarfs the work of a small group of lanes (tests, small images), so
groups under PARALLEL_MIN_LANES run the single-threaded build. A group of thousands of lanes (a
CIFAR image has 3072) runs the threaded build even with one numba thread: numba compiles a prange
body into a function of its own, and the per-lane functions inlined there ran faster than in the
plain loop of the single-threaded build (Bit-Swap encode, CIFAR batch 16, one thread: 15.3 against
28.0 ms per step, `bench/codec_speed.py`). Both builds run the same source, so they give the same
results (lanes are independent and the word scans sequential).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import os
import tempfile
import types
from pathlib import Path
from typing import Sequence

import numba
import numpy as np
from numba import njit

__all__ = ["PARALLEL_MIN_LANES", "compiled", "lane_kernel", "cuda_kernel"]

PARALLEL_MIN_LANES = 2048  #: groups with fewer lanes than this run on one thread

# Threading layer. A prange region costs about 110 us to start on numba's workqueue layer, whatever
# the thread count (measured on the 2-core machine), and a Bit-Swap step starts about 3 per lane
# group (48 at batch 16): that overhead ate the whole second thread. libgomp starts one in a few
# microseconds while its workers still spin from the previous region, but by default they spin for
# ~300,000 rounds after each, which on a 2-core machine stalled the model's next calls 4-25x (torch
# runs its own libgomp copy beside numba's). So: OpenMP first, with a bounded spin (GOMP_SPINCOUNT,
# read when numba loads its libgomp, i.e. at the first threaded pass): long enough to bridge the
# word scan between two passes, short enough (well under a millisecond) to leave the cores to
# torch soon after the codec is done. A layer or spin count chosen by the user is kept.
CODEC_SPIN_COUNT = "20000"
if not os.environ.get("NUMBA_THREADING_LAYER"):
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    os.environ.setdefault("GOMP_SPINCOUNT", CODEC_SPIN_COUNT)
_HERE = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def _cache_dir(source: str, salt: str = "") -> str:
    digest = hashlib.sha256(salt.encode())
    for path in sorted(_HERE.glob("*.py")) + sorted(Path(source).parent.glob("*.py")):
        digest.update(path.read_bytes())
    name = f"numba-{digest.hexdigest()[:16]}"
    folder = Path(source).parent / "__pycache__" / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only install: a per-user temporary folder instead
        folder = Path(tempfile.gettempdir()) / f"bits-back-diffusion-{name}"
        folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


@contextlib.contextmanager
def _caching_in(fn, salt: str = "", config=numba.config):
    previous = config.CACHE_DIR
    config.CACHE_DIR = _cache_dir(str(Path(inspect.getsourcefile(fn)).resolve()), salt)
    try:
        yield
    finally:
        config.CACHE_DIR = previous


def compiled(fn=None, **options):
    """`numba.njit(cache=True, **options)` with the cache folder of the sources' version."""
    def build(f):
        with _caching_in(f):
            return njit(cache=True, **options)(f)

    return build if fn is None else build(fn)


def cuda_kernel(fn=None, *, salt: str = ""):
    """`numba.cuda.jit(cache=True)` with the cache folder of the sources' version, and of `salt`
    (settings the kernel reads as compile-time constants, such as its threads per block: numba's
    cache does not see them)."""
    from numba import cuda

    try:  # numba-cuda reads its own copy of numba's settings
        from numba.cuda.core import config
    except ImportError:  # numba's built-in CUDA target (and its simulator)
        config = numba.config

    def build(f):
        with _caching_in(f, salt, config):
            return cuda.jit(cache=True)(f)

    return build if fn is None else build(fn)


class LaneKernel:
    """A kernel whose 5th argument is the array of lanes per group; picks the build by the size of
    the largest group (see the module doc).

    `reads` names the array arguments the kernel only reads; they are always passed as read-only
    views. numba compiles one machine-code version per argument type, and whether an array is
    writable is part of its type: callers hand over shared read-only tables (bin edges) and fresh
    writable arrays in every mix, which compiled up to four versions of a kernel (some seconds each,
    on every first run after the sources change). A read-only view costs about a microsecond."""

    def __init__(self, fn, reads: Sequence[str] = ()):
        self.parallel = compiled(fn, parallel=True)
        serial = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                                    fn.__closure__)
        serial.__qualname__ = fn.__qualname__ + "_serial"
        serial.__module__ = fn.__module__
        serial.__doc__ = fn.__doc__
        self.serial = compiled(serial)
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        names = list(inspect.signature(fn).parameters)
        unknown = sorted(set(reads) - set(names))
        if unknown:
            raise TypeError(f"{fn.__name__} has no parameters {unknown}")
        self._reads = tuple(names.index(name) for name in reads)

    def __call__(self, *args):
        if self._reads:
            args = list(args)
            for i in self._reads:
                args[i] = _read_only(args[i])
        lanes = args[4]
        threaded = lanes.size and int(lanes.max()) >= PARALLEL_MIN_LANES
        return (self.parallel if threaded else self.serial)(*args)


def _read_only(a):
    """`a` as a read-only array (a view where it is writable); anything else as it is."""
    if isinstance(a, np.ndarray) and a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def lane_kernel(fn=None, *, reads: Sequence[str] = ()):
    """Decorator: compile `fn` (which loops over lanes with prange) in both builds; `reads`: its
    read-only array arguments (see LaneKernel)."""
    if fn is None:
        return lambda f: LaneKernel(f, reads)
    return LaneKernel(fn, reads)
