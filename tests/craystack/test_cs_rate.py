"""Coding rates measured from flat message lengths.

Pushing N symbols must cost within 0.01 bits/symbol of the ideal
sum(-log2 P(symbol)) under the quantized distribution, up to the fixed head
size (64 bits per lane): the head can absorb or release up to that much.
"""

import numpy as np
import pytest
from scipy.special import ndtr

import craystack as cs
from cs_helpers import content_bits, flat_bits

TOL = 0.01  # bits per symbol


def _check_rate(m0, m, ideal, n_sym):
    lanes = m0.head.size
    measured = flat_bits(m) - flat_bits(m0)
    assert abs(measured - ideal) <= TOL * n_sym + 64 * lanes, (measured, ideal)
    # log2 of the whole state is an even sharper account of the cost
    exact = content_bits(m) - content_bits(m0)
    assert abs(exact - ideal) <= TOL * n_sym, (exact, ideal)
    return measured, exact


@pytest.mark.parametrize("prec", [8, 12, 16, 24, 28, 32])
@pytest.mark.parametrize("p0", [0.5, 0.9, 0.999])
def test_rans_rate_nonuniform(prec, p0):
    """The coder itself: two symbols with frequencies f0, M - f0."""
    rng = np.random.default_rng(prec)
    M = 1 << prec
    f0 = max(1, min(M - 1, int(p0 * M)))
    c = np.array([0, f0, M], dtype=np.uint64)

    codec = cs.NonUniform(lambda s: (c[s], c[s + 1] - c[s]),
                          lambda cf: (cf >= c[1]).astype(np.int64), prec)
    lanes, steps = 8, 1500
    m0 = cs.base_message((lanes,))
    m = m0
    ideal = 0.0
    for _ in range(steps):
        s = (rng.random(lanes) > p0).astype(np.int64)
        ideal += float(np.sum(np.log2(M / np.where(s == 0, f0, M - f0))))
        m, = codec.push(m, s)
    _check_rate(m0, m, ideal, lanes * steps)


@pytest.mark.parametrize("prec", [9, 16, 24, 32])
def test_categorical_rate_vs_quantized_entropy(prec):
    rng = np.random.default_rng(prec)
    lanes, n, steps = 16, 200, 400
    probs = rng.dirichlet(np.ones(n) * 0.3, size=lanes)
    probs[:, :5] = 0.0  # zero-probability symbols still cost finite bits
    probs /= probs.sum(1, keepdims=True)
    codec = cs.Categorical(probs, prec)
    # the quantized distribution, by the documented formula
    k = (1 << prec) - n
    partial = np.cumsum(probs, 1)
    cdf = np.concatenate([np.zeros((lanes, 1)), partial[:, :-1] / partial[:, -1:]], 1)
    cum = np.floor(cdf * k).astype(np.int64) + np.arange(n)
    cum = np.concatenate([cum, np.full((lanes, 1), 1 << prec)], 1)
    freq = np.diff(cum, axis=1)
    assert freq.min() >= 1
    m0 = cs.random_message(1 + 2 * lanes + 10, (lanes,), 0)
    m = m0
    ideal = 0.0
    for _ in range(steps):
        # mostly likely symbols, some impossible ones
        s = np.array([rng.choice(n, p=p) for p in probs])
        s[rng.random(lanes) < 0.02] = 0
        ideal += float(np.sum(prec - np.log2(freq[np.arange(lanes), s])))
        m, = codec.push(m, s)
    _check_rate(m0, m, ideal, lanes * steps)


def test_uniform_rate_is_exact():
    lanes, steps, prec = 4, 300, 13
    m0 = cs.base_message((lanes,))
    m = m0
    rng = np.random.default_rng(0)
    for _ in range(steps):
        m, = cs.Uniform(prec).push(m, rng.integers(0, 1 << prec, lanes))
    _check_rate(m0, m, float(prec * lanes * steps), lanes * steps)


@pytest.mark.parametrize("which", ["std", "gauss", "unif", "disc"])
def test_gaussian_codec_rates_match_the_gaussian(which):
    """At high coding precision the cost is -log2 of the Gaussian bin mass.

    Symbols are sampled by decoding random bits, i.e. from the codec's own
    quantized distribution; the quantized and exact masses differ by far less
    than the tolerance at these precisions.
    """
    rng = np.random.default_rng(11)
    lanes, steps = 32, 150
    shape = (lanes,)
    mean = rng.normal(size=shape)
    stdd = np.exp(rng.normal(size=shape) * 0.5) * 0.5
    if which == "std":
        bin_prec, coding_prec = 10, 26
        codec = cs.DiagGaussian_StdBins(mean, stdd, coding_prec, bin_prec)
        edges = np.broadcast_to(cs.std_gaussian_buckets(bin_prec), (lanes, 1025))
    elif which == "gauss":
        bin_prec, coding_prec = 10, 26
        bm = mean + 0.3 * rng.normal(size=shape)
        bs = stdd * 1.5
        codec = cs.DiagGaussian_GaussianBins(mean, stdd, bm, bs, coding_prec, bin_prec)
        edges = bm[:, None] + bs[:, None] * cs.std_gaussian_buckets(bin_prec)[None, :]
    elif which == "unif":
        codec = cs.DiagGaussian_UnifBins(mean, stdd, -3.0, 3.0, 300, 26)
        edges = np.linspace(-3.0, 3.0, 301)
        edges[0], edges[-1] = -np.inf, np.inf
        edges = np.broadcast_to(edges, (lanes, 301))
    else:
        stdd = stdd * 0.1
        codec = cs.DiscretizedGaussian(mean * 0.5, stdd, 256, 26)
        mean = mean * 0.5
        x = -1.0 + np.arange(256) * 2.0 / 255
        edges = np.concatenate([[-np.inf], (x[:-1] + x[1:]) / 2, [np.inf]])
        edges = np.broadcast_to(edges, (lanes, 257))
    mass = np.diff(ndtr((edges - mean[:, None]) / stdd[:, None]), axis=1)
    m0 = cs.random_message(1 + 2 * lanes + 10, shape, 1)
    source = cs.random_message(1 + 2 * lanes + 10 * steps * lanes, shape, 2)
    m = m0
    ideal = 0.0
    for _ in range(steps):
        source, s = codec.pop(source)
        ideal += float(np.sum(-np.log2(mass[np.arange(lanes), s])))
        m, = codec.push(m, s)
    _check_rate(m0, m, ideal, lanes * steps)
