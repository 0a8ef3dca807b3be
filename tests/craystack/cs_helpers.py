"""Shared helpers for the craystack tests (not a test module)."""

import numpy as np

import craystack as cs


def push_all(codec, message, symbols):
    for s in symbols:
        message, = codec.push(message, s)
    return message


def pop_n(codec, message, n):
    out = []
    for _ in range(n):
        message, s = codec.pop(message)
        out.append(s)
    return message, out[::-1]


def assert_roundtrip(codec, message, symbols):
    """Push ``symbols`` in order, pop them back, check message and symbols."""
    pushed = push_all(codec, message, symbols)
    popped, out = pop_n(codec, pushed, len(symbols))
    for a, b in zip(symbols, out):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    assert cs.message_equal(popped, message)
    return pushed


def flat_bits(message):
    return 32 * len(cs.flatten(message))


def content_bits(message):
    """Information content log2(state) of a message (tail words + heads)."""
    head = message.head.astype(np.float64)
    return 32.0 * cs.tail_length(message) + float(np.sum(np.log2(head)))


def snapshot(message):
    return cs.flatten(message).copy(), message.head.copy()


def assert_unchanged(message, snap):
    flat, head = snap
    np.testing.assert_array_equal(cs.flatten(message), flat)
    np.testing.assert_array_equal(message.head, head)
