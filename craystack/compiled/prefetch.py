"""`prefetch(table, i)`: ask the CPU to bring table[i] into cache without waiting for it.

Why: a lane's entries of a table that does not fit in cache (Bit-Swap's 2**20 fine bin edges)
are known a few lanes before they are read. An ordinary early read of them stalls the core
while the cache line arrives (it blocks the retirement of everything after it, however
unrelated); a prefetch instruction does not. It changes no value, so it leaves every message
as it is.

On the CPU it is LLVM's ``llvm.prefetch`` (read, keep in all cache levels). In plain Python
(the CUDA simulator runs kernels as Python) and on CUDA (`cuda_special`) it does nothing: a GPU
hides memory latency by switching warps.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic, overload

__all__ = ["prefetch"]

_READ, _KEEP_EVERYWHERE, _DATA_CACHE = 0, 3, 1  # llvm.prefetch's rw, locality and cache type


def prefetch(table, i) -> None:
    """Hint that table[i] will be read soon (no effect on any value)."""


@intrinsic
def _llvm_prefetch(typingctx, table, i):
    def codegen(context, builder, signature, args):
        table_type = signature.args[0]
        array = context.make_array(table_type)(context, builder, args[0])
        address = cgutils.get_item_pointer(context, builder, table_type, array, [args[1]], wraparound=False)
        int32 = ir.IntType(32)
        hint = ir.FunctionType(ir.VoidType(), [address.type, int32, int32, int32])
        fn = cgutils.get_or_insert_function(builder.module, hint, "llvm.prefetch.p0")
        builder.call(fn, [address, int32(_READ), int32(_KEEP_EVERYWHERE), int32(_DATA_CACHE)])
        return context.get_dummy_value()

    return types.none(table, i), codegen


@overload(prefetch, target="cpu")
def _prefetch_cpu(table, i):
    return lambda table, i: _llvm_prefetch(table, i)
