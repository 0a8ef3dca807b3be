"""substack, serial, repeat, parallel and BBANS."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import craystack as cs
from cs_helpers import assert_roundtrip, content_bits, flat_bits, snapshot, assert_unchanged

pytestmark = pytest.mark.filterwarnings("ignore::craystack.EmptyTailWarning")


def test_substack_touches_only_its_view():
    rng = np.random.default_rng(0)
    m = cs.random_message(1 + 2 * 24 + 10, (2, 3, 4), 1)
    codec = cs.substack(cs.Categorical(rng.random((3, 4, 6)), 12), lambda h: h[0])
    syms = [rng.integers(0, 6, (3, 4)) for _ in range(8)]
    pushed = assert_roundtrip(codec, m, syms)
    np.testing.assert_array_equal(pushed.head[1], m.head[1])
    assert not np.array_equal(pushed.head[0], m.head[0])
    # strided and fancy views
    for view in (lambda h: h[:, ::2], lambda h: h[..., [3, 0]], lambda h: h.reshape(6, 4)[1:4],
                 lambda h: h[1, 2, 3]):
        shape = np.asarray(view(np.zeros((2, 3, 4)))).shape
        c = cs.substack(cs.Uniform(9), view)
        assert_roundtrip(c, m, [rng.integers(0, 512, shape) for _ in range(3)])
    with pytest.raises(ValueError, match="substack: view_fun selects some lane more than once"):
        cs.substack(cs.Uniform(8), lambda h: h[0, [0, 0]]).push(m, np.zeros(2, np.int64))


def test_substack_errors_leave_message_untouched():
    m = cs.random_message(40, (2, 3), 0)
    snap = snapshot(m)
    codec = cs.substack(cs.Uniform(4), lambda h: h[1])
    with pytest.raises(ValueError, match="Uniform: symbol 16 out of range"):
        codec.push(m, np.array([0, 16, 0]))
    assert_unchanged(m, snap)


def test_serial_and_repeat():
    rng = np.random.default_rng(1)
    shape = (3, 2)
    codecs = [cs.Uniform(5), cs.Categorical(rng.random(shape + (4,)), 10),
              cs.DiagGaussian_StdBins(rng.normal(size=shape), np.ones(shape), 16, 8),
              cs.DiscretizedGaussian(np.zeros(shape), np.full(shape, 0.3), 256, 14)]
    ser = cs.serial(codecs)
    ranges = [32, 4, 256, 256]
    m = cs.random_message(50, shape, 2)
    syms = [rng.integers(0, r, shape) for r in ranges]
    pushed, = ser.push(m, syms)
    popped, out = ser.pop(pushed)
    assert cs.message_equal(popped, m)
    for a, b in zip(syms, out):
        np.testing.assert_array_equal(a, b)
    # same as pushing individually, last codec first
    manual = m
    for c, s in reversed(list(zip(codecs, syms))):
        manual, = c.push(manual, s)
    assert cs.message_equal(manual, pushed)
    with pytest.raises(ValueError, match="serial: expected 4 symbols, got 3"):
        ser.push(m, syms[:3])

    rep = cs.repeat(cs.Categorical(rng.random(shape + (7,)), 12), 5)
    syms = [rng.integers(0, 7, shape) for _ in range(5)]
    pushed, = rep.push(m, syms)
    popped, out = rep.pop(pushed)
    assert cs.message_equal(popped, m) and len(out) == 5
    for a, b in zip(syms, out):
        np.testing.assert_array_equal(a, b)


def test_parallel():
    rng = np.random.default_rng(2)
    m = cs.random_message(60, (2, 5), 3)
    codec = cs.parallel(
        [cs.Categorical(rng.random((5, 3)), 8),
         cs.DiagGaussian_GaussianBins(np.zeros(5), np.ones(5), np.zeros(5), np.ones(5), 16, 10)],
        [lambda h: h[0], lambda h: h[1]])
    syms = [rng.integers(0, 3, 5), rng.integers(0, 1024, 5)]
    pushed, = codec.push(m, syms)
    popped, out = codec.pop(pushed)
    assert cs.message_equal(popped, m)
    np.testing.assert_array_equal(out[0], syms[0])
    np.testing.assert_array_equal(out[1], syms[1])
    with pytest.raises(ValueError, match="parallel: need one view function per codec"):
        cs.parallel([cs.Uniform(3)], [])


# ---------------------------------------------------------------------------
# BB-ANS on a toy latent variable model: z ~ p(z) over K values,
# x | z ~ p(x | z) over D values, approximate posterior q(z | x).


def _toy_model(rng, k=4, d=6, sharp=3.0):
    pz = rng.dirichlet(np.ones(k))
    px_z = rng.dirichlet(np.ones(d) * 0.5, size=k)          # (K, D)
    joint = pz[:, None] * px_z                               # (K, D)
    post = (joint / joint.sum(0)).T                          # (D, K) exact p(z | x)
    approx = post ** 0.7 + 0.05                              # a worse q(z | x)
    approx /= approx.sum(1, keepdims=True)
    return pz, px_z, post, approx


def _bbans(pz, px_z, q, shape, prec=20):
    prior = cs.Categorical(np.broadcast_to(pz, shape + pz.shape), prec)

    def likelihood(z):
        return cs.Categorical(px_z[z], prec)

    def posterior(x):
        return cs.Categorical(q[x], prec)

    return cs.BBANS(prior, likelihood, posterior)


def _neg_elbo_bits(pz, px_z, q, x):
    """-ELBO(x) in bits for each data value in x."""
    qx = q[x]                                                # (..., K)
    log_joint = np.log2(pz)[None, :] + np.log2(px_z[:, x].T.reshape(-1, len(pz)))
    log_joint = log_joint.reshape(qx.shape)
    return -np.sum(qx * (log_joint - np.log2(qx)), axis=-1)


@pytest.mark.parametrize("exact", [True, False])
def test_bbans_roundtrip_and_rate(exact):
    rng = np.random.default_rng(5 if exact else 6)
    pz, px_z, post, approx = _toy_model(rng)
    q = post if exact else approx
    shape = (16,)
    codec = _bbans(pz, px_z, q, shape)
    m0 = cs.random_message(1 + 2 * 16 + 4000, shape, 7)   # enough initial bits
    steps = 400
    z = rng.choice(len(pz), p=pz, size=(steps,) + shape)
    xs = [np.array([rng.choice(px_z.shape[1], p=px_z[zi]) for zi in row]) for row in z]
    m = m0
    for x in xs:
        m, = codec.push(m, x)
    assert cs.empty_pops(m) == 0 and cs.low_water(m) > 0
    n = steps * shape[0]
    bits_flat = flat_bits(m) - flat_bits(m0)
    bits_exact = content_bits(m) - content_bits(m0)
    expected = float(np.sum([_neg_elbo_bits(pz, px_z, q, x) for x in xs]))
    if exact:
        # with the true posterior the net cost is -log2 p(x) for every x
        # (up to quantization at 20 bits), with no sampling noise
        assert abs(bits_exact - expected) / n < 0.005
    else:
        # sampling noise of z: a few hundredths of a bit per symbol
        assert abs(bits_exact - expected) / n < 0.05
    assert abs(bits_flat - bits_exact) <= 64 * shape[0] + 32
    neg_log_px = -float(np.sum([np.log2(pz @ px_z[:, x]) for x in xs]))
    if exact:
        assert abs(expected - neg_log_px) < 1e-6 * n
    else:
        # a worse posterior costs more than -log2 p(x): the ELBO gap
        assert bits_exact > neg_log_px + 0.05 * n
    # decode in reverse order and recover the initial message exactly
    for x in reversed(xs):
        m, out = codec.pop(m)
        np.testing.assert_array_equal(out, x)
    assert cs.message_equal(m, m0)


def test_bbans_from_empty_tail_restores_base_message():
    rng = np.random.default_rng(8)
    pz, px_z, post, approx = _toy_model(rng)
    shape = (8,)
    codec = _bbans(pz, px_z, approx, shape)
    m0 = cs.base_message(shape)
    xs = [rng.integers(0, px_z.shape[1], shape) for _ in range(30)]
    m = m0
    for x in xs:
        m, = codec.push(m, x)
    assert cs.empty_pops(m) > 0  # the first posterior pops borrowed words
    m = cs.unflatten(cs.flatten(m), shape)
    for x in reversed(xs):
        m, out = codec.pop(m)
        np.testing.assert_array_equal(out, x)
    assert cs.empty_pops(m) == 0
    assert cs.message_equal(m, m0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), k=st.integers(1, 6), d=st.integers(1, 6),
       prec=st.integers(8, 32), lanes=st.integers(1, 5))
def test_bbans_roundtrip_property(seed, k, d, prec, lanes):
    rng = np.random.default_rng(seed)
    pz, px_z, post, approx = _toy_model(rng, k, d)
    shape = (lanes,)
    codec = _bbans(pz, px_z, approx, shape, prec)
    m0 = cs.random_message(1 + 2 * lanes + int(rng.integers(0, 30)), shape, seed)
    xs = [rng.integers(0, d, shape) for _ in range(10)]
    assert_roundtrip(codec, m0, xs)
