"""The standard normal CDF ``ndtr`` and its inverse ``ndtri`` for compiled code, per target.

On the CPU they are scipy's own functions. Why not a reimplementation: encoder and decoder must
compute every CDF value bit for bit alike, and the compiled path must agree with the NumPy
reference, which calls the ``scipy.special`` ufuncs. Both ufuncs and
``scipy.special.cython_special`` wrap the same C functions, so calling the latter's exported C
entry points gives the very same doubles. The addresses are registered with LLVM under fixed
symbol names and called as external functions, which keeps numba's on-disk cache valid across
processes (a ctypes pointer would be baked into the cached code).

On CUDA (`cuda_special` registers it) they are CUDA's libdevice ``normcdf``/``normcdfinv``:
deterministic on a given GPU, but not the same doubles as scipy's, which is why a file records
which coder wrote it. Called from plain Python (the CUDA simulator runs kernels as Python) they
are the scipy ufuncs, so simulated kernels compute exactly what the CPU kernels compute.
"""
from __future__ import annotations

import llvmlite.binding as _llvm
import scipy.special
from numba import types
from numba.core.extending import overload
from numba.extending import get_cython_function_address

__all__ = ["ndtr", "ndtri"]

_MODULE = "scipy.special.cython_special"
_SIGNATURE = types.float64(types.float64)


def _register(symbol: str, cython_name: str) -> types.ExternalFunction:
    _llvm.add_symbol(symbol, get_cython_function_address(_MODULE, cython_name))
    return types.ExternalFunction(symbol, _SIGNATURE)


_scipy_ndtr = _register("bbd_scipy_ndtr", "__pyx_fuse_1ndtr")  # the float64 specialization
_scipy_ndtri = _register("bbd_scipy_ndtri", "ndtri")


def ndtr(x: float) -> float:
    """P(N(0, 1) <= x)."""
    return float(scipy.special.ndtr(x))


def ndtri(p: float) -> float:
    """The x with ndtr(x) = p."""
    return float(scipy.special.ndtri(p))


@overload(ndtr, target="cpu")
def _ndtr_cpu(x):
    return lambda x: _scipy_ndtr(x)


@overload(ndtri, target="cpu")
def _ndtri_cpu(p):
    return lambda p: _scipy_ndtri(p)
