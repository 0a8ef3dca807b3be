"""scipy's own ``ndtr`` and ``ndtri`` as functions that numba-compiled code can call.

Why not a reimplementation: encoder and decoder must compute every CDF value bit for bit alike,
and the compiled path must agree with the NumPy reference, which calls the ``scipy.special``
ufuncs. Both ufuncs and ``scipy.special.cython_special`` wrap the same C functions, so calling
the latter's exported C entry points gives the very same doubles. The addresses are registered
with LLVM under fixed symbol names and called as external functions, which keeps numba's
on-disk cache valid across processes (a ctypes pointer would be baked into the cached code).
"""
from __future__ import annotations

import llvmlite.binding as _llvm
from numba import types
from numba.extending import get_cython_function_address

__all__ = ["ndtr", "ndtri"]

_MODULE = "scipy.special.cython_special"
_SIGNATURE = types.float64(types.float64)


def _register(symbol: str, cython_name: str) -> types.ExternalFunction:
    _llvm.add_symbol(symbol, get_cython_function_address(_MODULE, cython_name))
    return types.ExternalFunction(symbol, _SIGNATURE)


ndtr = _register("bbd_scipy_ndtr", "__pyx_fuse_1ndtr")  # the float64 specialization
ndtri = _register("bbd_scipy_ndtri", "ndtri")
