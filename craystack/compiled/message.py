"""A message as mutable buffers for compiled code, and the rANS renormalisation on them.

`CompiledMessage` holds the same information as a `craystack.Message` (see craystack.rans):
the head lanes as one writable uint64 array, the top of the shared tail in a growable uint32
buffer (``buf[:top]``, bottom to top), the words below it still in the message's own read-only
chunks (never copied unless popped), and the counters in ``meta``. It is built once per batch
from a Message and turned back into one at the end, so messages keep their format, their
persistence (the old message is never touched) and every function that reads them.

The renormalisation here reproduces craystack.rans word for word: a push moves the low 32 bits
of each overflowing lane to the tail in lane order (`push_flagged`); a pop gives the popped
words, bottom to top, to the underflowing lanes in lane order (`pop_flagged`); below an empty
tail lie the generator words r(0), r(1), ... (craystack.rans._generator_words), which a pop
borrows and a push onto an empty tail gives back when its first words equal the most recently
borrowed ones. These scans are sequential (the order of the words is the format) and cheap;
the per-lane work that decides which lanes overflow runs in parallel in the callers.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import rans
from .kernels import compiled

__all__ = ["CompiledMessage", "push_flagged", "pop_flagged", "settle_push", "settle_pop", "tail_word",
           "generator_word", "push_renorm", "push_state",
           "pop_state", "mix32", "HEAD_MIN", "TOP", "BASE", "BORROWED", "LOW", "WARNED", "NEW_WARNING", "ERROR",
           "ERROR_PREFETCH"]

# meta fields
TOP, BASE, BORROWED, LOW, WARNED, NEW_WARNING, ERROR = range(7)
ERROR_PREFETCH = 1  # a pop reached below the words fetched into the buffer (a bug here, never data)

_U1 = np.uint64(1)
_U27 = np.uint64(27)
_U30 = np.uint64(30)
_U31 = np.uint64(31)
_U32 = np.uint64(32)
_LOW32 = np.uint64(0xFFFFFFFF)
HEAD_MIN = np.uint64(rans.HEAD_MIN)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SEED = np.uint64(rans._EMPTY_TAIL_SEED)


@compiled(inline="always")
def mix32(z: np.uint64) -> np.uint64:
    """The splitmix64 finalizer's high 32 bits (shared by the generator and keyed slots)."""
    z = (z ^ (z >> _U30)) * _MIX1
    z = (z ^ (z >> _U27)) * _MIX2
    z = z ^ (z >> _U31)
    return z >> _U32


@compiled
def generator_word(j: np.uint64) -> np.uint64:
    """r(j), the j-th word below the bottom of every tail (craystack.rans._generator_words)."""
    return mix32((j + _U1) * _GOLDEN + _SEED)


@compiled(inline="always")
def push_renorm(x, freq, prec):
    """A lane's renormalisation before pushing a symbol of frequency `freq` out of 2**prec:
    (state, overflowed, the low word to move to the tail if it did)."""
    over = (x >> np.uint64(64 - prec)) >= freq
    word = x & _LOW32
    if over:
        x = x >> _U32
    return x, over, word


@compiled(inline="always")
def push_state(x, q, start, freq, prec, offset):
    """The state after pushing [start, start + freq) onto the renormalised state x, whose
    quotient q = x // freq the caller computed (a keyed slot's rotation `offset` may depend
    on it; 0 for none)."""
    r = (x - q * freq + start + offset) & ((_U1 << np.uint64(prec)) - _U1)
    return (q << np.uint64(prec)) + r


@compiled(inline="always")
def push_interval(x, start, freq, prec):
    """Renormalise and push [start, start + freq) without a slot key: (state, overflowed, the low
    word to move to the tail if it did). Keyed pushes call push_renorm and push_state themselves,
    since their key depends on the quotient."""
    x, over, word = push_renorm(x, freq, prec)
    return push_state(x, x // freq, start, freq, prec, np.uint64(0)), over, word


@compiled(inline="always")
def pop_state(x, cf, start, freq, prec):
    """The state after popping the symbol [start, start + freq) that holds cf (before the
    caller refills it if it fell below 2**32)."""
    return (x >> np.uint64(prec)) * freq + cf - start


# --- the tail's bookkeeping, shared by these sequential scans and the CUDA ones (cuda_message) -------

@compiled(inline="always")
def settle_push(buf, meta, top, count):
    """After a push wrote `count` words at buf[top:]: give back the generator words a push onto an
    empty tail repeats (the most recently borrowed first), and move the top."""
    skip = 0
    borrowed = meta[BORROWED]
    if meta[BASE] + top == 0 and borrowed > 0:
        m = min(count, borrowed)
        while skip < m and np.uint64(buf[skip]) == generator_word(np.uint64(borrowed - 1 - skip)):
            skip += 1
        if skip:
            for i in range(count - skip):
                buf[i] = buf[i + skip]
            meta[BORROWED] = borrowed - skip
    meta[TOP] = top + count - skip


@compiled(inline="always")
def tail_word(buf, p, borrowed):
    """The word at tail position p of a pop; below the bottom (p < 0), the generator word it borrows."""
    if p >= 0:
        return np.uint64(buf[p])
    return generator_word(np.uint64(borrowed - p - 1))


@compiled(inline="always")
def settle_pop(meta, top, n, base, borrowed):
    """After a pop of n words from a tail whose top was `top`: the words borrowed below its
    bottom (with the one-time warning), the new top and the low-water mark."""
    if n > top:
        meta[BORROWED] = borrowed + (n - top)
        top = 0
        if meta[WARNED] == 0:
            meta[WARNED] = 1
            meta[NEW_WARNING] = 1
    else:
        top -= n
    meta[TOP] = top
    meta[LOW] = min(meta[LOW], base + top)


@compiled
def push_flagged(words, flags, lanes, buf, meta):
    """Move words[l] of every flagged lane l < lanes, in lane order, onto the tail (one
    craystack push: the give-back rule applies to this call's words as a whole)."""
    top = meta[TOP]
    count = 0
    for lane in range(lanes):
        if flags[lane]:
            buf[top + count] = np.uint32(words[lane])
            count += 1
    if count == 0:
        return
    settle_push(buf, meta, top, count)


@compiled
def pop_flagged(head, flags, lanes, buf, meta) -> int:
    """Give each flagged lane l < lanes, in lane order, the next popped word (bottom to top),
    borrowing generator words below an empty tail; returns an error code (0: none)."""
    n = 0
    for lane in range(lanes):
        if flags[lane]:
            n += 1
    if n == 0:
        return 0
    top = meta[TOP]
    base = meta[BASE]
    borrowed = meta[BORROWED]
    if n > top and base > 0:
        meta[ERROR] = ERROR_PREFETCH
        return ERROR_PREFETCH
    i = 0
    for lane in range(lanes):
        if flags[lane]:
            head[lane] = (head[lane] << _U32) | tail_word(buf, top - n + i, borrowed)
            i += 1
    settle_pop(meta, top, n, base, borrowed)
    return 0


class CompiledMessage:
    """A `craystack.Message` as buffers that compiled phases update in place (see module doc)."""

    def __init__(self, message: rans.Message):
        head, tail = message
        self.shape = tuple(head.shape)
        self.head = np.array(head, dtype=np.uint64, copy=True).reshape(-1)
        self.buf = np.empty(1024, dtype=np.uint32)
        self.meta = np.zeros(8, dtype=np.int64)
        self.meta[BASE] = tail.length
        self.meta[BORROWED] = tail.borrowed
        self.meta[LOW] = tail.low_water
        self.meta[WARNED] = int(tail.warned)
        self._below = tail._top  # chunks holding the bottom meta[BASE] words

    @property
    def length(self) -> int:
        return int(self.meta[BASE] + self.meta[TOP])

    def reserve(self, pops: int, pushes: int) -> None:
        """Make room for a phase: at least `pops` words fetched into the buffer (or all there
        are) and space for `pushes` more on top of them."""
        top, base = int(self.meta[TOP]), int(self.meta[BASE])
        if not (pops > top and base > 0) and top + pushes <= self.buf.size:
            return
        pulled = self.pull_below(pops)
        grown = top + sum(p.size for p in pulled)
        buf = np.empty(max(2 * (grown + pushes), 1024), dtype=np.uint32)
        at = 0
        for part in pulled:
            buf[at:at + part.size] = part
            at += part.size
        buf[at:at + top] = self.buf[:top]
        self.buf = buf
        self.meta[TOP] = grown

    def pull_below(self, pops: int) -> list:
        """The words to fetch from the untouched chunks for a phase of `pops` pops (bottom to
        top; none if the buffer holds enough or there is nothing below), taken off them."""
        top, base = int(self.meta[TOP]), int(self.meta[BASE])
        if not (pops > top and base > 0):
            return []
        want = min(base, max(pops - top, top, 4096))
        pulled, node, need = [], self._below, want
        while need > 0:
            words = node.words
            if words.size > need:
                pulled.append(words[words.size - need:])
                node = rans._Chunk(words[:words.size - need], node.below)
                need = 0
            else:
                pulled.append(words)
                need -= words.size
                node = node.below
        self._below = node
        self.meta[BASE] = base - want
        pulled.reverse()
        return pulled

    def check(self, who: str) -> None:
        """After a phase: report a first borrow as craystack does; refuse a broken state."""
        if self.meta[ERROR]:
            raise RuntimeError(f"{who}: internal error in the compiled codec (code {int(self.meta[ERROR])})")
        if self.meta[NEW_WARNING]:
            self.meta[NEW_WARNING] = 0
            warnings.warn(
                "craystack: popped past the bottom of the message tail; "
                "pseudo-random words are being borrowed (see empty_pops). "
                "Further borrows by this message are not reported.",
                rans.EmptyTailWarning, stacklevel=3)

    def bits(self) -> float:
        """`bits_back_diffusion.coding.message_bits` of the message this state holds (same
        float operations, so traces agree with the NumPy path exactly)."""
        words = self.length - int(self.meta[BORROWED])
        return 32.0 * words + float(np.log2(self.head.reshape(self.shape).astype(np.float64)).sum())

    def to_message(self) -> rans.Message:
        return self.message_of(self.head, self.buf[:int(self.meta[TOP])])

    def message_of(self, head: np.ndarray, top_words: np.ndarray) -> rans.Message:
        """The Message of this state, given host copies of its head and of the buffer's words."""
        node = self._below
        if top_words.size:
            words = np.array(top_words, dtype=np.uint32, copy=True)
            words.flags.writeable = False
            node = rans._Chunk(words, node)
        tail = rans.Tail(node, self.length, int(self.meta[LOW]), int(self.meta[BORROWED]),
                         bool(self.meta[WARNED]))
        head = np.array(head, dtype=np.uint64, copy=True).reshape(self.shape)
        head.flags.writeable = False
        return rans.Message(head, tail)
