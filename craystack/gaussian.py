"""Gaussian bucket helpers and codecs for (discretized) diagonal Gaussians.

All codecs here code a bin index per lane.  The probability of bin ``i`` is
the Gaussian mass ``N(mean, stdd)`` between the bin's edges, quantized as
described in :mod:`craystack.codecs`.  To keep the quantized CDF strictly
increasing even though ``scipy.special.ndtr`` is not exactly monotone at
the last bit, the CDF used is::

    G(i) = (ndtr(z_i) + i * 2**-44) / (1 + n_bins * 2**-44)

i.e. the Gaussian mixed with a uniform of weight below ``2**-12``.  The edges
``z_i`` are computed with monotone floating point operations from monotone
tables, so ``G`` is non-decreasing in ``i`` and every bin keeps a frequency
of at least one, for any finite parameters.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.special import ndtr, ndtri

from . import _checks
from .codecs import Codec, quantized_cdf_codec

__all__ = [
    "std_gaussian_buckets",
    "std_gaussian_centres",
    "gaussian_bin_centres",
    "DiagGaussian_StdBins",
    "DiagGaussian_GaussianBins",
    "DiagGaussian_UnifBins",
    "DiscretizedGaussian",
    "MAX_BIN_PREC",
]

MAX_BIN_PREC = 24  #: largest supported ``bin_prec`` (tables hold 2**bin_prec values)
_EPS = 2.0 ** -44


def _check_bin_prec(bin_prec, who):
    return _checks.int_scalar(bin_prec, "bin_prec", who, 1, MAX_BIN_PREC)


@functools.lru_cache(maxsize=None)
def _std_edges(prec: int) -> np.ndarray:
    n = 1 << prec
    edges = ndtri(np.arange(n + 1, dtype=np.float64) / n)
    edges[0] = -np.inf
    edges[n] = np.inf
    edges = np.maximum.accumulate(edges)
    edges.flags.writeable = False
    return edges


@functools.lru_cache(maxsize=None)
def _std_centres(prec: int) -> np.ndarray:
    n = 1 << prec
    centres = ndtri((np.arange(n, dtype=np.float64) + 0.5) / n)
    centres.flags.writeable = False
    return centres


def std_gaussian_buckets(prec) -> np.ndarray:
    """The ``2**prec + 1`` edges of ``2**prec`` equal-mass bins of N(0, 1).

    ``edges[i] = ndtri(i / 2**prec)``; the first is ``-inf``, the last ``+inf``.
    The returned array is read-only and shared.
    """
    return _std_edges(_check_bin_prec(prec, "std_gaussian_buckets"))


def std_gaussian_centres(prec) -> np.ndarray:
    """Centres (in probability) of the ``2**prec`` equal-mass bins of N(0, 1):
    ``ndtri((i + 0.5) / 2**prec)``.  Read-only and shared."""
    return _std_centres(_check_bin_prec(prec, "std_gaussian_centres"))


def gaussian_bin_centres(bin_mean, bin_stdd, idx, bin_prec) -> np.ndarray:
    """Latent values for bin indices of :func:`DiagGaussian_GaussianBins`.

    Returns ``bin_mean + bin_stdd * std_gaussian_centres(bin_prec)[idx]``
    (float64, broadcast over the three array arguments).
    """
    who = "gaussian_bin_centres"
    bin_prec = _check_bin_prec(bin_prec, who)
    bm = _checks.float_param(bin_mean, "bin_mean", who)
    bs = _checks.float_param(bin_stdd, "bin_stdd", who, positive=True)
    idx = np.asarray(idx)
    n = 1 << bin_prec
    idx = _checks.symbols(idx, idx.shape, n, who)
    return bm + bs * _std_centres(bin_prec)[idx]


def _lane_params(who, **named):
    """A ``lane_params(shape)`` function broadcasting the given arrays."""
    names = list(named)
    arrays = [named[k] for k in names]
    cache = {}

    def lane_params(shape):
        hit = cache.get(shape)
        if hit is None:
            hit = tuple(_checks.broadcast_lanes(a, shape, k, who)
                        for k, a in zip(names, arrays))
            cache.clear()
            cache[shape] = hit
        return hit

    return lane_params


def _mixed_cdf(z, idx, n):
    """Non-decreasing CDF G(i) from standardized edges z (see module doc)."""
    g = ndtr(z)
    g += idx * _EPS
    g /= 1.0 + n * _EPS
    return g


def _quiet(fn):
    """Run ``fn`` with float overflow/underflow silenced: extreme parameters
    legitimately push edges to +-inf or 0, where ndtr saturates correctly."""

    @functools.wraps(fn)
    def wrapper(*args):
        with np.errstate(over="ignore", under="ignore"):
            return fn(*args)

    return wrapper


def _coding_quantile(u, mean, stdd):
    return mean + stdd * ndtri(u)


def DiagGaussian_StdBins(mean, stdd, coding_prec, bin_prec) -> Codec:
    """Diagonal Gaussian N(mean, stdd) over the ``2**bin_prec`` equal-mass bins
    of N(0, 1) (edges :func:`std_gaussian_buckets`); symbol = bin index."""
    who = "DiagGaussian_StdBins"
    bin_prec = _check_bin_prec(bin_prec, who)
    mean = _checks.float_param(mean, "mean", who)
    stdd = _checks.float_param(stdd, "stdd", who, positive=True)
    n = 1 << bin_prec
    edges = _std_edges(bin_prec)

    @_quiet
    def cdf(idx, params):
        mu, sd = params
        z = edges[idx]
        z -= mu
        z /= sd
        return _mixed_cdf(z, idx, n)

    @_quiet
    def guess(u, params):
        mu, sd = params
        return ndtr(_coding_quantile(u, mu, sd)) * n

    return quantized_cdf_codec(who, n, coding_prec,
                               _lane_params(who, mean=mean, stdd=stdd), cdf, guess,
                               guess_rounds=2)


def DiagGaussian_GaussianBins(mean, stdd, bin_mean, bin_stdd, coding_prec,
                              bin_prec) -> Codec:
    """Diagonal Gaussian N(mean, stdd) over ``2**bin_prec`` bins of equal mass
    under the per-lane Gaussian N(bin_mean, bin_stdd); symbol = bin index.

    Use :func:`gaussian_bin_centres` to turn indices into latent values.
    """
    who = "DiagGaussian_GaussianBins"
    bin_prec = _check_bin_prec(bin_prec, who)
    mean = _checks.float_param(mean, "mean", who)
    stdd = _checks.float_param(stdd, "stdd", who, positive=True)
    bin_mean = _checks.float_param(bin_mean, "bin_mean", who)
    bin_stdd = _checks.float_param(bin_stdd, "bin_stdd", who, positive=True)
    n = 1 << bin_prec
    edges = _std_edges(bin_prec)

    @_quiet
    def cdf(idx, params):
        mu, sd, bmu, bsd = params
        z = edges[idx]
        z *= bsd
        z += bmu
        z -= mu
        z /= sd
        return _mixed_cdf(z, idx, n)

    @_quiet
    def guess(u, params):
        mu, sd, bmu, bsd = params
        return ndtr((_coding_quantile(u, mu, sd) - bmu) / bsd) * n

    lanes = _lane_params(who, mean=mean, stdd=stdd, bin_mean=bin_mean, bin_stdd=bin_stdd)
    return quantized_cdf_codec(who, n, coding_prec, lanes, cdf, guess)


def DiagGaussian_UnifBins(mean, stdd, bin_min, bin_max, n_bins, coding_prec) -> Codec:
    """Diagonal Gaussian over ``n_bins`` equal-width bins spanning
    ``[bin_min, bin_max]``; the first and last bins extend to -inf / +inf
    so that they collect the mass outside.  Symbol = bin index; bin ``i``
    has centre ``bin_min + (i + 0.5) * (bin_max - bin_min) / n_bins``."""
    who = "DiagGaussian_UnifBins"
    mean = _checks.float_param(mean, "mean", who)
    stdd = _checks.float_param(stdd, "stdd", who, positive=True)
    bin_min = _checks.float_param(bin_min, "bin_min", who)
    bin_max = _checks.float_param(bin_max, "bin_max", who)
    n = _checks.int_scalar(n_bins, "n_bins", who, 1, (1 << 32) - 1)
    width = bin_max - bin_min
    if not np.all(width > 0):
        raise ValueError(f"{who}: bin_max must be > bin_min")
    width = width / n
    if not np.all(np.isfinite(width)) or not np.all(width > 0):
        raise ValueError(f"{who}: bin width (bin_max - bin_min) / n_bins is not finite and > 0")

    @_quiet
    def cdf(idx, params):
        mu, sd, lo, w = params
        return _mixed_cdf((lo + idx * w - mu) / sd, idx, n)

    @_quiet
    def guess(u, params):
        mu, sd, lo, w = params
        return (_coding_quantile(u, mu, sd) - lo) / w

    lanes = _lane_params(who, mean=mean, stdd=stdd, bin_min=bin_min, width=width)
    return quantized_cdf_codec(who, n, coding_prec, lanes, cdf, guess)


def DiscretizedGaussian(mean, stdd, num_levels, coding_prec, lo=-1.0, hi=1.0) -> Codec:
    """Gaussian N(mean, stdd) discretized to ``num_levels`` equally spaced
    levels ``lo + k * (hi - lo) / (num_levels - 1)``; symbol = level index ``k``.

    Bin edges lie halfway between neighbouring levels; the first bin extends
    to -inf and the last to +inf (the decoder p(x0 | x1) of a diffusion model).
    """
    who = "DiscretizedGaussian"
    mean = _checks.float_param(mean, "mean", who)
    stdd = _checks.float_param(stdd, "stdd", who, positive=True)
    k = _checks.int_scalar(num_levels, "num_levels", who, 2, (1 << 32) - 1)
    lo = _checks.float_scalar(lo, "lo", who)
    hi = _checks.float_scalar(hi, "hi", who)
    if not hi > lo:
        raise ValueError(f"{who}: hi ({hi}) must be > lo ({lo})")
    step = (hi - lo) / (k - 1)
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"{who}: level spacing (hi - lo) / (num_levels - 1) must be finite and > 0")

    @_quiet
    def cdf(idx, params):
        mu, sd = params
        return _mixed_cdf((lo + (idx - 0.5) * step - mu) / sd, idx, k)

    @_quiet
    def guess(u, params):
        mu, sd = params
        return (_coding_quantile(u, mu, sd) - lo) / step + 0.5

    return quantized_cdf_codec(who, k, coding_prec,
                               _lane_params(who, mean=mean, stdd=stdd), cdf, guess)
