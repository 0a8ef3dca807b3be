"""The one-level phases of `phases` (craystack's quantized codec and Uniform over lane groups) as
CUDA kernels: one launch per phase (one thread block unless BBD_CUDA_BLOCKS asks for more), the
same per-lane functions (`phases.*_lane`), the scans of `cuda_message` in place of the sequential
ones.

Each launcher takes the arguments of its CPU twin in `phases` (device arrays for the arrays) and
returns what it returns, so a driver can hold either set. Results, words and their order equal
the CPU kernels' on the same CDF values; on a GPU the special functions are CUDA's own
(`special`), so a file coded here decodes with these kernels only (the `.bbd` header says which
coder wrote it).
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import cuda_special  # noqa: F401  (the GPU special functions)
from .cuda_message import (BLOCKS, COMPILE_KEY, GRID, THREADS, block_first_error, block_pop_flagged, block_push_flagged,
                           sync_all)
from .kernels import cuda_kernel
from .phases import quantized_constants, quantized_pop_lane, quantized_push_lane, uniform_pop_lane, uniform_push_lane

__all__ = ["quantized_push_groups", "quantized_pop_groups", "uniform_push_groups", "uniform_pop_groups",
           "launch", "report_error", "group_failed", "refill_failed"]


@cuda.jit(device=True)
def report_error(stat, first, off, result):
    """The launch's first thread records (status, parameter index) of the failed lane `first` of
    the group at `off`."""
    if cuda.grid(1) == 0:
        result[0] = stat[first]
        result[1] = off + first


@cuda.jit(device=True)
def group_failed(stat, count, off, shared, sums, result):
    """Whether a lane of the group at `off` failed (`phases.first_status`); the first one is
    reported. The same answer in every thread, so the kernel returns as a whole."""
    first = block_first_error(stat, count, 0, shared, sums)
    if first < count:
        report_error(stat, first, off, result)
        return True
    return False


@cuda.jit(device=True)
def refill_failed(head, flags, count, buf, meta, shared, sums, result):
    """`block_pop_flagged`, recording its failure as status -1 (the CPU kernels' return value)."""
    if block_pop_flagged(head, flags, count, buf, meta, shared, sums):
        if cuda.grid(1) == 0:
            result[0] = -1
        return True
    return False


def _quiet_about_occupancy() -> None:
    """One block per launch is the design (cuda_message), not a mistake to warn about each time."""
    import numba

    configs = [numba.config]
    try:
        from numba.cuda.core import config as cuda_config  # numba-cuda's own copy of the settings
        configs.append(cuda_config)
    except ImportError:
        pass
    for config in configs:
        config.CUDA_LOW_OCCUPANCY_WARNINGS = 0


_quiet_about_occupancy()
_NO_ERROR = np.array([0, -1], dtype=np.int64)
_BUFFERS = {}  # device buffers every launch reuses: (status, index), and the blocks' partial sums


def launch_blocks() -> int:
    """Thread blocks per launch (cuda_message.BLOCKS), at most one per multiprocessor, so that a
    cooperative launch always has every block resident."""
    if "blocks" not in _BUFFERS:
        multiprocessors = int(getattr(cuda.get_current_device(), "MULTIPROCESSOR_COUNT", 1)) if GRID else 1
        _BUFFERS["blocks"] = max(1, min(multiprocessors, multiprocessors if BLOCKS == "sm" else int(BLOCKS)))
    return _BUFFERS["blocks"]


def launch(kernel, *args):
    """Run `kernel` on `launch_blocks()` blocks of THREADS threads; its (status, index) as two ints."""
    blocks = launch_blocks()
    if "result" not in _BUFFERS:
        _BUFFERS["result"] = cuda.to_device(_NO_ERROR)
        _BUFFERS["sums"] = cuda.to_device(np.zeros(blocks, dtype=np.int64))
    else:
        _BUFFERS["result"].copy_to_device(_NO_ERROR)
    kernel[blocks, THREADS](*args, _BUFFERS["sums"], _BUFFERS["result"])
    status, where = _BUFFERS["result"].copy_to_host()
    return int(status), int(where)


@cuda_kernel(salt=COMPILE_KEY)
def _quantized_push(head, buf, meta, offsets, lanes, kind, edges, mu, sd, a, b, n, prec, symbols, words, flags,
                    stat, sums, result):
    shared = cuda.shared.array(THREADS, np.int64)
    total = np.uint64(1) << np.uint64(prec)
    k, denom, _, _ = quantized_constants(n, prec)
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
            quantized_push_lane(lane, off + lane, head, kind, edges, mu, sd, a, b, n, prec, k, total, denom, symbols,
                                words, flags, stat)
        sync_all()
        if group_failed(stat, count, off, shared, sums, result):
            return
        block_push_flagged(words, flags, count, buf, meta, shared, sums)


@cuda_kernel(salt=COMPILE_KEY)
def _quantized_pop(head, buf, meta, offsets, lanes, kind, edges, mu, sd, a, b, n, prec, rounds, out, flags, stat, sums,
                   result):
    shared = cuda.shared.array(THREADS, np.int64)
    total = np.uint64(1) << np.uint64(prec)
    k, denom, ratio, inv_k = quantized_constants(n, prec)
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
            quantized_pop_lane(lane, off + lane, head, kind, edges, mu, sd, a, b, n, prec, k, total, denom, ratio,
                               inv_k, rounds, out, flags, stat)
        sync_all()
        if group_failed(stat, count, off, shared, sums, result):
            return
        if refill_failed(head, flags, count, buf, meta, shared, sums, result):
            return


@cuda_kernel(salt=COMPILE_KEY)
def _uniform_push(head, buf, meta, offsets, lanes, prec, symbols, words, flags, sums, result):
    shared = cuda.shared.array(THREADS, np.int64)
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
            uniform_push_lane(lane, off + lane, head, prec, symbols, words, flags)
        sync_all()
        block_push_flagged(words, flags, count, buf, meta, shared, sums)


@cuda_kernel(salt=COMPILE_KEY)
def _uniform_pop(head, buf, meta, offsets, lanes, prec, out, flags, sums, result):
    shared = cuda.shared.array(THREADS, np.int64)
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
            uniform_pop_lane(lane, off + lane, head, prec, out, flags)
        sync_all()
        if refill_failed(head, flags, count, buf, meta, shared, sums, result):
            return


def quantized_push_groups(*args):
    """`phases.quantized_push_groups` on the device: (status, parameter index)."""
    return launch(_quantized_push, *args)


def quantized_pop_groups(*args):
    """`phases.quantized_pop_groups` on the device: (status, parameter index)."""
    return launch(_quantized_pop, *args)


def uniform_push_groups(*args) -> None:
    """`phases.uniform_push_groups` on the device."""
    launch(_uniform_push, *args)


def uniform_pop_groups(*args) -> int:
    """`phases.uniform_pop_groups` on the device: an error code (0: none)."""
    return launch(_uniform_pop, *args)[0]
