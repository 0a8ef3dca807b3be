"""Gaussian bucket helpers and the Gaussian codecs."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.special import ndtr

import craystack as cs
from cs_helpers import assert_roundtrip, snapshot, assert_unchanged

pytestmark = pytest.mark.filterwarnings("ignore::craystack.EmptyTailWarning")

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=2).map(tuple)
means = st.one_of(st.floats(-5, 5), st.sampled_from([1e6, -1e6, 1e300, -1e300, 0.0, 40.0]))
stdds = st.one_of(st.floats(1e-3, 10), st.sampled_from([1e-9, 1e-300, 1e6, 1e300, 1.0]))
message_kinds = st.sampled_from(["base", "random_head", "random"])


def _message(shape, kind, seed):
    n = int(np.prod(shape))
    if kind == "base":
        return cs.base_message(shape)
    if kind == "random_head":
        return cs.base_message(shape, randomize=True, seed=seed)
    return cs.random_message(1 + 2 * n + 20, shape, seed)


def _params(draw, shape, gen, rng):
    """A per-lane array mixing drawn extremes."""
    vals = [draw(gen) for _ in range(3)]
    return np.asarray(rng.choice(vals, size=shape), dtype=np.float64)


# ---------------------------------------------------------------------------
# helpers


@pytest.mark.parametrize("prec", [1, 4, 10, 16])
def test_std_gaussian_buckets_and_centres(prec):
    n = 1 << prec
    edges = cs.std_gaussian_buckets(prec)
    centres = cs.std_gaussian_centres(prec)
    assert edges.shape == (n + 1,) and centres.shape == (n,)
    assert edges[0] == -np.inf and edges[-1] == np.inf
    assert np.all(np.diff(edges) > 0)
    np.testing.assert_allclose(np.diff(ndtr(edges)), 1.0 / n, rtol=1e-9, atol=1e-15)
    assert np.all((edges[:-1] < centres) & (centres < edges[1:]))
    np.testing.assert_allclose(ndtr(centres), (np.arange(n) + 0.5) / n, rtol=1e-9)
    with pytest.raises(ValueError):
        edges[1] = 0.0  # shared tables are read-only


def test_gaussian_bin_centres():
    bm = np.array([0.0, 1.0, -2.0])
    bs = np.array([1.0, 0.5, 3.0])
    idx = np.array([0, 512, 1023])
    got = cs.gaussian_bin_centres(bm, bs, idx, 10)
    np.testing.assert_allclose(got, bm + bs * cs.std_gaussian_centres(10)[idx])
    with pytest.raises(ValueError, match="gaussian_bin_centres: symbol 1024 out of range"):
        cs.gaussian_bin_centres(bm, bs, np.array([0, 1, 1024]), 10)
    with pytest.raises(ValueError, match=r"gaussian_bin_centres: bin_stdd must be > 0"):
        cs.gaussian_bin_centres(bm, -bs, idx, 10)


# ---------------------------------------------------------------------------
# roundtrips over random and extreme parameters


@settings(max_examples=50, deadline=None)
@given(data=st.data(), shape=shapes, bin_prec=st.integers(1, 12), extra=st.integers(1, 20),
       kind=message_kinds, seed=st.integers(0, 2**31))
def test_std_bins_roundtrip(data, shape, bin_prec, extra, kind, seed):
    rng = np.random.default_rng(seed)
    coding_prec = min(32, bin_prec + extra)
    mean = _params(data.draw, shape, means, rng)
    stdd = _params(data.draw, shape, stdds, rng)
    if seed % 2 and np.all(np.abs(mean) < 1e30):
        mean = mean.astype(np.float32)  # float32 inputs are accepted too
    codec = cs.DiagGaussian_StdBins(mean, stdd, coding_prec, bin_prec)
    n = 1 << bin_prec
    syms = [rng.integers(0, n, shape) for _ in range(3)] + [np.zeros(shape, np.int64),
                                                          np.full(shape, n - 1)]
    m = _message(shape, kind, seed)
    assert_roundtrip(codec, m, syms)
    popped, s = codec.pop(m)
    assert cs.message_equal(codec.push(popped, s)[0], m)


@settings(max_examples=50, deadline=None)
@given(data=st.data(), shape=shapes, bin_prec=st.integers(1, 12), extra=st.integers(1, 20),
       kind=message_kinds, seed=st.integers(0, 2**31))
def test_gaussian_bins_roundtrip(data, shape, bin_prec, extra, kind, seed):
    rng = np.random.default_rng(seed)
    coding_prec = min(32, bin_prec + extra)
    mean = _params(data.draw, shape, means, rng)
    stdd = _params(data.draw, shape, stdds, rng)
    bin_mean = _params(data.draw, shape, means, rng)
    bin_stdd = _params(data.draw, shape, stdds, rng)
    codec = cs.DiagGaussian_GaussianBins(mean, stdd, bin_mean, bin_stdd, coding_prec, bin_prec)
    n = 1 << bin_prec
    syms = [rng.integers(0, n, shape) for _ in range(3)] + [np.zeros(shape, np.int64),
                                                          np.full(shape, n - 1)]
    m = _message(shape, kind, seed)
    assert_roundtrip(codec, m, syms)
    popped, s = codec.pop(m)
    assert cs.message_equal(codec.push(popped, s)[0], m)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), shape=shapes, n_bins=st.integers(1, 3000), extra=st.integers(0, 20),
       lo=st.floats(-10, 10), width=st.sampled_from([1e-6, 0.1, 3.0, 1e5]),
       kind=message_kinds, seed=st.integers(0, 2**31))
def test_unif_bins_roundtrip(data, shape, n_bins, extra, lo, width, kind, seed):
    rng = np.random.default_rng(seed)
    coding_prec = min(32, int(np.floor(np.log2(n_bins))) + 1 + extra)
    mean = _params(data.draw, shape, means, rng)
    stdd = _params(data.draw, shape, stdds, rng)
    codec = cs.DiagGaussian_UnifBins(mean, stdd, lo, lo + width, n_bins, coding_prec)
    syms = [rng.integers(0, n_bins, shape) for _ in range(3)] + [
        np.zeros(shape, np.int64), np.full(shape, n_bins - 1)]
    assert_roundtrip(codec, _message(shape, kind, seed), syms)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), shape=shapes, levels=st.sampled_from([2, 3, 17, 256, 1000]),
       extra=st.integers(0, 22), kind=message_kinds, seed=st.integers(0, 2**31))
def test_discretized_roundtrip(data, shape, levels, extra, kind, seed):
    rng = np.random.default_rng(seed)
    coding_prec = min(32, int(np.floor(np.log2(levels))) + 1 + extra)
    mean = _params(data.draw, shape, means, rng)
    stdd = _params(data.draw, shape, stdds, rng)
    codec = cs.DiscretizedGaussian(mean, stdd, levels, coding_prec)
    syms = [rng.integers(0, levels, shape) for _ in range(3)] + [
        np.zeros(shape, np.int64), np.full(shape, levels - 1)]
    assert_roundtrip(codec, _message(shape, kind, seed), syms)


EXTREMES = [(0.0, 1e-9), (0.3, 1e-9), (1e6, 1.0), (-1e6, 1.0), (0.0, 1e6), (2.0, 1e-300),
            (1e300, 1e300), (-3.0, 0.05), (0.999, 1e-12)]


@pytest.mark.parametrize("mean, stdd", EXTREMES)
@pytest.mark.parametrize("bin_prec, coding_prec", [(8, 9), (8, 16), (12, 32), (14, 24)])
def test_every_bin_is_codable_at_extremes(mean, stdd, bin_prec, coding_prec):
    """One lane per bin: every bin index pushes and pops back."""
    n = 1 << bin_prec
    shape = (n,)
    sym = np.arange(n)
    m = cs.random_message(1 + 2 * n + 8, shape, 0)
    codecs = [
        cs.DiagGaussian_StdBins(mean, stdd, coding_prec, bin_prec),
        cs.DiagGaussian_GaussianBins(mean, stdd, 0.5, 2.0, coding_prec, bin_prec),
        cs.DiagGaussian_GaussianBins(0.0, 1.0, mean, stdd, coding_prec, bin_prec),
        cs.DiagGaussian_UnifBins(mean, stdd, -1.0, 1.0, n, coding_prec),
    ]
    for codec in codecs:
        assert_roundtrip(codec, m, [sym, sym[::-1].copy()])
    levels = min(n, 256)
    disc = cs.DiscretizedGaussian(mean, stdd, levels, coding_prec)
    assert_roundtrip(disc, m, [np.arange(n) % levels])


def test_gaussian_bins_large_bin_prec():
    rng = np.random.default_rng(3)
    shape = (64,)
    mean = rng.normal(size=shape)
    stdd = np.exp(rng.normal(size=shape))
    codec = cs.DiagGaussian_GaussianBins(mean, stdd, mean * 0.9, stdd * 1.1, 32, 20)
    m = cs.random_message(200, shape, 1)
    assert_roundtrip(codec, m, [rng.integers(0, 1 << 20, shape) for _ in range(4)])


# ---------------------------------------------------------------------------
# the distributions are the intended ones (decoding random bits samples them)


def _sample(codec, shape, seed=0):
    n = int(np.prod(shape))
    _, s = codec.pop(cs.random_message(1 + 2 * n + 4, shape, seed))
    return s


def test_std_bins_samples_follow_the_gaussian():
    shape = (40000,)
    codec = cs.DiagGaussian_StdBins(np.full(shape, 0.7), np.full(shape, 0.3), 24, 12)
    z = cs.std_gaussian_centres(12)[_sample(codec, shape)]
    assert abs(z.mean() - 0.7) < 0.01 and abs(z.std() - 0.3) < 0.01


def test_gaussian_bins_samples_follow_the_gaussian():
    shape = (40000,)
    bm = np.full(shape, -1.0)
    bs = np.full(shape, 2.0)
    codec = cs.DiagGaussian_GaussianBins(np.full(shape, 0.5), np.full(shape, 0.4), bm, bs, 20, 10)
    idx = _sample(codec, shape)
    z = cs.gaussian_bin_centres(bm, bs, idx, 10)
    assert abs(z.mean() - 0.5) < 0.01 and abs(z.std() - 0.4) < 0.01
    # equal-mass bins of N(-1, 2): the mass between edges is 1/1024 under the bin Gaussian
    edges = -1.0 + 2.0 * cs.std_gaussian_buckets(10)
    assert np.all((edges[idx] <= z) & (z <= edges[idx + 1]))


def test_discretized_gaussian_levels_and_tails():
    levels = 256
    step = 2.0 / 255
    shape = (5000,)
    # centred on level 100 with tiny spread: always level 100
    x100 = -1.0 + 100 * step
    s = _sample(cs.DiscretizedGaussian(np.full(shape, x100), np.full(shape, 1e-6), levels, 24), shape)
    assert np.all(s == 100)
    # halfway between levels 100 and 101: about half each
    s = _sample(cs.DiscretizedGaussian(np.full(shape, x100 + step / 2), np.full(shape, 1e-4),
                                       levels, 24), shape)
    assert set(np.unique(s)) <= {100, 101}
    assert abs(np.mean(s == 100) - 0.5) < 0.03
    # far outside [-1, 1]: the edge bins take all the mass
    s = _sample(cs.DiscretizedGaussian(np.full(shape, -50.0), np.ones(shape), levels, 24), shape)
    assert np.all(s == 0)
    s = _sample(cs.DiscretizedGaussian(np.full(shape, 1e6), np.ones(shape), levels, 24), shape)
    assert np.all(s == levels - 1)
    # custom range [0, 255] with unit spacing
    s = _sample(cs.DiscretizedGaussian(np.full(shape, 17.2), np.full(shape, 0.01), 256, 24,
                                       lo=0.0, hi=255.0), shape)
    assert np.all(s == 17)


def test_discretized_gaussian_probabilities():
    """Bin masses match the Gaussian between midpoints (via sampling)."""
    shape = (60000,)
    mean, stdd = 0.01, 0.02
    levels = 256
    s = _sample(cs.DiscretizedGaussian(np.full(shape, mean), np.full(shape, stdd), levels, 24),
                shape, seed=4)
    x = -1.0 + np.arange(levels) * 2.0 / 255
    edges = np.concatenate([[-np.inf], (x[:-1] + x[1:]) / 2, [np.inf]])
    p = np.diff(ndtr((edges - mean) / stdd))
    freq = np.bincount(s, minlength=levels) / shape[0]
    assert np.abs(freq - p).max() < 0.01


def test_unif_bins_layout():
    shape = (3000,)
    # mean at the centre of bin 3 of 10 bins on [0, 1]
    s = _sample(cs.DiagGaussian_UnifBins(np.full(shape, 0.35), np.full(shape, 1e-5), 0.0, 1.0, 10, 20),
                shape)
    assert np.all(s == 3)
    s = _sample(cs.DiagGaussian_UnifBins(np.full(shape, -7.0), np.ones(shape), 0.0, 1.0, 10, 20), shape)
    assert np.all(s == 0)
    s = _sample(cs.DiagGaussian_UnifBins(np.full(shape, 9.0), np.ones(shape), 0.0, 1.0, 10, 20), shape)
    assert np.all(s == 9)


# ---------------------------------------------------------------------------
# errors


def _with(arr, idx, value):
    out = np.array(arr, dtype=np.float64, copy=True)
    out[idx] = value
    return out


def test_bad_gaussian_parameters():
    shape = (2, 5)
    mean = np.zeros(shape)
    stdd = np.ones(shape)
    cases = [
        (lambda: cs.DiagGaussian_GaussianBins(mean, _with(stdd, (0, 3), np.nan), mean, stdd, 18, 10),
         r"DiagGaussian_GaussianBins: stdd contains nan at index \(0, 3\)"),
        (lambda: cs.DiagGaussian_GaussianBins(mean, stdd, _with(mean, (1, 0), np.inf), stdd, 18, 10),
         r"DiagGaussian_GaussianBins: bin_mean contains inf at index \(1, 0\)"),
        (lambda: cs.DiagGaussian_GaussianBins(mean, stdd, mean, _with(stdd, (1, 4), 0.0), 18, 10),
         r"DiagGaussian_GaussianBins: bin_stdd must be > 0, got 0.0 at index \(1, 4\)"),
        (lambda: cs.DiagGaussian_StdBins(_with(mean, (0, 0), -np.inf), stdd, 18, 10),
         r"DiagGaussian_StdBins: mean contains -inf at index \(0, 0\)"),
        (lambda: cs.DiagGaussian_StdBins(mean, _with(stdd, (1, 1), -2.0), 18, 10),
         r"DiagGaussian_StdBins: stdd must be > 0, got -2.0 at index \(1, 1\)"),
        (lambda: cs.DiagGaussian_StdBins(mean, stdd, 10, 10),
         r"DiagGaussian_StdBins: number of bins \(1024\) must be in \[1, 2\*\*prec\)"),
        (lambda: cs.DiagGaussian_StdBins(mean, stdd, 33, 10),
         r"DiagGaussian_StdBins: precision must be in \[1, 32\]"),
        (lambda: cs.DiagGaussian_UnifBins(mean, stdd, 1.0, 1.0, 10, 16),
         r"DiagGaussian_UnifBins: bin_max must be > bin_min"),
        (lambda: cs.DiagGaussian_UnifBins(mean, stdd, 0.0, np.nan, 10, 16),
         r"DiagGaussian_UnifBins: bin_max contains nan"),
        (lambda: cs.DiscretizedGaussian(_with(mean, (0, 2), np.nan), stdd, 256, 16),
         r"DiscretizedGaussian: mean contains nan at index \(0, 2\)"),
        (lambda: cs.DiscretizedGaussian(mean, stdd, 1, 16),
         r"DiscretizedGaussian: num_levels must be in"),
        (lambda: cs.DiscretizedGaussian(mean, stdd, 256, 16, lo=1.0, hi=-1.0),
         r"DiscretizedGaussian: hi \(-1.0\) must be > lo \(1.0\)"),
        (lambda: cs.DiscretizedGaussian(mean, stdd, 256, 8),
         r"DiscretizedGaussian: number of bins \(256\) must be in \[1, 2\*\*prec\)"),
    ]
    for make, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            make()


def test_bad_gaussian_symbols_leave_message_untouched():
    shape = (2, 5)
    m = cs.random_message(40, shape, 0)
    snap = snapshot(m)
    codec = cs.DiagGaussian_GaussianBins(np.zeros(shape), np.ones(shape), np.zeros(shape),
                                         np.ones(shape), 18, 10)
    bad = np.zeros(shape, np.int64)
    bad[1, 2] = 1024
    with pytest.raises(ValueError, match=r"DiagGaussian_GaussianBins: symbol 1024 out of range \[0, 1024\) at index \(1, 2\)"):
        codec.push(m, bad)
    with pytest.raises(ValueError, match="DiagGaussian_GaussianBins: symbol shape"):
        codec.push(m, np.zeros((5, 2), np.int64))
    disc = cs.DiscretizedGaussian(np.zeros(shape), np.ones(shape), 256, 16)
    with pytest.raises(ValueError, match=r"DiscretizedGaussian: symbol -3 out of range"):
        disc.push(m, np.full(shape, -3))
    wrong = cs.DiscretizedGaussian(np.zeros((3,)), np.ones((3,)), 256, 16)
    with pytest.raises(ValueError, match="DiscretizedGaussian: mean of shape"):
        wrong.push(m, np.zeros(shape, np.int64))
    assert_unchanged(m, snap)
