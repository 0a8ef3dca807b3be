"""The Codec type and the basic discrete codecs.

A codec is a pair of pure functions::

    push(message, symbol) -> (message,)
    pop(message)          -> (message, symbol)

with ``pop`` undoing ``push`` exactly.  All distribution parameters are fixed
when the codec is built (they are captured by the closures), and symbols are
integer arrays with the head's shape, one symbol per lane.

Quantization.  A codec over ``n`` symbols at precision ``prec`` assigns
symbol ``i`` the interval ``[C(i), C(i+1))`` of ``[0, 2**prec)`` where::

    C(i) = floor(F(i) * (2**prec - n)) + i,     C(0) = 0,  C(n) = 2**prec

and ``F`` is the model's (non-decreasing) CDF at the left edge of symbol
``i``.  Every symbol therefore gets a frequency of at least 1, whatever the
model says, so any symbol in range can always be coded.  ``F`` is computed
from the symbol index by a single function which both push and pop use, so
the two sides agree bit for bit.  Decoding searches for ``i`` with
``C(i) <= cf < C(i+1)`` by a vectorized binary search.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

from . import _checks
from .rans import check_prec, peek, pop_freqs, push_freqs

__all__ = ["Codec", "NonUniform", "Uniform", "Categorical", "quantized_cdf_codec"]

_U64 = np.uint64


class Codec(NamedTuple):
    """A pair ``push(message, symbol) -> (message,)``, ``pop(message) -> (message, symbol)``."""

    push: Callable
    pop: Callable


def NonUniform(enc_statfun, dec_statfun, prec) -> Codec:
    """Codec from a pair of statistics functions at precision ``prec``.

    ``enc_statfun(symbol) -> (start, freq)`` gives each lane's interval and
    ``dec_statfun(cf) -> symbol`` finds the symbol whose interval contains the
    cumulative frequency ``cf`` (both act on arrays with the head's shape).
    """
    prec = check_prec(prec, "NonUniform")

    def push(message, symbol):
        start, freq = enc_statfun(symbol)
        return (push_freqs(message, start, freq, prec),)

    def pop(message):
        cf = peek(message, prec)
        symbol = dec_statfun(cf)
        start, freq = enc_statfun(symbol)
        return pop_freqs(message, cf, start, freq, prec), symbol

    return Codec(push, pop)


def Uniform(prec) -> Codec:
    """Uniform codec over the ``2**prec`` symbols ``0 .. 2**prec - 1``."""
    prec = check_prec(prec, "Uniform")
    n = 1 << prec

    def push(message, symbol):
        s = _checks.symbols(symbol, message.head.shape, n, "Uniform")
        s = s.astype(np.uint64)
        return (push_freqs(message, s, np.ones_like(s), prec),)

    def pop(message):
        cf = peek(message, prec)
        ones = np.ones_like(cf)
        return pop_freqs(message, cf, cf, ones, prec), cf.astype(np.int64)

    return Codec(push, pop)


# ---------------------------------------------------------------------------
# Categorical

_CHUNK = 1 << 21  # elements per block when building large tables


def _categorical_table(probs: np.ndarray, prec: int, rescale: bool) -> np.ndarray:
    """Quantized CDF table, symbol-major: ``table[i, r] = C_r(i)``, uint64.

    ``probs`` has shape (rows, n).  With ``rescale`` each row is first divided
    by its maximum (only needed when weights are so large that sums overflow).
    The symbol-major layout keeps the first steps of the decoder's binary
    search on contiguous memory.
    """
    rows, n = probs.shape
    k = float((1 << prec) - n)
    table = np.empty((n + 1, rows), dtype=np.uint64)
    table[0] = 0
    table[n] = 1 << prec
    offsets = np.arange(1, n, dtype=np.uint64)
    step = max(1, _CHUNK // max(n, 1))
    for a in range(0, rows, step):
        p = probs[a:a + step].astype(np.float64)
        if rescale:
            p /= p.max(axis=-1, keepdims=True)
        cdf = np.cumsum(p, axis=-1)
        # partial sums never exceed the total, so cdf[:, :-1] / total <= 1
        cdf = cdf[:, :-1] / cdf[:, -1:]
        cdf *= k
        counts = cdf.astype(np.uint64)  # truncation == floor for cdf >= 0
        counts += offsets
        table[1:n, a:a + step] = counts.T
    return table


def _check_probs(p: np.ndarray, who: str) -> np.ndarray:
    """Validate weights (rows, n); return each row's maximum."""
    if p.size == 0:
        return np.zeros(p.shape[0])
    row_max = p.max(axis=-1)
    row_min = p.min(axis=-1)
    if np.isfinite(row_max).all() and (row_min >= 0).all() and (row_max > 0).all():
        return row_max
    finite = np.isfinite(p)
    if not finite.all():
        bad = ~finite
        first = p[tuple(np.argwhere(bad)[0])]
        kind = "nan" if np.isnan(first) else ("inf" if first > 0 else "-inf")
        raise ValueError(
            f"{who}: probs contains {kind} at index {_checks._index_str(bad)}")
    neg = p < 0
    if neg.any():
        first = p[tuple(np.argwhere(neg)[0])]
        raise ValueError(
            f"{who}: probs must be >= 0, got {float(first)!r} at index "
            f"{_checks._index_str(neg)}")
    raise ValueError(f"{who}: probs are all zero at lane index "
                     f"{_checks._index_str(~(row_max > 0))}")


def Categorical(probs, prec) -> Codec:
    """Categorical codec; ``probs[..., i]`` is the (unnormalized) weight of symbol ``i``.

    The leading axes of ``probs`` broadcast against the head (one distribution
    per lane); the trailing axis has one entry per symbol.  Weights must be
    finite, non-negative and not all zero in any lane.  Symbols with zero or
    underflowing weight still receive frequency 1.
    """
    who = "Categorical"
    prec = check_prec(prec, who)
    p = np.asarray(probs)
    if p.ndim == 0:
        raise ValueError(f"{who}: probs needs a trailing symbol axis, got a scalar")
    if p.dtype == np.bool_ or not (np.issubdtype(p.dtype, np.floating)
                                   or np.issubdtype(p.dtype, np.integer)):
        raise ValueError(f"{who}: probs must be real numbers, got dtype {p.dtype}")
    n = p.shape[-1]
    if not 1 <= n < (1 << prec):
        raise ValueError(
            f"{who}: number of symbols ({n}) must be in [1, 2**prec) = [1, {1 << prec})")
    batch_shape = p.shape[:-1]
    flat = p.reshape(-1, n)
    if flat.shape[0] >= 1 << 31:
        raise ValueError(f"{who}: too many lanes ({flat.shape[0]})")
    row_max = _check_probs(flat, who).astype(np.float64)
    rescale = bool(row_max.size) and not float(row_max.max()) < 1e300 / n
    table = _categorical_table(flat, prec, rescale)
    rows = flat.shape[0]
    flat_table = table.reshape(-1)
    cache = {}

    def lane_rows(shape):
        hit = cache.get(shape)
        if hit is None:
            ids = np.arange(rows, dtype=np.int64).reshape(batch_shape)
            hit = _checks.broadcast_lanes(ids, shape, "probs", who).copy()
            cache.clear()
            cache[shape] = hit
        return hit

    def push(message, symbol):
        shape = message.head.shape
        pos = lane_rows(shape) + _checks.symbols(symbol, shape, n, who).reshape(-1) * rows
        start = flat_table[pos]
        freq = flat_table[pos + rows] - start
        return (push_freqs(message, start.reshape(shape), freq.reshape(shape), prec),)

    def pop(message):
        shape = message.head.shape
        row = lane_rows(shape)
        cf = peek(message, prec).reshape(-1)
        # pos = symbol * rows + row; branch-free binary search on the symbol
        pos = row.copy()
        size = n
        while size > 1:
            half = size >> 1
            go = np.take(flat_table, pos + half * rows) <= cf
            pos += (half * rows) * go
            size -= half
        start = np.take(flat_table, pos)
        freq = np.take(flat_table, pos + rows) - start
        m = pop_freqs(message, cf.reshape(shape), start.reshape(shape),
                      freq.reshape(shape), prec)
        return m, ((pos - row) // rows).reshape(shape)

    return Codec(push, pop)


# ---------------------------------------------------------------------------
# generic codec from a CDF evaluated at symbol edges


_U_MIN = 2.0 ** -60
_U_MAX = 1.0 - 2.0 ** -53


def _guess_index(guess, u, params, n):
    g = guess(np.clip(u, _U_MIN, _U_MAX), params)
    g = np.where(np.isfinite(g), g, 0.0)
    return np.clip(np.floor(g), 0, n - 1).astype(np.int64)


def quantized_cdf_codec(who: str, n: int, prec: int, lane_params, cdf,
                        guess=None, guess_rounds: int = 1) -> Codec:
    """Codec over symbols ``0 .. n-1`` from a per-lane CDF.

    ``lane_params(shape)`` returns a tuple of 1-D float64 arrays, one value
    per lane of a head of that shape.  ``cdf(idx, params)`` returns, for
    int64 indices ``1 <= idx <= n-1`` and matching 1-D parameter arrays, the
    model CDF at the left edge of symbol ``idx`` as float64 in ``[0, 1]``;
    it must be elementwise, deterministic and non-decreasing in ``idx``.
    ``guess(u, params)``, if given, returns a float64 estimate of the
    symbol whose bin contains the model quantile ``u`` (i.e. roughly the
    inverse of ``cdf``, floored later); decoding checks the estimate
    and its neighbours before falling back to a binary search, so a poor
    guess costs time but never correctness.  ``guess_rounds`` (1 or more)
    is the number of inversion rounds for all lanes before the first check;
    2 pays off when the model is far from putting equal mass on each symbol.
    """
    prec = check_prec(prec, who)
    if not 1 <= n < (1 << prec):
        raise ValueError(
            f"{who}: number of bins ({n}) must be in [1, 2**prec) = [1, {1 << prec})")
    total = _U64(1 << prec)
    k = float((1 << prec) - n)

    def cum(idx, params):
        """Quantized CDF C(idx) (uint64) for int64 idx in [0, n]."""
        if n > 1:
            f = np.asarray(cdf(np.clip(idx, 1, n - 1), params), dtype=np.float64)
            if f.size and not (f.min() >= 0.0 and f.max() <= 1.0):
                raise ValueError(f"{who}: internal error, CDF outside [0, 1] or nan")
            f = f * k
            c = f.astype(np.uint64)  # truncation == floor for f >= 0
        else:
            c = np.zeros(idx.shape, dtype=np.uint64)
        c += idx.view(np.uint64)  # idx >= 0
        np.copyto(c, _U64(0), where=idx <= 0)
        np.copyto(c, total, where=idx >= n)
        return c

    def search(cf, params, lo, c_lo, size):
        """Largest idx in [lo, lo+size) with C(idx) <= cf; size per lane."""
        lo = lo.copy()
        c_lo = c_lo.copy()
        size = size.copy()
        while True:
            active = np.flatnonzero(size > 1)
            if active.size == 0:
                break
            half = size[active] >> 1
            mid = lo[active] + half
            sub = tuple(p[active] for p in params)
            c = cum(mid, sub)
            go = c <= cf[active]
            lo[active] = np.where(go, mid, lo[active])
            c_lo[active] = np.where(go, c, c_lo[active])
            size[active] = np.where(go, size[active] - half, half)
        return lo, c_lo

    def push(message, symbol):
        shape = message.head.shape
        params = lane_params(shape)
        s = _checks.symbols(symbol, shape, n, who).reshape(-1)
        start = cum(s, params)
        end = cum(s + 1, params)
        if not np.all(end > start):
            raise ValueError(f"{who}: quantized CDF is not increasing (bad cdf function)")
        return (push_freqs(message, start.reshape(shape), (end - start).reshape(shape),
                           prec),)

    def pop(message):
        shape = message.head.shape
        params = lane_params(shape)
        cf = peek(message, prec).reshape(-1)
        lanes = cf.size
        if guess is not None and n > 1:
            # Since C(i) = floor(G(i) * k) + i, the symbol g of cf solves
            # G(g) ~ (cf - g) / k.  Start from g = cf * n / 2**prec (exact
            # when the model puts equal mass on every symbol) and refine by
            # inverting the model CDF at (cf - g) / k.  Lanes whose interval
            # still misses cf get one more round.
            cf_f = cf.astype(np.float64)
            g = cf_f * (n / float(total))
            for _ in range(guess_rounds):
                g = _guess_index(guess, (cf_f - g + 0.5) * (1.0 / k), params, n)
            c0 = cum(g, params)
            c1 = cum(g + 1, params)
            miss = np.flatnonzero((cf < c0) | (cf >= c1))
            if miss.size:
                sub = tuple(p[miss] for p in params)
                gm = _guess_index(guess, (cf_f[miss] - g[miss] + 0.5) * (1.0 / k), sub, n)
                g[miss] = gm
                c0[miss] = cum(gm, sub)
                c1[miss] = cum(gm + 1, sub)
            sym = g
            start = c0
            end = c1
            below = np.flatnonzero(cf < c0)
            above = np.flatnonzero(cf >= c1)
            # one step down / up before searching
            if below.size:
                gb = g[below] - 1
                sub = tuple(p[below] for p in params)
                cb = cum(gb, sub)
                hit = cb <= cf[below]
                ib = below[hit]
                sym[ib] = gb[hit]
                end[ib] = c0[ib]
                start[ib] = cb[hit]
                miss = below[~hit]
                if miss.size:
                    sub = tuple(p[miss] for p in params)
                    zero = np.zeros(miss.size, dtype=np.int64)
                    lo, c_lo = search(cf[miss], sub, zero, np.zeros(miss.size, np.uint64),
                                      g[miss] - 1)
                    sym[miss] = lo
                    start[miss] = c_lo
                    end[miss] = cum(lo + 1, sub)
            if above.size:
                ga = g[above] + 2
                sub = tuple(p[above] for p in params)
                ca = cum(ga, sub)
                hit = cf[above] < ca
                ia = above[hit]
                sym[ia] = g[ia] + 1
                start[ia] = c1[ia]
                end[ia] = ca[hit]
                miss = above[~hit]
                if miss.size:
                    sub = tuple(p[miss] for p in params)
                    lo0 = ga[~hit]
                    lo, c_lo = search(cf[miss], sub, lo0, ca[~hit], n - lo0)
                    sym[miss] = lo
                    start[miss] = c_lo
                    end[miss] = cum(lo + 1, sub)
        else:
            sym, start = search(cf, params, np.zeros(lanes, np.int64),
                                np.zeros(lanes, np.uint64), np.full(lanes, n, np.int64))
            end = cum(sym + 1, params)
        if not np.all((start <= cf) & (cf < end)):
            raise ValueError(f"{who}: quantized CDF is not increasing (bad cdf function)")
        m = pop_freqs(message, cf.reshape(shape), start.reshape(shape),
                      (end - start).reshape(shape), prec)
        return m, sym.reshape(shape)

    return Codec(push, pop)
