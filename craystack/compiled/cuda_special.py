"""`special.ndtr` / `special.ndtri` for the CUDA target: libdevice's normcdf / normcdfinv.

Imported by every CUDA module of craystack.compiled, so that the shared per-lane functions
(`cdfs`, `phases`) compile for the GPU with the GPU's own special functions."""
from __future__ import annotations

from numba.core.extending import overload

from .special import ndtr, ndtri

__all__ = ["ndtr", "ndtri"]


@overload(ndtr, target="cuda")
def _ndtr_cuda(x):
    from numba.cuda import libdevice

    return lambda x: libdevice.normcdf(x)


@overload(ndtri, target="cuda")
def _ndtri_cuda(p):
    from numba.cuda import libdevice

    return lambda p: libdevice.normcdfinv(p)
