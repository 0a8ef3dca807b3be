"""Uniform, Categorical and NonUniform codecs: roundtrips, edge cases, errors."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import craystack as cs
from cs_helpers import assert_roundtrip, snapshot, assert_unchanged

# popping from the empty tail of a base message is part of what is tested here
pytestmark = pytest.mark.filterwarnings("ignore::craystack.EmptyTailWarning")

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


def _message(shape, kind, seed):
    n = int(np.prod(shape))
    if kind == "base":
        return cs.base_message(shape)
    if kind == "random_head":
        return cs.base_message(shape, randomize=True, seed=seed)
    return cs.random_message(1 + 2 * n + 20, shape, seed)


message_kinds = st.sampled_from(["base", "random_head", "random"])


@settings(max_examples=40, deadline=None)
@given(shape=shapes, prec=st.integers(1, 32), kind=message_kinds,
       seed=st.integers(0, 2**31))
def test_uniform_roundtrip(shape, prec, kind, seed):
    rng = np.random.default_rng(seed)
    m = _message(shape, kind, seed)
    syms = [rng.integers(0, 1 << prec, shape) for _ in range(6)]
    syms.append(np.full(shape, (1 << prec) - 1))
    syms.append(np.zeros(shape, np.int64))
    assert_roundtrip(cs.Uniform(prec), m, syms)


def _weights(rng, kind, shape, n):
    if kind == "dirichlet":
        return rng.dirichlet(np.ones(n), size=shape)
    if kind == "sparse":
        w = rng.random(shape + (n,))
        w[rng.random(shape + (n,)) < 0.7] = 0.0
        w[..., rng.integers(n)] = 1.0
        return w
    if kind == "underflow":
        w = np.full(shape + (n,), 1e-320)
        w[..., 0] = 1.0
        return w
    if kind == "tiny":
        return rng.random(shape + (n,)) * 1e-300 + 5e-324
    if kind == "huge":
        return rng.random(shape + (n,)) * 1e308
    if kind == "onehot":
        w = np.zeros(shape + (n,))
        w[..., n - 1] = 3.0
        return w
    if kind == "float32":
        return rng.random(shape + (n,)).astype(np.float32)
    return rng.integers(0, 5, shape + (n,)) + np.eye(n, dtype=np.int64)[0]  # ints


weight_kinds = st.sampled_from(
    ["dirichlet", "sparse", "underflow", "tiny", "huge", "onehot", "float32", "ints"])


@settings(max_examples=60, deadline=None)
@given(shape=shapes, n=st.integers(1, 40), extra_prec=st.integers(0, 26),
       wkind=weight_kinds, kind=message_kinds, seed=st.integers(0, 2**31))
def test_categorical_roundtrip(shape, n, extra_prec, wkind, kind, seed):
    rng = np.random.default_rng(seed)
    prec = min(32, int(np.floor(np.log2(n))) + 1 + extra_prec)
    assert n < 1 << prec
    probs = _weights(rng, wkind, shape, n)
    codec = cs.Categorical(probs, prec)
    m = _message(shape, kind, seed)
    syms = [rng.integers(0, n, shape) for _ in range(5)]
    syms += [np.zeros(shape, np.int64), np.full(shape, n - 1)]
    assert_roundtrip(codec, m, syms)
    # pop-first direction: decode random bits, then re-encode them
    popped, s = codec.pop(m)
    assert s.shape == shape and np.all((s >= 0) & (s < n))
    again, = codec.push(popped, s)
    assert cs.message_equal(again, m)


def test_categorical_every_symbol_codable_at_extremes():
    """All symbols get frequency >= 1, also when the model gives them ~0."""
    for prec, n in [(8, 255), (9, 256), (16, 1000), (32, 3)]:
        w = np.zeros(n)
        w[0] = 1.0
        w[1:] = 1e-320
        codec = cs.Categorical(w, prec)  # shared by all lanes (broadcast)
        m = cs.random_message(1 + 2 * n + 5, (n,), 1)
        assert_roundtrip(codec, m, [np.arange(n), np.arange(n)[::-1].copy()])


def test_categorical_broadcasting_and_sampling():
    probs = np.array([0.1, 0.2, 0.7])
    codec = cs.Categorical(probs, 16)
    shape = (20000,)
    m = cs.random_message(1 + 2 * shape[0] + 10, shape, 5)
    _, s = codec.pop(m)  # decoding random bits samples from the model
    freq = np.bincount(s, minlength=3) / shape[0]
    np.testing.assert_allclose(freq, probs, atol=0.015)
    # per-row distributions broadcast over a leading axis
    rows = np.array([[1.0, 0, 0], [0, 0, 1.0]])[:, None, :]
    codec2 = cs.Categorical(rows, 12)
    m2 = cs.random_message(1 + 2 * 10 + 10, (2, 5), 5)
    _, s2 = codec2.pop(m2)
    assert np.all(s2[0] == 0) and np.all(s2[1] == 2)
    assert_roundtrip(codec2, m2, [np.array([[0] * 5, [2] * 5]), np.array([[1] * 5, [0] * 5])])


def test_categorical_quantization_formula():
    """Intervals follow C(i) = floor(F(i) * (2**prec - n)) + i."""
    probs = np.array([0.5, 0.0, 0.25, 0.25])
    prec = 8
    codec = cs.Categorical(probs, prec)
    k = (1 << prec) - 4
    cdf = np.concatenate([[0.0], np.cumsum(probs)[:-1], [1.0]])
    c = np.floor(cdf * k).astype(np.int64) + np.arange(5)
    c[-1] = 1 << prec
    # with head 2**32 and prec < 32, a push leaves (2**32 // f) * 2**prec + 2**32 % f + start
    for sym in range(4):
        start, freq = c[sym], c[sym + 1] - c[sym]
        m, = codec.push(cs.base_message((1,)), np.array([sym]))
        x = 1 << 32
        assert int(m.head[0]) == (x // freq) * (1 << prec) + x % freq + start


def test_nonuniform_roundtrip():
    # a 4-symbol distribution with frequencies 1, 2, 3, 10 out of 16
    c = np.array([0, 1, 3, 6, 16], dtype=np.uint64)

    def enc(s):
        return c[s], c[s + 1] - c[s]

    def dec(cf):
        return np.searchsorted(c, cf, side="right") - 1

    codec = cs.NonUniform(enc, dec, 4)
    rng = np.random.default_rng(0)
    m = cs.random_message(40, (3, 4), 0)
    assert_roundtrip(codec, m, [rng.integers(0, 4, (3, 4)) for _ in range(20)])


@pytest.mark.parametrize("bad, pattern", [
    (np.array([[0.5, np.nan], [0.5, 0.5]]), r"Categorical: probs contains nan at index \(0, 1\)"),
    (np.array([[0.5, 0.5], [np.inf, 0.5]]), r"Categorical: probs contains inf at index \(1, 0\)"),
    (np.array([[0.5, 0.5], [-0.1, 0.5]]), r"Categorical: probs must be >= 0.*\(1, 0\)"),
    (np.array([[0.5, 0.5], [0.0, 0.0]]), r"Categorical: probs are all zero at lane index \(1,\)"),
])
def test_categorical_bad_probs(bad, pattern):
    with pytest.raises(ValueError, match=pattern):
        cs.Categorical(bad, 8)


def test_bad_precision_and_sizes():
    with pytest.raises(ValueError, match="Uniform: precision"):
        cs.Uniform(33)
    with pytest.raises(ValueError, match="Uniform: precision"):
        cs.Uniform(0)
    with pytest.raises(ValueError, match=r"Categorical: number of symbols \(256\)"):
        cs.Categorical(np.ones(256), 8)
    with pytest.raises(ValueError, match="NonUniform: precision"):
        cs.NonUniform(lambda s: s, lambda c: c, 40)


def test_bad_symbols_leave_message_untouched():
    rng = np.random.default_rng(0)
    m = cs.random_message(40, (2, 3), 0)
    snap = snapshot(m)
    cat = cs.Categorical(rng.random((2, 3, 5)), 10)
    with pytest.raises(ValueError, match=r"Categorical: symbol 5 out of range \[0, 5\) at index \(1, 2\)"):
        cat.push(m, np.array([[0, 1, 2], [3, 4, 5]]))
    with pytest.raises(ValueError, match=r"Categorical: symbol -1 out of range"):
        cat.push(m, np.array([[0, -1, 2], [3, 4, 0]]))
    with pytest.raises(ValueError, match="Categorical: symbol shape"):
        cat.push(m, np.zeros((3, 2), np.int64))
    with pytest.raises(ValueError, match="Categorical: symbol nan is not an integer"):
        cat.push(m, np.array([[0, 1, 2], [3, np.nan, 1]]))
    with pytest.raises(ValueError, match=r"Uniform: symbol 256 out of range \[0, 256\)"):
        cs.Uniform(8).push(m, np.full((2, 3), 256))
    with pytest.raises(ValueError, match="Categorical: probs of shape"):
        cs.Categorical(rng.random((4, 5)), 10).push(m, np.zeros((2, 3), np.int64))
    assert_unchanged(m, snap)
    # integral floats are accepted
    m2, = cat.push(m, np.array([[0.0, 1, 2], [3, 4, 0]]))
    assert cs.tail_length(m2) >= 0
    assert_unchanged(m, snap)


# ---------------------------------------------------------------------------
# the generic quantized-CDF codec, with and without (good or bad) guesses


def _logistic_codec(n, prec, guess_kind):
    from scipy.special import expit
    loc = np.linspace(-3, 3, 7)
    scale = np.array([0.5, 1.0, 2.0, 1e-6, 30.0, 1.0, 0.1])

    def lane_params(shape):
        return tuple(np.broadcast_to(a, shape).reshape(-1) for a in (loc, scale))

    def cdf(idx, params):
        mu, s = params
        return expit(((idx - n / 2) * 0.1 - mu) / s)

    guesses = {
        None: None,
        "good": lambda u, params: n / 2 + 10 * (params[0] + params[1] * np.log(u / (1 - u))),
        "zero": lambda u, params: np.zeros_like(u),
        "top": lambda u, params: np.full_like(u, 1e30),
        "nan": lambda u, params: np.full_like(u, np.nan),
        "random": lambda u, params: np.random.default_rng(0).uniform(-5, n + 5, u.shape),
    }
    return cs.quantized_cdf_codec("Logistic", n, prec, lane_params, cdf,
                                  guesses[guess_kind])


@pytest.mark.parametrize("guess_kind", [None, "good", "zero", "top", "nan", "random"])
@pytest.mark.parametrize("n, prec", [(1, 4), (2, 2), (100, 8), (100, 24), (5000, 32)])
def test_quantized_cdf_codec_any_guess_is_exact(guess_kind, n, prec):
    codec = _logistic_codec(n, prec, guess_kind)
    rng = np.random.default_rng(n + prec)
    m = cs.random_message(40, (7,), 1)
    syms = [rng.integers(0, n, 7) for _ in range(4)] + [np.zeros(7, np.int64), np.full(7, n - 1)]
    assert_roundtrip(codec, m, syms)
    popped, s = codec.pop(m)
    assert cs.message_equal(codec.push(popped, s)[0], m)


def test_quantized_cdf_codec_rejects_bad_cdf():
    decreasing = cs.quantized_cdf_codec("Bad", 4, 8, lambda shape: (),
                                        lambda idx, params: 1.0 - idx / 4.0)
    with pytest.raises(ValueError, match="Bad: quantized CDF is not increasing"):
        decreasing.push(cs.base_message((3,)), np.array([0, 1, 2]))
    nan_cdf = cs.quantized_cdf_codec("Bad", 4, 8, lambda shape: (),
                                     lambda idx, params: np.full(idx.shape, np.nan))
    with pytest.raises(ValueError, match="Bad: internal error"):
        nan_cdf.push(cs.base_message((3,)), np.array([0, 1, 2]))
