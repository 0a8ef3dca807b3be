"""Per-lane CDFs, their approximate inverses and craystack's quantized codec, as scalar
numba functions that the compiled phases call once per lane (pointwise over ANS lanes).

Each function reproduces, operation for operation, a NumPy reference, so the compiled path
codes the same symbols with the same intervals as the reference on every input:

* `KIND_STD`: N(mu, sd) at the edges of equal-mass bins of N(0, 1)
  (craystack.gaussian.DiagGaussian_StdBins with eps = 2**-44; bitswap._std_bins_cdf with
  eps = 2**-40);
* `KIND_GAUSSIAN_BINS`: N(mu, sd) at the edges of equal-mass bins of N(a, b)
  (DiagGaussian_GaussianBins);
* `KIND_DISCRETIZED`: N(mu, sd) at the midpoints a + (i - 1/2) b of equally spaced levels
  (DiscretizedGaussian);
* `KIND_SUB_BINS`: N(mu, sd) restricted to one coarse bin, at the edges of its sub-bins,
  taken on the side away from the mean (bitswap._sub_bins_cdf), with the per-lane constants
  of `sub_bin_setup`.

`quantized_cum` / `quantized_pop` / `quantized_interval` are craystack.codecs.
quantized_cdf_codec's C(i) and its decoder, including its guess rounds, the neighbour checks
and the binary search, so that even a CDF that is not monotone at its last bit decodes to the
same symbol. No fastmath: only IEEE +, -, *, / and scipy's own ndtr/ndtri (see `special`).
"""
from __future__ import annotations

import math

import numpy as np

from .kernels import compiled
from .special import ndtr, ndtri

__all__ = ["KIND_STD", "KIND_GAUSSIAN_BINS", "KIND_DISCRETIZED", "KIND_SUB_BINS", "lane_cdf", "lane_guess",
           "sub_bin_setup", "std_cdf_raw", "quantized_cum", "quantized_guess", "quantized_interval",
           "quantized_pop", "STATUS_BAD_CDF",
           "STATUS_NOT_INCREASING"]

KIND_STD, KIND_GAUSSIAN_BINS, KIND_DISCRETIZED, KIND_SUB_BINS = range(4)
STATUS_BAD_CDF = 2  # craystack: "internal error, CDF outside [0, 1] or nan"
STATUS_NOT_INCREASING = 3  # craystack: "quantized CDF is not increasing (bad cdf function)"

_U_MIN = 2.0 ** -60
_U_MAX = 1.0 - 2.0 ** -53
_MIN_MASS = 1e-250  # bitswap._MIN_MASS


@compiled(inline="always")
def sub_bin_setup(bounds, mu, sd, c, z0, r0, z1, r1):
    """(upper, ref, mass, flat) of N(mu, sd) on coarse bin c, whose edges are bounds[c] and
    bounds[c + 1] (the fine table's every 2**fine_bits-th edge; bitswap._sub_bins_cdf).

    r0 = ndtr(z0) and r1 = ndtr(z1) are values the caller already has (NaN z: none): the coarse
    level's CDF at the same edges, which is the same double when the standardized edge is, so
    it is reused instead of evaluated again."""
    lo = (bounds[c] - mu) / sd
    hi = (bounds[c + 1] - mu) / sd
    upper = lo > 0
    if upper:
        ref = ndtr(-lo)
        mass = ref - ndtr(-hi)
    else:
        ref = r0 if lo == z0 else ndtr(lo)
        mass = (r1 if hi == z1 else ndtr(hi)) - ref
    flat = not (mass > _MIN_MASS)
    if flat:
        mass = 1.0
    return upper, ref, mass, flat


@compiled(inline="always")
def std_cdf_raw(idx, edges, mu, sd, eps, denom):
    """KIND_STD's mixed CDF at 1 <= idx <= n - 1 (as `lane_cdf` computes it), with its
    standardized edge z and ndtr(z) for `sub_bin_setup`."""
    z = (edges[idx] - mu) / sd
    r = ndtr(z)
    return (r + idx * eps) / denom, z, r


@compiled(inline="always")
def lane_cdf(kind, idx, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat):
    """The mixed CDF at symbol idx (1 <= idx <= n - 1) of one lane."""
    if kind == KIND_SUB_BINS:
        z = (edges[base + idx] - mu) / sd
        if upper:
            g = (ref - ndtr(-z)) / mass
        else:
            g = (ndtr(z) - ref) / mass
        if flat:
            g = idx / n
        g = min(max(g, 0.0), 1.0)
    else:
        if kind == KIND_STD:
            z = (edges[idx] - mu) / sd
        elif kind == KIND_GAUSSIAN_BINS:
            z = (edges[idx] * b + a - mu) / sd
        else:
            z = (a + (idx - 0.5) * b - mu) / sd
        g = ndtr(z)
    return (g + idx * eps) / denom


@compiled
def lane_guess(kind, u, mu, sd, a, b, n, bin_scale, base, upper, ref, mass, flat):
    """Approximate symbol (float) whose bin holds the model quantile u (the references' guess)."""
    if kind == KIND_SUB_BINS:
        if flat:
            return u * n
        if upper:
            z = -ndtri(ref - u * mass)
        else:
            z = ndtri(ref + u * mass)
        return ndtr(mu + sd * z) * bin_scale - base
    q = mu + sd * ndtri(u)
    if kind == KIND_STD:
        return ndtr(q) * n
    if kind == KIND_GAUSSIAN_BINS:
        return ndtr((q - a) / b) * n
    return (q - a) / b + 0.5


@compiled(inline="always")
def quantized_cum(kind, idx, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k, total):
    """craystack's C(idx) = floor(G(idx) * (2**prec - n)) + idx, 0 and 2**prec at the ends;
    returns (C, status)."""
    if idx <= 0:
        return np.uint64(0), 0
    if idx >= n:
        return total, 0
    f = lane_cdf(kind, idx, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat)
    if not (f >= 0.0 and f <= 1.0):
        return np.uint64(0), STATUS_BAD_CDF
    return np.uint64(f * k) + np.uint64(idx), 0


@compiled(inline="always")
def quantized_interval(kind, s, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k, total):
    """(start, end, status) of symbol s, as craystack's push computes them."""
    start, st0 = quantized_cum(kind, s, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k, total)
    end, st1 = quantized_cum(kind, s + 1, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k,
                             total)
    status = max(st0, st1)
    if status == 0 and not end > start:
        status = STATUS_NOT_INCREASING
    return start, end, status


@compiled
def _guess_index(kind, u, mu, sd, a, b, n, bin_scale, base, upper, ref, mass, flat):
    u = min(max(u, _U_MIN), _U_MAX)
    g = lane_guess(kind, u, mu, sd, a, b, n, bin_scale, base, upper, ref, mass, flat)
    if not math.isfinite(g):
        g = 0.0
    g = min(max(math.floor(g), 0.0), float(n - 1))
    return np.int64(g)


@compiled
def quantized_guess(kind, cf, mu, sd, a, b, n, bin_scale, base, upper, ref, mass, flat, ratio, inv_k, rounds):
    """The decoder's first estimate of the symbol of cf after `rounds` guess rounds (split from
    `quantized_pop` so that callers can fetch the table entries it points at for many lanes
    at once before `quantized_pop` reads them)."""
    cf_f = float(cf)
    g = _guess_index(kind, (cf_f - cf_f * ratio + 0.5) * inv_k, mu, sd, a, b, n, bin_scale, base, upper, ref, mass,
                     flat)
    for _ in range(rounds - 1):
        g = _guess_index(kind, (cf_f - g + 0.5) * inv_k, mu, sd, a, b, n, bin_scale, base, upper, ref, mass, flat)
    return g


@compiled
def quantized_pop(kind, cf, g, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k, total, bin_scale,
                  inv_k):
    """craystack's decoder of quantized_cdf_codec with a guess, for one lane, from the estimate
    g of `quantized_guess`: (symbol, start, end, status). `inv_k` = 1 / (2**prec - n) as the
    reference computes it; the branches mirror the reference's array updates (including which
    of its arrays alias each other), so the result is the same even where C is not monotone."""
    status = 0
    cf_f = float(cf)
    c0, s0 = quantized_cum(kind, g, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k, total)
    c1, s1 = quantized_cum(kind, g + 1, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k, total)
    status = max(status, s0, s1)
    if cf < c0 or cf >= c1:
        g = _guess_index(kind, (cf_f - g + 0.5) * inv_k, mu, sd, a, b, n, bin_scale, base, upper, ref, mass, flat)
        c0, s0 = quantized_cum(kind, g, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k, total)
        c1, s1 = quantized_cum(kind, g + 1, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k,
                               total)
        status = max(status, s0, s1)
    below = cf < c0
    above = cf >= c1
    if below:
        gb = g - 1
        cb, s0 = quantized_cum(kind, gb, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k,
                               total)
        status = max(status, s0)
        if cb <= cf:
            g, c1, c0 = gb, c0, cb
        else:
            g, c0, s0 = _search(kind, cf, 0, np.uint64(0), g - 1, edges, mu, sd, a, b, n, eps, denom, base, upper,
                                ref, mass, flat, k, total)
            c1, s1 = quantized_cum(kind, g + 1, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k,
                                   total)
            status = max(status, s0, s1)
    if above:
        ga = g + 2
        ca, s0 = quantized_cum(kind, ga, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k,
                               total)
        status = max(status, s0)
        if cf < ca:
            g, c0, c1 = g + 1, c1, ca
        else:
            g, c0, s0 = _search(kind, cf, ga, ca, n - ga, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass,
                                flat, k, total)
            c1, s1 = quantized_cum(kind, g + 1, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k,
                                   total)
            status = max(status, s0, s1)
    if status == 0 and not (c0 <= cf and cf < c1):
        status = STATUS_NOT_INCREASING
    return g, c0, c1, status


@compiled
def _search(kind, cf, lo, c_lo, size, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k, total):
    """Largest idx in [lo, lo + size) with C(idx) <= cf (craystack's search, per lane)."""
    status = 0
    while size > 1:
        half = size >> 1
        mid = lo + half
        c, s = quantized_cum(kind, mid, edges, mu, sd, a, b, n, eps, denom, base, upper, ref, mass, flat, k, total)
        status = max(status, s)
        if c <= cf:
            lo = mid
            c_lo = c
            size = size - half
        else:
            size = half
    return lo, c_lo, status
