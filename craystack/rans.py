"""Vectorized rANS messages and the push/pop primitives.

A message is a pair ``(head, tail)``:

* ``head`` is a read-only ``uint64`` array.  Each element is one independent
  ANS lane whose state always lies in ``[2**32, 2**64)``.
* ``tail`` is a :class:`Tail`, an immutable stack of ``uint32`` words shared by
  all lanes.  When a lane's state grows too large its low 32 bits are moved to
  the tail, and when it shrinks below ``2**32`` a word is moved back.

Messages are values.  Every operation returns a new message and leaves its
argument untouched, so callers may keep old messages around (for checkpoints,
for retrying, ...).  The tail is a persistent singly linked list of read-only
word chunks, so pushing onto an old message never disturbs newer ones and
popping never copies more than the words that are popped.

Below the bottom of every tail sits a conceptually infinite stack of
pseudo-random words ``r(0), r(1), r(2), ...`` (``r(0)`` closest to the real
bottom), produced by a counter-based generator with a fixed seed.  Popping
from an empty tail therefore never fails: it *borrows* generator words.  The
number of borrowed words is part of the message (:func:`empty_pops`).  If
exactly those words are pushed back later (as happens when a bits-back decoder
undoes the first posterior pop) the borrow count goes back down, so decoding
restores the original message exactly.  The first borrow in a line of
messages emits one :class:`EmptyTailWarning`.

Flat layout (see :func:`flatten`), all ``uint32`` words::

    [ borrowed ]                       1 word: number of borrowed generator words
    [ head >> 32, C order ]            n words (n = head.size)
    [ head & 0xffffffff, C order ]     n words
    [ tail, bottom ... top ]           tail_length(message) words

so ``32 * len(flatten(m))`` is the size of the message in bits and
``unflatten(flatten(m), m.head.shape)`` gives back an equal message.
"""

from __future__ import annotations

import warnings
from typing import Callable, NamedTuple, Optional, Tuple

import numpy as np

__all__ = [
    "Message",
    "Tail",
    "EmptyTailWarning",
    "HEAD_MIN",
    "base_message",
    "random_message",
    "flatten",
    "unflatten",
    "message_equal",
    "reshape_head",
    "tail_length",
    "low_water",
    "reset_low_water",
    "empty_pops",
    "push_freqs",
    "peek",
    "peek_keyed",
    "pop_freqs",
    "SlotKey",
    "check_prec",
]

_U64 = np.uint64
_WORD_BITS = _U64(32)
_WORD_MASK = _U64(0xFFFFFFFF)
HEAD_MIN = 1 << 32  #: smallest legal head value
_HEAD_MIN_U = _U64(HEAD_MIN)

# chunks shorter than this are merged with the new words on push, which keeps
# the linked list short when codecs touch only a few lanes at a time
_MERGE_BELOW = 512

# seed of the generator that supplies words below the bottom of the tail
_EMPTY_TAIL_SEED = 0x5EED_BB_A45


class EmptyTailWarning(RuntimeWarning):
    """Issued the first time a line of messages pops past the bottom of its tail."""


class _Chunk:
    """One node of the tail's linked list: a read-only block of words."""

    __slots__ = ("words", "below")

    def __init__(self, words: np.ndarray, below: Optional["_Chunk"]):
        self.words = words
        self.below = below


class Tail:
    """Immutable stack of ``uint32`` words plus bookkeeping.

    Attributes (read-only by convention):
      ``length``     number of real words on the stack,
      ``low_water``  smallest ``length`` reached since the mark was last reset,
      ``borrowed``   number of generator words currently borrowed,
      ``warned``     whether this line of messages already warned about it.
    """

    __slots__ = ("_top", "length", "low_water", "borrowed", "warned")

    def __init__(self, top, length, low_water, borrowed, warned):
        self._top = top
        self.length = int(length)
        self.low_water = int(low_water)
        self.borrowed = int(borrowed)
        self.warned = bool(warned)

    def __repr__(self):
        return (f"Tail(length={self.length}, low_water={self.low_water}, "
                f"borrowed={self.borrowed})")

    # -- internal helpers ---------------------------------------------------

    def _words(self) -> np.ndarray:
        """All real words, bottom to top (a fresh array)."""
        parts = []
        node = self._top
        while node is not None:
            parts.append(node.words)
            node = node.below
        if not parts:
            return np.zeros(0, dtype=np.uint32)
        parts.reverse()
        return np.concatenate(parts)


class Message(NamedTuple):
    """An ANS message: ``head`` (uint64 array) and ``tail`` (:class:`Tail`)."""

    head: np.ndarray
    tail: Tail

    def __repr__(self):
        return f"Message(head shape={self.head.shape}, {self.tail!r})"


# ---------------------------------------------------------------------------
# pseudo-random words below the bottom of the tail


def _generator_words(start: int, count: int) -> np.ndarray:
    """Words r(start), ..., r(start + count - 1) (splitmix64, high halves)."""
    z = np.arange(start, start + count, dtype=np.uint64)
    z = (z + _U64(1)) * _U64(0x9E3779B97F4A7C15) + _U64(_EMPTY_TAIL_SEED)
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    z = z ^ (z >> _U64(31))
    return (z >> _WORD_BITS).astype(np.uint32)


def _readonly(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    a.flags.writeable = False
    return a


# ---------------------------------------------------------------------------
# tail operations (pure)


def _tail_push(tail: Tail, words: np.ndarray) -> Tail:
    """Push ``words`` (bottom to top order) and return the new tail."""
    n = words.size
    if n == 0:
        return tail
    borrowed = tail.borrowed
    if tail.length == 0 and borrowed > 0:
        # words equal to the most recently borrowed generator words go back
        # to the generator instead of onto the stack
        m = min(n, borrowed)
        expected = _generator_words(borrowed - m, m)[::-1]
        mismatch = np.flatnonzero(words[:m] != expected)
        j = int(mismatch[0]) if mismatch.size else m
        borrowed -= j
        words = words[j:]
        n = words.size
        if n == 0:
            return Tail(None, 0, tail.low_water, borrowed, tail.warned)
    top = tail._top
    if top is not None and top.words.size < _MERGE_BELOW:
        words = np.concatenate([top.words, words])
        top = top.below
    else:
        words = np.array(words, dtype=np.uint32, copy=True)
    node = _Chunk(_readonly(words), top)
    return Tail(node, tail.length + n, tail.low_water, borrowed, tail.warned)


def _tail_pop(tail: Tail, n: int) -> Tuple[Tail, np.ndarray]:
    """Pop ``n`` words; return the new tail and the words bottom to top."""
    if n == 0:
        return tail, np.zeros(0, dtype=np.uint32)
    parts = []
    need = n
    node = tail._top
    while need > 0 and node is not None:
        w = node.words
        if w.size > need:
            parts.append(w[w.size - need:])
            node = _Chunk(w[:w.size - need], node.below)
            need = 0
        else:
            parts.append(w)
            need -= w.size
            node = node.below
    borrowed = tail.borrowed
    warned = tail.warned
    if need > 0:
        parts.append(_generator_words(borrowed, need)[::-1])
        if not warned:
            warnings.warn(
                "craystack: popped past the bottom of the message tail; "
                "pseudo-random words are being borrowed (see empty_pops). "
                "Further borrows by this message are not reported.",
                EmptyTailWarning, stacklevel=4)
            warned = True
        borrowed += need
    parts.reverse()
    words = parts[0] if len(parts) == 1 else np.concatenate(parts)
    length = tail.length - (n - need)
    return Tail(node, length, min(tail.low_water, length), borrowed, warned), words


# ---------------------------------------------------------------------------
# message construction and inspection


def _empty_tail() -> Tail:
    return Tail(None, 0, 0, 0, False)


def _shape_tuple(shape) -> Tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def base_message(shape, randomize: bool = False, seed: int = 0) -> Message:
    """A message with an empty tail.

    With ``randomize=False`` every lane holds ``2**32`` (the smallest state);
    with ``randomize=True`` lanes are drawn uniformly from ``[2**32, 2**64)``
    using ``numpy.random.default_rng(seed)``.
    """
    shape = _shape_tuple(shape)
    if randomize:
        rng = np.random.default_rng(seed)
        hi = rng.integers(1, 1 << 32, size=shape, dtype=np.uint64)
        lo = rng.integers(0, 1 << 32, size=shape, dtype=np.uint64)
        head = (hi << _WORD_BITS) | lo
    else:
        head = np.full(shape, HEAD_MIN, dtype=np.uint64)
    return Message(_readonly(head), _empty_tail())


def random_message(flat_len: int, shape, seed: int = 0) -> Message:
    """A random message whose flat form has exactly ``flat_len`` words.

    The head is uniform on ``[2**32, 2**64)`` and the tail holds
    ``flat_len - 1 - 2 * prod(shape)`` uniform random words.
    """
    shape = _shape_tuple(shape)
    n = int(np.prod(shape, dtype=np.int64))
    n_tail = int(flat_len) - 1 - 2 * n
    if n_tail < 0:
        raise ValueError(
            f"random_message: flat_len={flat_len} is too small for head shape "
            f"{shape} (need at least {1 + 2 * n})")
    rng = np.random.default_rng(seed)
    arr = np.empty(int(flat_len), dtype=np.uint32)
    arr[0] = 0
    arr[1:1 + n] = rng.integers(1, 1 << 32, size=n, dtype=np.uint64)
    arr[1 + n:] = rng.integers(0, 1 << 32, size=n + n_tail, dtype=np.uint64)
    return unflatten(arr, shape)


def flatten(message: Message) -> np.ndarray:
    """The message as a 1-D ``uint32`` array (layout in the module docstring)."""
    head, tail = message
    if tail.borrowed >= 1 << 32:
        raise ValueError("flatten: more than 2**32 - 1 borrowed words")
    flat_head = np.ravel(head)
    parts = [
        np.array([tail.borrowed], dtype=np.uint32),
        (flat_head >> _WORD_BITS).astype(np.uint32),
        (flat_head & _WORD_MASK).astype(np.uint32),
    ]
    node = tail._top
    tail_parts = []
    while node is not None:
        tail_parts.append(node.words)
        node = node.below
    tail_parts.reverse()
    return np.concatenate(parts + tail_parts)


def unflatten(arr, shape) -> Message:
    """Inverse of :func:`flatten` for a head of the given ``shape``."""
    shape = _shape_tuple(shape)
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise ValueError(f"unflatten: expected a 1-D array, got shape {arr.shape}")
    if arr.dtype != np.uint32:
        if not np.issubdtype(arr.dtype, np.integer) or (
                arr.size and (arr.min() < 0 or arr.max() > 0xFFFFFFFF)):
            raise ValueError("unflatten: array must hold uint32 words")
        arr = arr.astype(np.uint32)
    n = int(np.prod(shape, dtype=np.int64))
    if arr.size < 1 + 2 * n:
        raise ValueError(
            f"unflatten: {arr.size} words are too few for head shape {shape}")
    hi = arr[1:1 + n].astype(np.uint64)
    lo = arr[1 + n:1 + 2 * n].astype(np.uint64)
    if n and hi.min() == 0:
        raise ValueError("unflatten: invalid message (a head lane is below 2**32)")
    head = ((hi << _WORD_BITS) | lo).reshape(shape)
    words = arr[1 + 2 * n:]
    borrowed = int(arr[0])
    tail = _tail_push(Tail(None, 0, 0, 0, borrowed > 0), words)
    tail = Tail(tail._top, tail.length, tail.length, borrowed, borrowed > 0)
    return Message(_readonly(head), tail)


def message_equal(m1: Message, m2: Message) -> bool:
    """True iff the two messages have equal heads, tails and borrow counts."""
    h1, t1 = m1
    h2, t2 = m2
    if h1.shape != h2.shape or not np.array_equal(h1, h2):
        return False
    if t1.length != t2.length or t1.borrowed != t2.borrowed:
        return False
    if t1._top is t2._top:
        return True
    return bool(np.array_equal(t1._words(), t2._words()))


def reshape_head(message: Message, shape) -> Message:
    """The same message with its head reshaped (C order); the tail is shared."""
    head, tail = message
    return Message(_readonly(np.reshape(head, _shape_tuple(shape))), tail)


def tail_length(message: Message) -> int:
    """Number of real ``uint32`` words in the tail (O(1))."""
    return message.tail.length


def low_water(message: Message) -> int:
    """Smallest tail length reached since creation or :func:`reset_low_water`."""
    return message.tail.low_water


def reset_low_water(message: Message) -> Message:
    """The same message with its low-water mark set to the current tail length."""
    head, tail = message
    return Message(head, Tail(tail._top, tail.length, tail.length,
                              tail.borrowed, tail.warned))


def empty_pops(message: Message) -> int:
    """Number of words drawn from the empty-tail generator and not given back.

    Pops past the bottom of the tail draw words from the generator; pushing
    the very same words back onto an empty tail returns them (as a
    bits-back decoder does), which lowers the count again.  The count is
    stored in the flat form, and ``32 * empty_pops(m)`` bits is the part of
    the message size that paid for bits which came from the generator
    rather than from real data (the "initial bits" cost of bits-back).
    """
    return message.tail.borrowed


def _with_head(message: Message, head: np.ndarray) -> Message:
    return Message(_readonly(head), message.tail)


# ---------------------------------------------------------------------------
# rANS primitives


def check_prec(prec, who: str) -> int:
    """Validate a coding precision (an int in [1, 32]) and return it."""
    if isinstance(prec, bool) or not isinstance(prec, (int, np.integer)):
        raise ValueError(f"{who}: precision must be an int, got {prec!r}")
    prec = int(prec)
    if not 1 <= prec <= 32:
        raise ValueError(f"{who}: precision must be in [1, 32], got {prec}")
    return prec


SlotKey = Callable[[np.ndarray], np.ndarray]
"""Maps the quotients ``head >> prec`` of all lanes (flat ``uint64``) to one
offset per lane; see :func:`push_freqs`."""


def push_freqs(message: Message, starts: np.ndarray, freqs: np.ndarray,
               prec: int, slot_key: Optional[SlotKey] = None) -> Message:
    """Encode intervals ``[start, start + freq)`` out of ``2**prec`` per lane.

    ``starts`` and ``freqs`` are ``uint64`` arrays with the head's shape;
    ``freqs`` must be >= 1 and ``starts + freqs <= 2**prec``.

    With ``slot_key`` the ``2**prec`` slots are rotated by ``slot_key(q)``
    (mod ``2**prec``), where ``q`` is the lane's new ``head >> prec``: any
    permutation of slots is a valid rANS code with the same state sizes, and
    this one makes the low bits of the head a keyed scramble of the interval
    just pushed. Pop such a symbol with the cfs of :func:`peek_keyed`.
    """
    head, tail = message
    starts = np.asarray(starts, dtype=np.uint64)
    freqs = np.asarray(freqs, dtype=np.uint64)
    if freqs.shape != head.shape or starts.shape != head.shape:
        raise ValueError(
            f"push: starts/freqs shapes {starts.shape}/{freqs.shape} do not "
            f"match the head shape {head.shape}")
    if freqs.size and freqs.min() == 0:
        raise ValueError("push: zero frequency (symbol has probability 0)")
    # (written with in-place operations: fresh temporaries of this size cost
    # page faults that dominate the arithmetic)
    shape = head.shape
    x = head.reshape(-1)
    starts = starts.reshape(-1)
    freqs = freqs.reshape(-1)
    overflow = x >> _U64(64 - prec)
    overflow = np.greater_equal(overflow, freqs)
    if overflow.any():
        tail = _tail_push(tail, x[overflow].astype(np.uint32))  # low 32 bits
        x = x.copy()
        np.right_shift(x, _WORD_BITS, out=x, where=overflow)
    q = x // freqs  # (np.divmod on uint64 is several times slower)
    r = q * freqs
    np.subtract(x, r, out=r)
    r += starts
    if slot_key is not None:
        r += np.asarray(slot_key(q), dtype=np.uint64).reshape(-1)
        r &= _U64((1 << prec) - 1)
    q <<= _U64(prec)
    q += r
    return Message(_readonly(q.reshape(shape)), tail)


def peek(message: Message, prec: int) -> np.ndarray:
    """The cumulative frequency ``head mod 2**prec`` of every lane (uint64)."""
    return np.asarray(message.head & _U64((1 << prec) - 1))


def peek_keyed(message: Message, prec: int, slot_key: SlotKey) -> np.ndarray:
    """The cfs of a message whose top symbol was pushed with ``slot_key``
    (see :func:`push_freqs`): the peeked slot rotated back. Pass them to
    :func:`pop_freqs` as usual. Popping from any message this way is a valid
    pop too (the decoder pushes back with the same key), which is how a
    sampler draws with bits that are not the quantile of the last push."""
    head = message.head
    offsets = np.asarray(slot_key((head >> _U64(prec)).reshape(-1)), dtype=np.uint64).reshape(head.shape)
    mask = _U64((1 << prec) - 1)
    return ((head & mask) + (mask + _U64(1) - (offsets & mask))) & mask


def pop_freqs(message: Message, cfs: np.ndarray, starts: np.ndarray,
              freqs: np.ndarray, prec: int) -> Message:
    """Undo :func:`push_freqs`, given the ``cfs`` from :func:`peek` and the
    interval ``[start, start + freq)`` that contains them."""
    head, tail = message
    shape = head.shape
    starts = np.asarray(starts, dtype=np.uint64).reshape(-1)
    freqs = np.asarray(freqs, dtype=np.uint64).reshape(-1)
    cfs = np.asarray(cfs, dtype=np.uint64).reshape(-1)
    x = head.reshape(-1) >> _U64(prec)
    x *= freqs
    x += cfs
    x -= starts
    underflow = x < _HEAD_MIN_U
    n = int(np.count_nonzero(underflow))
    if n:
        tail, words = _tail_pop(tail, n)
        x[underflow] = (x[underflow] << _WORD_BITS) | words.astype(np.uint64)
    return Message(_readonly(x.reshape(shape)), tail)
