"""One ANS lane's share of each Bit-Swap coding pass, as inline numba functions that both the
threaded CPU kernels (`compiled_codecs`) and the CUDA kernels (`cuda_codecs`) loop over, so the
coding logic exists once and the two builds cannot drift apart.

A pass is a loop over one lane group's lanes calling one of the `*_lane` functions below, then a
scan that moves renormalisation words between the lanes and the shared tail in lane order (the
caller's job: `craystack.compiled.message` on the CPU, `craystack.compiled.cuda_scan` on CUDA).
Each function reads its lane's state from ``head[lane]`` and its parameters at index ``p``
(the lane's position in the batch), and writes its lane's results to per-lane scratch arrays.
The helpers above them reproduce bitswap's NumPy codecs per lane (see `compiled_codecs` for the
exactness argument).
"""
from __future__ import annotations

import math

import numpy as np

from craystack.compiled import (HEAD_MIN, KIND_STD, KIND_SUB_BINS, STATUS_BAD_CDF, STATUS_NOT_INCREASING, lane_cdf,
                                lane_guess, mix32, pop_state, push_interval, push_renorm, push_state, quantized_guess,
                                quantized_interval, quantized_pop, std_cdf_raw, sub_bin_setup)
from craystack.compiled.kernels import compiled
from craystack.compiled.prefetch import prefetch

__all__ = ["q_pop_coarse_lane", "q_pop_fine_lane", "q_push_lane", "p_push_lane", "p_pop_coarse_lane",
           "p_pop_fine_lane", "STATUS_ZERO_Q"]

_EPS_BITSWAP = 2.0 ** -40  # bitswap._CDF_EPS
_EPS_CRAYSTACK = 2.0 ** -44  # craystack.gaussian._EPS
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_U37 = np.uint64(37)
STATUS_ZERO_Q = 4  # a latent of zero probability under q (the message is not from this encoder)


# --- Bit-Swap's q: no frequency floor, keyed slots (bitswap._unfloored_codec, slot_key) ----------------

@compiled(inline="always")
def _slot_offset(q, lane, salt):
    """bitswap.slot_key: a hash of the lane's quotient and position (salt from `_salt`)."""
    return mix32((q ^ (np.uint64(lane) << _U37)) * _GOLDEN + salt)


@compiled(inline="always")
def _ucum(kind, idx, edges, mu, sd, n, base, upper, ref, mass, flat, total_f, total):
    """bitswap._unfloored_codec's cum: floor(CDF * 2**prec), 0 and 2**prec at the ends."""
    if idx <= 0:
        return np.uint64(0)
    if idx >= n:
        return total
    denom = 1.0 + n * _EPS_BITSWAP
    g = lane_cdf(kind, idx, edges, mu, sd, 0.0, 0.0, n, _EPS_BITSWAP, denom, base, upper, ref, mass, flat)
    return np.uint64(math.floor(g * total_f))


@compiled
def _uguess(kind, cf, mu, sd, n, bin_scale, base, upper, ref, mass, flat, total_f):
    """bitswap._unfloored_codec's first estimate of the symbol of cf."""
    v = math.floor(lane_guess(kind, (float(cf) + 0.5) / total_f, mu, sd, 0.0, 0.0, n, bin_scale, base, upper, ref,
                              mass, flat))
    if math.isnan(v):
        v = 0.0
    return np.int64(min(max(v, 0.0), float(n - 1)))


@compiled(inline="always")
def _upop(kind, cf, sym, edges, mu, sd, n, base, upper, ref, mass, flat, total_f, total):
    """bitswap._unfloored_codec's pop for one lane from the estimate sym: check, and a binary
    search on a miss; (symbol, start, end)."""
    start = _ucum(kind, sym, edges, mu, sd, n, base, upper, ref, mass, flat, total_f, total)
    end = _ucum(kind, sym + 1, edges, mu, sd, n, base, upper, ref, mass, flat, total_f, total)
    if cf < start or cf >= end:
        lo = 0
        size = n
        while size > 1:
            half = size >> 1
            mid = lo + half
            if _ucum(kind, mid, edges, mu, sd, n, base, upper, ref, mass, flat, total_f, total) <= cf:
                lo = mid
            size -= half
        sym = lo
        start = _ucum(kind, sym, edges, mu, sd, n, base, upper, ref, mass, flat, total_f, total)
        end = _ucum(kind, sym + 1, edges, mu, sd, n, base, upper, ref, mass, flat, total_f, total)
    return sym, start, end


_NAN = np.nan


@compiled(inline="always")
def _ucum_std(idx, edges, mu, sd, n, total_f, total):
    """`_ucum` of KIND_STD, with the standardized edge and its ndtr (NaN z off the table)."""
    if idx <= 0:
        return np.uint64(0), _NAN, _NAN
    if idx >= n:
        return total, _NAN, _NAN
    g, z, r = std_cdf_raw(idx, edges, mu, sd, _EPS_BITSWAP, 1.0 + n * _EPS_BITSWAP)
    return np.uint64(math.floor(g * total_f)), z, r


@compiled(inline="always")
def _upop_std(cf, sym, edges, mu, sd, n, total_f, total):
    """`_upop` of KIND_STD, also returning the edges and ndtr values of the final interval."""
    start, z0, r0 = _ucum_std(sym, edges, mu, sd, n, total_f, total)
    end, z1, r1 = _ucum_std(sym + 1, edges, mu, sd, n, total_f, total)
    if cf < start or cf >= end:
        lo = 0
        size = n
        while size > 1:
            half = size >> 1
            mid = lo + half
            if _ucum_std(mid, edges, mu, sd, n, total_f, total)[0] <= cf:
                lo = mid
            size -= half
        sym = lo
        start, z0, r0 = _ucum_std(sym, edges, mu, sd, n, total_f, total)
        end, z1, r1 = _ucum_std(sym + 1, edges, mu, sd, n, total_f, total)
    return sym, start, end, z0, r0, z1, r1


@compiled(inline="always")
def _qcum_std(idx, edges, mu, sd, n, k, total):
    """craystack's quantized C(idx) of DiagGaussian_StdBins (`quantized_cum`), with the edge and
    its ndtr value; (C, status, z, r)."""
    if idx <= 0:
        return np.uint64(0), 0, _NAN, _NAN
    if idx >= n:
        return total, 0, _NAN, _NAN
    f, z, r = std_cdf_raw(idx, edges, mu, sd, _EPS_CRAYSTACK, 1.0 + n * _EPS_CRAYSTACK)
    if not (f >= 0.0 and f <= 1.0):
        return np.uint64(0), STATUS_BAD_CDF, z, r
    return np.uint64(f * k) + np.uint64(idx), 0, z, r


@compiled(inline="always")
def _keyed_cf(x, lane, prec, keyed, salt):
    mask = (np.uint64(1) << np.uint64(prec)) - np.uint64(1)
    if not keyed:
        return x & mask
    off = _slot_offset(x >> np.uint64(prec), lane, salt)
    return ((x & mask) + (mask + np.uint64(1) - (off & mask))) & mask


_AHEAD = 8  # lanes ahead whose fine-table entries a lane asks the cache for (see `_prefetch_bin`)


@compiled(inline="always")
def _prefetch_bin(edges, i):
    """Ask for the fine table's entries i and i + 1 (a bin's two edges), which a lane _AHEAD
    lanes further on will read: the table (2**20 doubles) does not fit in cache, and the reads
    would otherwise wait for memory. A plain early read here, which stalls until it arrives,
    left Bit-Swap encode at 19 ms per step on one thread (CIFAR-10, batch 16, on the 2-core
    CPU); the prefetch instruction, 15 ms."""
    prefetch(edges, i)
    prefetch(edges, i + 1)


@compiled(inline="always")
def _push_sub_bins(lane, p, count, symbols, edges_f, bounds, mu, sd, nc, fine_bits, c, z0, r0, z1, r1):
    """A push's sub-bin setup for coarse bin c, clamped into the table (the coarse level checks c
    itself): (base, upper, ref, mass, flat). Also prefetches the fine-table entries of the lane
    _AHEAD further on (`_prefetch_bin`)."""
    if lane + _AHEAD < count:  # a symbol is its fine bin's index (a bad one only makes a useless hint)
        _prefetch_bin(edges_f, symbols[p + _AHEAD])
    cc = min(max(c, 0), nc - 1)
    if cc != c:
        z0 = z1 = _NAN
    upper, ref, mass, flat = sub_bin_setup(bounds, mu[p], sd[p], cc, z0, r0, z1, r1)
    return cc << fine_bits, upper, ref, mass, flat


# --- one lane of each pass ----------------------------------------------------------------------------

@compiled(inline="always")
def q_pop_coarse_lane(lane, p, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, keyed, salt_c, salt_f, flags,
                      coarse, guess, s_ref, s_mass, s_upper, s_flat):
    """q pop, first pass: the coarse bin, the sub-bin's constants and (where the lane needs no
    refill) the sub-bin's guess."""
    nc = edges_c.size - 1
    total = np.uint64(1) << np.uint64(prec)
    total_f = float(total)
    x = head[lane]
    cf = _keyed_cf(x, lane, prec, keyed, salt_c)
    s0 = _uguess(KIND_STD, cf, mu[p], sd[p], nc, 0.0, 0, False, 0.0, 1.0, False, total_f)
    c, start, end, z0, r0, z1, r1 = _upop_std(cf, s0, edges_c, mu[p], sd[p], nc, total_f, total)
    x = pop_state(x, cf, start, end - start, prec)
    head[lane] = x
    flags[lane] = x < HEAD_MIN
    coarse[lane] = c
    if fine_bits:
        upper, ref, mass, flat = sub_bin_setup(bounds, mu[p], sd[p], c, z0, r0, z1, r1)
        s_upper[lane], s_ref[lane], s_mass[lane], s_flat[lane] = upper, ref, mass, flat
        if x >= HEAD_MIN:
            cf = _keyed_cf(x, lane, prec, keyed, salt_f)
            guess[lane] = _uguess(KIND_SUB_BINS, cf, mu[p], sd[p], 1 << fine_bits, float(edges_f.size - 1),
                                  c << fine_bits, upper, ref, mass, flat, total_f)


@compiled(inline="always")
def q_pop_fine_lane(lane, p, count, head, mu, sd, edges_f, prec, fine_bits, keyed, salt_f, out, flags, coarse, guess,
                    s_ref, s_mass, s_upper, s_flat):
    """q pop, second pass: the sub-bin, into out[p] (after the refill of the first pass)."""
    nf = 1 << fine_bits
    total = np.uint64(1) << np.uint64(prec)
    total_f = float(total)
    bin_scale = float(edges_f.size - 1)
    ahead = lane + _AHEAD
    if ahead < count:
        _prefetch_bin(edges_f, (coarse[ahead] << fine_bits) + guess[ahead])
    base = coarse[lane] << fine_bits
    x = head[lane]
    cf = _keyed_cf(x, lane, prec, keyed, salt_f)
    first = guess[lane]  # (not written in this pass: lanes ahead read it)
    if flags[lane]:  # refilled: its guess needed the new state
        first = _uguess(KIND_SUB_BINS, cf, mu[p], sd[p], nf, bin_scale, base, s_upper[lane], s_ref[lane],
                        s_mass[lane], s_flat[lane], total_f)
    s, start, end = _upop(KIND_SUB_BINS, cf, first, edges_f, mu[p], sd[p], nf, base, s_upper[lane], s_ref[lane],
                          s_mass[lane], s_flat[lane], total_f, total)
    x = pop_state(x, cf, start, end - start, prec)
    head[lane] = x
    flags[lane] = x < HEAD_MIN
    out[p] = base | s


@compiled(inline="always")
def q_push_lane(lane, p, count, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, keyed, salt_c, salt_f,
                symbols, words, flags, words2, flags2, stat):
    """q push (decode): the sub-bin (words, flags), then the coarse bin (words2, flags2)."""
    nc = edges_c.size - 1
    nf = 1 << fine_bits
    total = np.uint64(1) << np.uint64(prec)
    total_f = float(total)
    s = symbols[p]
    c = s >> fine_bits
    x = head[lane]
    stat[lane] = 0
    flags[lane] = False
    flags2[lane] = False
    start_c, z0, r0 = _ucum_std(c, edges_c, mu[p], sd[p], nc, total_f, total)
    end_c, z1, r1 = _ucum_std(c + 1, edges_c, mu[p], sd[p], nc, total_f, total)
    if fine_bits:
        base, upper, ref, mass, flat = _push_sub_bins(lane, p, count, symbols, edges_f, bounds, mu, sd, nc,
                                                      fine_bits, c, z0, r0, z1, r1)
        f = s & (nf - 1)
        start = _ucum(KIND_SUB_BINS, f, edges_f, mu[p], sd[p], nf, base, upper, ref, mass, flat, total_f, total)
        end = _ucum(KIND_SUB_BINS, f + 1, edges_f, mu[p], sd[p], nf, base, upper, ref, mass, flat, total_f, total)
        if not end > start:
            stat[lane] = STATUS_ZERO_Q
            return
        freq = end - start
        x, over, word = push_renorm(x, freq, prec)
        q = x // freq
        key = _slot_offset(q, lane, salt_f) if keyed else np.uint64(0)
        x = push_state(x, q, start, freq, prec, key)
        flags[lane] = over
        words[lane] = word
    if not end_c > start_c:
        stat[lane] = STATUS_ZERO_Q
        return
    freq = end_c - start_c
    x, over, word = push_renorm(x, freq, prec)
    q = x // freq
    key = _slot_offset(q, lane, salt_c) if keyed else np.uint64(0)
    head[lane] = push_state(x, q, start_c, freq, prec, key)
    flags2[lane] = over
    words2[lane] = word


@compiled(inline="always")
def p_push_lane(lane, p, count, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, symbols, words, flags, words2,
                flags2, stat):
    """p push (encode): the sub-bin with bitswap's sub-bin codec (words, flags), then the coarse
    bin with DiagGaussian_StdBins (words2, flags2); a sub-bin failure is 8 + its status."""
    nc = edges_c.size - 1
    nf = 1 << fine_bits
    total = np.uint64(1) << np.uint64(prec)
    k_c = float((1 << prec) - nc)
    k_f = float((1 << prec) - nf)
    denom_f = 1.0 + nf * _EPS_BITSWAP
    s = symbols[p]
    c = s >> fine_bits
    x = head[lane]
    stat[lane] = 0
    flags[lane] = False
    flags2[lane] = False
    start_c, st0, z0, r0 = _qcum_std(c, edges_c, mu[p], sd[p], nc, k_c, total)
    end_c, st1, z1, r1 = _qcum_std(c + 1, edges_c, mu[p], sd[p], nc, k_c, total)
    st_c = max(st0, st1)
    if st_c == 0 and not end_c > start_c:
        st_c = STATUS_NOT_INCREASING
    if fine_bits:
        base, upper, ref, mass, flat = _push_sub_bins(lane, p, count, symbols, edges_f, bounds, mu, sd, nc,
                                                      fine_bits, c, z0, r0, z1, r1)
        start, end, st = quantized_interval(KIND_SUB_BINS, s & (nf - 1), edges_f, mu[p], sd[p], 0.0, 0.0, nf,
                                            _EPS_BITSWAP, denom_f, base, upper, ref, mass, flat, k_f, total)
        if st:
            stat[lane] = 8 + st  # 8 +: the sub-bin codec
            return
        x, over, word = push_interval(x, start, end - start, prec)
        flags[lane] = over
        words[lane] = word
    if st_c:
        stat[lane] = st_c
        return
    head[lane], over, word = push_interval(x, start_c, end_c - start_c, prec)
    flags2[lane] = over
    words2[lane] = word


@compiled(inline="always")
def p_pop_coarse_lane(lane, p, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, flags, coarse, stat, guess,
                      s_ref, s_mass, s_upper, s_flat):
    """p pop (decode), first pass: the coarse bin with DiagGaussian_StdBins's decoder, the
    sub-bin's constants and (where the lane needs no refill) the sub-bin's guess."""
    nc = edges_c.size - 1
    nf = 1 << fine_bits
    total = np.uint64(1) << np.uint64(prec)
    mask = total - np.uint64(1)
    k_c = float((1 << prec) - nc)
    k_f = float((1 << prec) - nf)
    denom_c = 1.0 + nc * _EPS_CRAYSTACK
    x = head[lane]
    cf = x & mask
    g0 = quantized_guess(KIND_STD, cf, mu[p], sd[p], 0.0, 0.0, nc, 0.0, 0, False, 0.0, 1.0, False, nc / float(total),
                         1.0 / k_c, 2)
    c, start, end, st = quantized_pop(KIND_STD, cf, g0, edges_c, mu[p], sd[p], 0.0, 0.0, nc, _EPS_CRAYSTACK, denom_c, 0,
                                      False, 0.0, 1.0, False, k_c, total, 0.0, 1.0 / k_c)
    stat[lane] = st
    x = pop_state(x, cf, start, end - start, prec)
    head[lane] = x
    flags[lane] = x < HEAD_MIN
    coarse[lane] = c
    if fine_bits and st == 0:
        upper, ref, mass, flat = sub_bin_setup(bounds, mu[p], sd[p], c, _NAN, 0.0, _NAN, 0.0)
        s_upper[lane], s_ref[lane], s_mass[lane], s_flat[lane] = upper, ref, mass, flat
        if x >= HEAD_MIN:
            guess[lane] = quantized_guess(KIND_SUB_BINS, x & mask, mu[p], sd[p], 0.0, 0.0, nf, float(edges_f.size - 1),
                                          c << fine_bits, upper, ref, mass, flat, nf / float(total), 1.0 / k_f, 1)


@compiled(inline="always")
def p_pop_fine_lane(lane, p, count, head, mu, sd, edges_f, prec, fine_bits, out, flags, coarse, stat, guess,
                    s_ref, s_mass, s_upper, s_flat):
    """p pop (decode), second pass: the sub-bin, into out[p]; a failure is 8 + its status."""
    nf = 1 << fine_bits
    total = np.uint64(1) << np.uint64(prec)
    mask = total - np.uint64(1)
    k_f = float((1 << prec) - nf)
    denom_f = 1.0 + nf * _EPS_BITSWAP
    bin_scale = float(edges_f.size - 1)
    ahead = lane + _AHEAD
    if ahead < count:
        _prefetch_bin(edges_f, (coarse[ahead] << fine_bits) + guess[ahead])
    base = coarse[lane] << fine_bits
    x = head[lane]
    cf = x & mask
    first = guess[lane]  # (not written in this pass: lanes ahead read it)
    if flags[lane]:  # refilled: its guess needed the new state
        first = quantized_guess(KIND_SUB_BINS, cf, mu[p], sd[p], 0.0, 0.0, nf, bin_scale, base, s_upper[lane],
                                s_ref[lane], s_mass[lane], s_flat[lane], nf / float(total), 1.0 / k_f, 1)
    s, start, end, st = quantized_pop(KIND_SUB_BINS, cf, first, edges_f, mu[p], sd[p], 0.0, 0.0, nf, _EPS_BITSWAP,
                                      denom_f, base, s_upper[lane], s_ref[lane], s_mass[lane], s_flat[lane], k_f,
                                      total, bin_scale, 1.0 / k_f)
    stat[lane] = 8 + st if st else 0
    x = pop_state(x, cf, start, end - start, prec)
    head[lane] = x
    flags[lane] = x < HEAD_MIN
    out[p] = base | s
