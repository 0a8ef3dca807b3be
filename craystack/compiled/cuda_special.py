"""`special.ndtr` / `special.ndtri` for the CUDA target: libdevice's normcdf / normcdfinv; and
`prefetch.prefetch`, which does nothing there (warps hide memory latency).

Imported by every CUDA module of craystack.compiled, so that the shared per-lane functions
(`cdfs`, `phases`, `bitswap_lanes`) compile for the GPU with the GPU's own versions."""
from __future__ import annotations

from numba.core.extending import overload

from .prefetch import prefetch
from .special import ndtr, ndtri

__all__ = ["ndtr", "ndtri", "prefetch"]


@overload(ndtr, target="cuda")
def _ndtr_cuda(x):
    from numba.cuda import libdevice

    return lambda x: libdevice.normcdf(x)


@overload(ndtri, target="cuda")
def _ndtri_cuda(p):
    from numba.cuda import libdevice

    return lambda p: libdevice.normcdfinv(p)


@overload(prefetch, target="cuda")
def _prefetch_cuda(table, i):
    return lambda table, i: None
