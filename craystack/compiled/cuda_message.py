"""A message whose head and tail top live on a CUDA device, and the launch-wide scans that move
renormalisation words between its lanes and its tail.

Why scans instead of per-lane word stacks: the file format is the shared tail of craystack.rans,
words in lane order, which the CPU path and every earlier file use. A pass over a lane group
leaves one flag per lane (overflowed, or needs a word); the order of the moved words is then an
exclusive prefix sum of those flags, which a block computes in log2(threads) steps of shared
memory, after which every thread moves its own lanes' words with no further ordering. The
group-to-group dependency (each group codes on the same head lanes) is the kernel's loop, with a
barrier between passes, so a whole phase is one kernel launch whatever the number of groups. The
rare give-back of borrowed generator words (a push onto an empty tail whose words equal the most
recently borrowed ones) is one thread's sequential check, exactly as on the CPU
(`message.push_flagged`).

Launch shape: `THREADS` per block (BBD_CUDA_THREADS, a power of two; 256 by default, which any
CUDA GPU can launch whatever the kernels' register use) and `BLOCKS` blocks (BBD_CUDA_BLOCKS; 1 by
default). One block keeps every barrier a __syncthreads; more blocks spread a group's lanes over
more multiprocessors, at the price of a grid-wide barrier (cooperative launch) around each scan,
and their block totals meet in a small global array (`sums`). Which is faster depends on the GPU
and the lanes per group: `bench/codec_speed.py` on a GPU tells. Each thread takes a contiguous
run of lanes in the scans (lane order) and lanes cuda.grid(1), + gridsize, ... in the passes
(coalesced reads). The simulator tests run one block (it supports no more in a cooperative grid).
"""
from __future__ import annotations

import os

import numpy as np
from numba import cuda

from .. import rans
from .message import (BASE, BORROWED, ERROR, ERROR_PREFETCH, NEW_WARNING, TOP, CompiledMessage, settle_pop,
                      settle_push, tail_word)

__all__ = ["THREADS", "BLOCKS", "GRID", "COMPILE_KEY", "DeviceMessage", "block_push_flagged", "block_pop_flagged",
           "block_first_error", "sync_all", "to_device_array"]


def _threads() -> int:
    value = os.environ.get("BBD_CUDA_THREADS", "256")
    if not value.isdigit() or int(value) < 1 or int(value) > 1024 or int(value) & (int(value) - 1):
        raise ValueError(f"BBD_CUDA_THREADS={value!r}: use a power of two from 1 to 1024 (default 256)")
    return int(value)


THREADS = _threads()
_U32 = np.uint64(32)


def blocks_setting() -> str:
    """BBD_CUDA_BLOCKS: thread blocks per phase, an integer or "sm" (one per multiprocessor)."""
    value = os.environ.get("BBD_CUDA_BLOCKS", "1")
    if value != "sm" and not (value.isdigit() and int(value) >= 1):
        raise ValueError(f"BBD_CUDA_BLOCKS={value!r}: use a positive integer or sm (default 1)")
    return value


BLOCKS = blocks_setting()
GRID = BLOCKS != "1"  # several blocks: the kernels use grid-wide barriers (and a cooperative launch)
COMPILE_KEY = f"threads={THREADS}" + (",grid" if GRID else "")  # what the compiled kernels depend on

if GRID:
    @cuda.jit(device=True)
    def _grid_sync():
        cuda.cg.this_grid().sync()
else:  # one block: no cooperative groups in the kernels at all (nor cudadevrt to link)
    @cuda.jit(device=True)
    def _grid_sync():
        cuda.syncthreads()


@cuda.jit(device=True)
def sync_all():
    """A barrier over the launch: the block's own when it is alone (the default), else the grid's
    (a cooperative launch, every block resident)."""
    if cuda.gridDim.x == 1:
        cuda.syncthreads()
    else:
        _grid_sync()


@cuda.jit(device=True)
def _block_scan(value, shared):
    """(sum of `value` over the block's threads before this one, sum over the block)."""
    tid = cuda.threadIdx.x
    shared[tid] = value
    cuda.syncthreads()
    step = 1
    while step < THREADS:
        add = shared[tid - step] if tid >= step else 0
        cuda.syncthreads()
        shared[tid] += add
        cuda.syncthreads()
        step *= 2
    total = shared[THREADS - 1]
    before = shared[tid] - value
    cuda.syncthreads()  # the next scan reuses `shared`
    return before, total


@cuda.jit(device=True)
def _exclusive_scan(value, shared, sums):
    """(sum of `value` over the launch's threads before this one, sum over the launch); threads in
    the order of cuda.grid(1). With several blocks, `sums` carries each block's total."""
    before, total = _block_scan(value, shared)
    blocks = cuda.gridDim.x
    if blocks == 1:
        return before, total
    block = cuda.blockIdx.x
    if cuda.threadIdx.x == 0:
        sums[block] = total
    _grid_sync()
    offset = 0
    total = 0
    for b in range(blocks):
        if b < block:
            offset += sums[b]
        total += sums[b]
    _grid_sync()  # every block has read `sums` before the next scan writes it
    return offset + before, total


@cuda.jit(device=True)
def _flagged_run(flags, count):
    """This thread's contiguous run of lanes [lo, hi) for the ordered scans, and how many of its
    lanes are flagged."""
    threads = cuda.gridsize(1)
    chunk = (count + threads - 1) // threads
    lo = min(cuda.grid(1) * chunk, count)
    hi = min(lo + chunk, count)
    flagged = 0
    for lane in range(lo, hi):
        if flags[lane]:
            flagged += 1
    return lo, hi, flagged


@cuda.jit(device=True)
def block_push_flagged(words, flags, count, buf, meta, shared, sums):
    """`message.push_flagged` by the whole launch: the flagged lanes' words onto the tail in lane
    order (every thread calls it)."""
    lo, hi, mine = _flagged_run(flags, count)
    before, total = _exclusive_scan(mine, shared, sums)
    top = meta[TOP]
    at = top + before
    for lane in range(lo, hi):
        if flags[lane]:
            buf[at] = np.uint32(words[lane] & np.uint64(0xFFFFFFFF))
            at += 1
    sync_all()
    if cuda.grid(1) == 0 and total > 0:
        settle_push(buf, meta, top, total)
    sync_all()


@cuda.jit(device=True)
def block_pop_flagged(head, flags, count, buf, meta, shared, sums):
    """`message.pop_flagged` by the whole launch: each flagged lane, in lane order, gets the next
    popped word; returns the same error code (0: none) in every thread."""
    lo, hi, mine = _flagged_run(flags, count)
    before, n = _exclusive_scan(mine, shared, sums)
    if n == 0:
        return 0
    top = meta[TOP]
    base = meta[BASE]
    borrowed = meta[BORROWED]
    if n > top and base > 0:
        sync_all()
        if cuda.grid(1) == 0:
            meta[ERROR] = ERROR_PREFETCH
        sync_all()
        return ERROR_PREFETCH
    i = before
    for lane in range(lo, hi):
        if flags[lane]:
            head[lane] = (head[lane] << _U32) | tail_word(buf, top - n + i, borrowed)
            i += 1
    sync_all()
    if cuda.grid(1) == 0:
        settle_pop(meta, top, n, base, borrowed)
    sync_all()
    return 0


@cuda.jit(device=True)
def block_first_error(stat, count, above, shared, sums):
    """The first lane < count whose stat exceeds `above` (count if none), the same in every
    thread: `phases.first_status` without a sequential scan."""
    mine = count
    for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
        if stat[lane] > above:
            mine = lane
            break
    if cuda.gridDim.x == 1 and not cuda.syncthreads_or(1 if mine < count else 0):
        return count  # the common case, one barrier
    tid = cuda.threadIdx.x
    shared[tid] = mine
    cuda.syncthreads()
    step = THREADS // 2
    while step > 0:
        if tid < step and shared[tid + step] < shared[tid]:
            shared[tid] = shared[tid + step]
        cuda.syncthreads()
        step //= 2
    first = shared[0]
    cuda.syncthreads()
    blocks = cuda.gridDim.x
    if blocks == 1:
        return first
    if tid == 0:
        sums[cuda.blockIdx.x] = first
    _grid_sync()
    for b in range(blocks):
        first = min(first, sums[b])
    _grid_sync()
    return first


def to_device_array(a):
    """A CUDA view of a torch tensor or a device array (no copy), or a host array copied over."""
    if hasattr(a, "__cuda_array_interface__"):
        return cuda.as_cuda_array(a)
    if hasattr(a, "detach"):  # a torch tensor on the host (the simulator's tests)
        a = a.detach().numpy()
    return cuda.to_device(np.ascontiguousarray(a))


class DeviceMessage(CompiledMessage):
    """A `CompiledMessage` whose head, tail top and counters live on the device (``d_head``,
    ``d_buf``, ``d_meta``); the host keeps the untouched bottom of the tail and a copy of the
    counters, fetched when a phase is planned (`reserve`) and checked (`check`)."""

    def __init__(self, message: rans.Message):
        super().__init__(message)
        self.d_head = cuda.to_device(self.head)
        self.d_buf = cuda.to_device(self.buf)
        self.d_meta = cuda.to_device(self.meta)

    def _fetch_meta(self) -> None:
        self.d_meta.copy_to_host(self.meta)

    def reserve(self, pops: int, pushes: int) -> None:
        self._fetch_meta()
        top, base = int(self.meta[TOP]), int(self.meta[BASE])
        if not (pops > top and base > 0) and top + pushes <= self.d_buf.size:
            return
        pulled = self.pull_below(pops)
        grown = top + sum(p.size for p in pulled)
        buf = cuda.device_array(max(2 * (grown + pushes), 1024), dtype=np.uint32)
        if pulled:
            buf[:grown - top].copy_to_device(np.concatenate(pulled))
        if top:
            buf[grown - top:grown].copy_to_device(self.d_buf[:top])
        self.d_buf = buf
        self.meta[TOP] = grown
        self.d_meta.copy_to_device(self.meta)

    def check(self, who: str) -> None:
        self._fetch_meta()
        warned = bool(self.meta[NEW_WARNING])
        super().check(who)
        if warned:  # the host copy cleared the flag; so must the device
            self.d_meta.copy_to_device(self.meta)

    def bits(self) -> float:
        self._fetch_meta()
        self.d_head.copy_to_host(self.head)
        return super().bits()

    def to_message(self) -> rans.Message:
        self._fetch_meta()
        top = int(self.meta[TOP])
        words = self.d_buf[:top].copy_to_host() if top else np.empty(0, dtype=np.uint32)
        return self.message_of(self.d_head.copy_to_host(), words)
