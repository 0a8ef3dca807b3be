"""Whole phases of one-level codecs over groups of lanes, each one compiled call.

A phase codes one symbol per lane for several lane groups, one group after another, exactly
as the NumPy reference codes group by group with `craystack.substack` on the first lanes of
the head: the per-lane work (CDF values, the symbol search) runs in parallel over the group's
lanes (numba prange), then one sequential scan moves the renormalisation words in lane order.
Results therefore do not depend on the number of threads.

Groups: ``offsets[g]`` is the index of the group's first symbol/parameter in the flat
parameter arrays, ``lanes[g]`` its number of lanes (always the head's first lanes). Every
phase returns ``(status, lane)``: 0 when it went through, otherwise a `cdfs.STATUS_*` code
and the parameter index of the first lane that failed (the message state is then to be
dropped, as the reference raises before returning a message).
"""
from __future__ import annotations

import numpy as np
from numba import prange

from .cdfs import quantized_guess, quantized_interval, quantized_pop
from .kernels import compiled, lane_kernel
from .message import (HEAD_MIN, pop_flagged, pop_state, push_flagged, push_interval, push_renorm,
                      push_state)

__all__ = ["quantized_push_groups", "quantized_pop_groups", "uniform_push_groups", "uniform_pop_groups",
           "first_status", "quantized_constants", "quantized_push_lane", "quantized_pop_lane", "uniform_push_lane",
           "uniform_pop_lane"]

EPS = 2.0 ** -44  # craystack.gaussian._EPS


@compiled
def first_status(stat, lanes, offset):
    """(status, parameter index) of the first lane < lanes with a nonzero status, else (0, -1)."""
    for lane in range(lanes):
        if stat[lane]:
            return stat[lane], offset + lane
    return 0, -1


# --- one lane's work, shared by these threaded kernels and the CUDA ones (cuda_phases) -------------

@compiled(inline="always")
def quantized_constants(n, prec):
    """A phase's float constants of craystack's quantized codec with n symbols out of 2**prec, as
    its NumPy code computes them: (2**prec - n, the mixed CDF's denominator, n / 2**prec,
    1 / (2**prec - n)). Only floats: the CUDA simulator calls this from Python, where a returned
    uint64 would come back as a Python int."""
    k = float((1 << prec) - n)
    return k, 1.0 + n * EPS, n / float(np.uint64(1) << np.uint64(prec)), 1.0 / k


@compiled(inline="always")
def quantized_push_lane(lane, p, head, kind, edges, mu, sd, a, b, n, prec, k, total, denom, symbols, words, flags,
                        stat):
    """Lane `lane` pushes symbols[p] with craystack's quantized codec of `kind`: its new state, and
    the word to move to the tail if it overflowed (flags), or a nonzero status (stat)."""
    start, end, st = quantized_interval(kind, symbols[p], edges, mu[p], sd[p], a[p], b[p], n, EPS, denom, 0, False,
                                        0.0, 1.0, False, k, total)
    stat[lane] = st
    if st == 0:
        head[lane], over, word = push_interval(head[lane], start, end - start, prec)
        flags[lane] = over
        words[lane] = word


@compiled(inline="always")
def quantized_pop_lane(lane, p, head, kind, edges, mu, sd, a, b, n, prec, k, total, denom, ratio, inv_k, rounds, out,
                       flags, stat):
    """Lane `lane` pops its symbol into out[p] (craystack's decoder with its guess); flags: the lane
    needs a word from the tail."""
    x = head[lane]
    cf = x & (total - np.uint64(1))
    g0 = quantized_guess(kind, cf, mu[p], sd[p], a[p], b[p], n, 0.0, 0, False, 0.0, 1.0, False, ratio, inv_k, rounds)
    s, start, end, st = quantized_pop(kind, cf, g0, edges, mu[p], sd[p], a[p], b[p], n, EPS, denom, 0, False, 0.0,
                                      1.0, False, k, total, 0.0, inv_k)
    stat[lane] = st
    x = pop_state(x, cf, start, end - start, prec)
    head[lane] = x
    flags[lane] = x < HEAD_MIN
    out[p] = s


@compiled(inline="always")
def uniform_push_lane(lane, p, head, prec, symbols, words, flags):
    """craystack.Uniform(prec) push of symbols[p] on lane `lane` (in range: checked by the caller)."""
    one = np.uint64(1)
    x, over, word = push_renorm(head[lane], one, prec)
    head[lane] = push_state(x, x, np.uint64(symbols[p]), one, prec, np.uint64(0))
    flags[lane] = over
    words[lane] = word


@compiled(inline="always")
def uniform_pop_lane(lane, p, head, prec, out, flags):
    """craystack.Uniform(prec) pop into out[p]."""
    x = head[lane]
    out[p] = np.int64(x & ((np.uint64(1) << np.uint64(prec)) - np.uint64(1)))
    x = x >> np.uint64(prec)
    head[lane] = x
    flags[lane] = x < HEAD_MIN


# --- threaded kernels -----------------------------------------------------------------------------

@lane_kernel(reads=("offsets", "lanes", "edges", "mu", "sd", "a", "b", "symbols"))
def quantized_push_groups(head, buf, meta, offsets, lanes, kind, edges, mu, sd, a, b, n, prec, symbols,
                          words, flags, stat):
    """Push symbols[offsets[g] + l] on lane l of each group g with craystack's quantized codec
    of `kind` (cdfs.KIND_*; per-lane parameters mu, sd, a, b)."""
    total = np.uint64(1) << np.uint64(prec)
    k, denom, _, _ = quantized_constants(n, prec)
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in prange(count):
            quantized_push_lane(lane, off + lane, head, kind, edges, mu, sd, a, b, n, prec, k, total, denom, symbols,
                                words, flags, stat)
        status, where = first_status(stat, count, off)
        if status:
            return status, where
        push_flagged(words, flags, count, buf, meta)
    return 0, -1


@lane_kernel(reads=("offsets", "lanes", "edges", "mu", "sd", "a", "b"))
def quantized_pop_groups(head, buf, meta, offsets, lanes, kind, edges, mu, sd, a, b, n, prec, rounds, out,
                         flags, stat):
    """Pop one symbol per lane of each group into out[offsets[g] + l] (craystack's decoder with
    its guess, `rounds` guess rounds)."""
    total = np.uint64(1) << np.uint64(prec)
    k, denom, ratio, inv_k = quantized_constants(n, prec)
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in prange(count):
            quantized_pop_lane(lane, off + lane, head, kind, edges, mu, sd, a, b, n, prec, k, total, denom, ratio,
                               inv_k, rounds, out, flags, stat)
        status, where = first_status(stat, count, off)
        if status:
            return status, where
        if pop_flagged(head, flags, count, buf, meta):
            return -1, -1
    return 0, -1


@lane_kernel(reads=("offsets", "lanes", "symbols"))
def uniform_push_groups(head, buf, meta, offsets, lanes, prec, symbols, words, flags):
    """craystack.Uniform(prec) pushes of symbols[offsets[g] + l] (in range: checked by the caller)."""
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in prange(count):
            uniform_push_lane(lane, off + lane, head, prec, symbols, words, flags)
        push_flagged(words, flags, count, buf, meta)


@lane_kernel(reads=("offsets", "lanes"))
def uniform_pop_groups(head, buf, meta, offsets, lanes, prec, out, flags):
    """craystack.Uniform(prec) pops into out[offsets[g] + l]; returns an error code (0: none)."""
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in prange(count):
            uniform_pop_lane(lane, off + lane, head, prec, out, flags)
        if pop_flagged(head, flags, count, buf, meta):
            return -1
    return 0
