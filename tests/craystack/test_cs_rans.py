"""Messages: construction, flat form, value semantics, empty tail, low-water mark."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import craystack as cs
from cs_helpers import assert_roundtrip, snapshot, assert_unchanged

shapes = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)


def test_base_message():
    m = cs.base_message((2, 3))
    assert m.head.shape == (2, 3) and m.head.dtype == np.uint64
    assert np.all(m.head == 1 << 32)
    assert cs.tail_length(m) == 0 and cs.empty_pops(m) == 0 and cs.low_water(m) == 0
    assert len(cs.flatten(m)) == 1 + 2 * 6
    r = cs.base_message(5, randomize=True, seed=3)
    assert r.head.shape == (5,)
    assert np.all(r.head >= np.uint64(1 << 32))
    assert cs.message_equal(r, cs.base_message(5, randomize=True, seed=3))
    assert not cs.message_equal(r, cs.base_message(5, randomize=True, seed=4))


def test_head_is_read_only():
    m = cs.base_message((3,))
    with pytest.raises(ValueError):
        m.head[0] = 5


@settings(max_examples=40, deadline=None)
@given(shape=shapes, extra=st.integers(0, 50), seed=st.integers(0, 2**32 - 1))
def test_flatten_unflatten_roundtrip(shape, extra, seed):
    n = int(np.prod(shape))
    m = cs.random_message(1 + 2 * n + extra, shape, seed)
    flat = cs.flatten(m)
    assert flat.dtype == np.uint32 and flat.ndim == 1
    assert len(flat) == 1 + 2 * n + extra
    assert cs.tail_length(m) == extra
    m2 = cs.unflatten(flat, shape)
    assert cs.message_equal(m, m2)
    np.testing.assert_array_equal(cs.flatten(m2), flat)
    # documented layout
    assert flat[0] == 0
    hi = flat[1:1 + n].astype(np.uint64)
    lo = flat[1 + n:1 + 2 * n].astype(np.uint64)
    np.testing.assert_array_equal(((hi << np.uint64(32)) | lo).reshape(shape), m.head)


def test_flatten_after_coding_roundtrip():
    rng = np.random.default_rng(0)
    codec = cs.Categorical(rng.random((4, 3, 10)), 12)
    m = cs.base_message((4, 3))
    for _ in range(30):
        m, = codec.push(m, rng.integers(0, 10, (4, 3)))
    m2 = cs.unflatten(cs.flatten(m), (4, 3))
    assert cs.message_equal(m, m2)
    # the restored message decodes the same symbols
    a, sa = codec.pop(m)
    b, sb = codec.pop(m2)
    np.testing.assert_array_equal(sa, sb)
    assert cs.message_equal(a, b)


def test_unflatten_rejects_bad_input():
    with pytest.raises(ValueError, match="too few"):
        cs.unflatten(np.zeros(4, np.uint32), (2, 2))
    bad = cs.flatten(cs.base_message((2,)))
    bad[1] = 0  # head lane below 2**32
    with pytest.raises(ValueError, match="below 2"):
        cs.unflatten(bad, (2,))
    with pytest.raises(ValueError, match="1-D"):
        cs.unflatten(np.zeros((2, 5), np.uint32), (2,))
    with pytest.raises(ValueError, match="too small"):
        cs.random_message(4, (2, 2), 0)


def test_message_equal_and_reshape_head():
    m = cs.random_message(40, (2, 6), 1)
    r = cs.reshape_head(m, (3, 4))
    assert r.head.shape == (3, 4)
    np.testing.assert_array_equal(r.head.ravel(), m.head.ravel())
    assert cs.tail_length(r) == cs.tail_length(m)
    assert not cs.message_equal(m, r)
    assert cs.message_equal(cs.reshape_head(r, (2, 6)), m)
    other = cs.random_message(40, (2, 6), 2)
    assert not cs.message_equal(m, other)
    # same head, different tails
    t1 = cs.Uniform(32).push(m, np.zeros((2, 6), np.int64))[0]
    assert cs.message_equal(t1, cs.Uniform(32).push(m, np.zeros((2, 6), np.int64))[0])


@pytest.mark.parametrize("head_value", [1 << 32, (1 << 64) - 1, (1 << 63), (1 << 32) + 1])
@pytest.mark.parametrize("prec", [1, 8, 16, 24, 31, 32])
def test_renormalization_boundary(head_value, prec):
    """Heads at the edges of [2**32, 2**64) roundtrip for all kinds of freqs."""
    shape = (6,)
    flat = np.zeros(1 + 2 * 6 + 3, np.uint32)
    flat[1:7] = head_value >> 32
    flat[7:13] = head_value & 0xFFFFFFFF
    flat[13:] = [7, 8, 9]
    m = cs.unflatten(flat, shape)
    assert np.all(m.head == np.uint64(head_value))
    M = 1 << prec
    # smallest, largest and middling frequencies
    freqs = np.array([1, M - 1 if M > 1 else 1, max(1, M // 2), 1, max(1, M // 3), M],
                     dtype=np.uint64)
    starts = np.array([M - 1, 0, 0, 0, 1 if M > 3 else 0, 0], dtype=np.uint64)
    freqs = np.minimum(freqs, np.uint64(M) - starts)
    pushed = cs.push_freqs(m, starts, freqs, prec)
    assert np.all(pushed.head >= np.uint64(1 << 32))
    cf = cs.peek(pushed, prec)
    assert np.all((cf >= starts) & (cf < starts + freqs))
    back = cs.pop_freqs(pushed, cf, starts, freqs, prec)
    assert cs.message_equal(back, m)
    # uniform coding of the extreme symbols too
    codec = cs.Uniform(prec)
    for sym in (np.zeros(shape, np.int64), np.full(shape, M - 1, np.int64)):
        assert_roundtrip(codec, m, [sym, sym])


def test_push_rejects_zero_frequency():
    m = cs.base_message((2,))
    with pytest.raises(ValueError, match="zero frequency"):
        cs.push_freqs(m, np.zeros(2, np.uint64), np.array([1, 0], np.uint64), 8)


def test_messages_are_values():
    rng = np.random.default_rng(1)
    codec = cs.Uniform(20)
    m0 = cs.random_message(30, (5,), 0)
    snap = snapshot(m0)
    a = [rng.integers(0, 1 << 20, 5) for _ in range(10)]
    b = [rng.integers(0, 1 << 20, 5) for _ in range(10)]
    ma = m0
    for s in a:
        ma, = codec.push(ma, s)
    # branch from an intermediate checkpoint, then from the root
    mid = m0
    for s in a[:4]:
        mid, = codec.push(mid, s)
    mb = mid
    for s in b:
        mb, = codec.push(mb, s)
    mc = m0
    for s in b:
        mc, = codec.push(mc, s)
    assert_unchanged(m0, snap)
    # each branch still decodes its own symbols
    x = ma
    for s in reversed(a):
        x, out = codec.pop(x)
        np.testing.assert_array_equal(out, s)
    y = mb
    for s in reversed(b):
        y, out = codec.pop(y)
        np.testing.assert_array_equal(out, s)
    y2 = y
    for s in reversed(a[:4]):
        y2, out = codec.pop(y2)
        np.testing.assert_array_equal(out, s)
    assert cs.message_equal(y2, m0) and cs.message_equal(x, m0)
    # popping twice from the same message gives the same result, then push
    # onto the popped message and check the original is intact
    p1, s1 = codec.pop(ma)
    p2, s2 = codec.pop(ma)
    assert cs.message_equal(p1, p2)
    np.testing.assert_array_equal(s1, s2)
    q, = codec.push(p1, (s1 + 1) % (1 << 20))
    p3, s3 = codec.pop(ma)
    np.testing.assert_array_equal(s3, s1)
    assert cs.message_equal(p3, p1)
    assert not cs.message_equal(q, ma)


def test_tail_length_counts_words():
    m = cs.base_message((4,))
    codec = cs.Uniform(32)
    lengths = []
    for i in range(5):
        m, = codec.push(m, np.full(4, i, np.int64))
        lengths.append(cs.tail_length(m))
        assert len(cs.flatten(m)) == 1 + 8 + cs.tail_length(m)
    # at 32-bit precision every push moves one word per lane to the tail
    assert lengths == [4, 8, 12, 16, 20]


def _warnings_of(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in rec if issubclass(w.category, cs.EmptyTailWarning)]


def test_empty_tail_pop_is_deterministic_counted_and_warns_once():
    codec = cs.Uniform(32)
    m0 = cs.base_message((3,))

    def pop_many():
        m = m0
        syms = []
        for _ in range(4):
            m, s = codec.pop(m)
            syms.append(s)
        return m, syms

    (m1, s1), w1 = _warnings_of(pop_many)
    assert len(w1) == 1
    (m2, s2), w2 = _warnings_of(pop_many)
    assert len(w2) == 1
    for a, b in zip(s1, s2):
        np.testing.assert_array_equal(a, b)
    assert cs.message_equal(m1, m2)
    # each 32-bit pop needs one word per lane: 4 pops x 3 lanes
    assert cs.empty_pops(m1) == 4 * 3
    assert cs.tail_length(m1) == 0 and cs.low_water(m1) == 0
    # the popped symbols look random (not all equal)
    assert len(np.unique(np.concatenate(s1))) > 6
    # pushing the symbols back returns the borrowed words: exact restoration
    m = m1
    for s in reversed(s1):
        m, = codec.push(m, s)
    assert cs.empty_pops(m) == 0
    assert cs.message_equal(m, m0)
    # ... also through the flat form, which records the borrow count
    flat = cs.flatten(m1)
    assert flat[0] == 12
    m3 = cs.unflatten(flat, (3,))
    assert cs.message_equal(m3, m1)
    for s in reversed(s1):
        m3, = codec.push(m3, s)
    assert cs.message_equal(m3, m0)


def test_empty_tail_mixed_with_real_words():
    codec = cs.Uniform(32)
    m0 = cs.random_message(1 + 2 * 2 + 3, (2,), 7)  # 3 real tail words
    m = m0
    syms = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cs.EmptyTailWarning)
        for _ in range(5):
            m, s = codec.pop(m)
            syms.append(s)
    assert cs.empty_pops(m) == 5 * 2 - 3
    assert cs.low_water(m) == 0
    # words that differ from the borrowed ones are stored, not given back
    from craystack.rans import _tail_push, _generator_words
    tail = m.tail
    assert tail.length == 0 and tail.borrowed == 7
    expected = _generator_words(0, 7)[::-1]     # r(6), ..., r(0)
    t_same = _tail_push(tail, expected[:3])
    assert t_same.borrowed == 4 and t_same.length == 0
    t_mixed = _tail_push(tail, np.concatenate([expected[:2], ~expected[2:3]]))
    assert t_mixed.borrowed == 5 and t_mixed.length == 1
    t_diff = _tail_push(tail, ~expected[:3])
    assert t_diff.borrowed == 7 and t_diff.length == 3
    for s in reversed(syms):
        m, = codec.push(m, s)
    assert cs.message_equal(m, m0)
    assert cs.empty_pops(m) == 0


def test_low_water_mark():
    codec = cs.Uniform(32)
    m0 = cs.random_message(1 + 2 * 4 + 40, (4,), 3)
    assert cs.low_water(m0) == 40
    m = m0
    for _ in range(3):
        m, _ = codec.pop(m)
    assert cs.tail_length(m) == 28 and cs.low_water(m) == 28
    for i in range(5):
        m, = codec.push(m, np.full(4, i, np.int64))
    assert cs.tail_length(m) == 48 and cs.low_water(m) == 28
    m = cs.reset_low_water(m)
    assert cs.low_water(m) == 48
    m, _ = codec.pop(m)
    assert cs.low_water(m) == 44
    # the old message keeps its own mark
    assert cs.low_water(m0) == 40
    assert cs.low_water(cs.reset_low_water(m0)) == 40


def test_generator_words_given_back_only_when_equal():
    codec = cs.Uniform(32)
    m0 = cs.base_message((1,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cs.EmptyTailWarning)
        m1, s1 = codec.pop(m0)   # borrows 1 word
        m2, s2 = codec.pop(m1)   # borrows another
    assert cs.empty_pops(m2) == 2
    m3, = codec.push(m2, s2)
    assert cs.empty_pops(m3) == 1 and cs.message_equal(m3, m1)


def test_many_small_pushes_and_long_tails():
    codec = cs.Uniform(32)
    m = cs.base_message((1,))
    syms = np.arange(5000, dtype=np.int64).reshape(-1, 1)
    for s in syms:
        m, = codec.push(m, s)
    assert cs.tail_length(m) == 5000
    assert len(cs.flatten(m)) == 3 + 5000
    for s in syms[::-1]:
        m, out = codec.pop(m)
        np.testing.assert_array_equal(out, s)
    assert cs.message_equal(m, cs.base_message((1,)))


def _xor_key(q: np.ndarray) -> np.ndarray:
    """A cheap, deliberately structured key: the rotation must only be a function of q."""
    return (q * np.uint64(0x9E3779B1)) ^ (q >> np.uint64(7))


@settings(max_examples=40, deadline=None)
@given(prec=st.integers(1, 31), seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 12))
def test_keyed_slots_roundtrip_and_keep_state_sizes(prec, seed, steps):
    """Rotated slots decode exactly, and each keyed push gives a state of the same size as a plain
    push from the same message: the rotation permutes slots inside one quotient, so only the low
    prec bits of the head differ."""
    rng = np.random.default_rng(seed)
    shape = (7,)
    start = cs.random_message(4 * 7, shape, seed=seed)
    keyed, pushed = start, []
    total = 1 << prec
    for _ in range(steps):
        freqs = rng.integers(1, total + 1, shape).astype(np.uint64)
        starts = (rng.integers(0, total, shape).astype(np.uint64) % (total - freqs + 1)).astype(np.uint64)
        plain = cs.push_freqs(keyed, starts, freqs, prec)
        keyed = cs.push_freqs(keyed, starts, freqs, prec, slot_key=_xor_key)
        pushed.append((starts, freqs))
        np.testing.assert_array_equal(keyed.head >> np.uint64(prec), plain.head >> np.uint64(prec))
        assert cs.tail_length(keyed) == cs.tail_length(plain)
    for starts, freqs in reversed(pushed):
        cf = cs.peek_keyed(keyed, prec, _xor_key)
        assert np.all((cf >= starts) & (cf < starts + freqs))
        keyed = cs.pop_freqs(keyed, cf, starts, freqs, prec)
    assert cs.message_equal(keyed, start)


def test_keyed_peek_scrambles_the_pushed_quantile():
    """After pushes of the same low interval, plain peeks sit in it; keyed peeks spread out."""
    prec = 16
    message = cs.random_message(64 * 4000, (4000,), seed=1)
    starts = np.zeros(4000, dtype=np.uint64)
    freqs = np.full(4000, 16, dtype=np.uint64)
    key = lambda q: (q * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)  # noqa: E731
    keyed = cs.push_freqs(message, starts, freqs, prec, slot_key=key)
    plain = cs.push_freqs(message, starts, freqs, prec)
    assert cs.peek(plain, prec).max() < 16
    assert np.all(cs.peek_keyed(keyed, prec, key) < 16)
    spread = np.histogram(cs.peek(keyed, prec), bins=8, range=(0, 1 << prec))[0] / 4000
    assert np.abs(spread - 1 / 8).max() < 0.03, spread
