"""Ways of building codecs out of other codecs."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from .codecs import Codec
from .rans import Message, _with_head

__all__ = ["substack", "serial", "repeat", "parallel", "BBANS"]


def substack(codec: Codec, view_fun: Callable) -> Codec:
    """Apply ``codec`` to the lanes ``view_fun(head)`` of the message.

    ``view_fun`` must select lanes by (basic or advanced) indexing or
    reshaping, e.g. ``lambda head: head[0]`` or ``lambda head: head[:, ::2]``;
    it is applied to an array of lane numbers to find which lanes it picks,
    so it must not pick a lane twice.  Symbols have the view's shape.
    """
    cache = {}

    def lanes(shape):
        sel = cache.get(shape)
        if sel is None:
            ids = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.int64)
            view = np.asarray(view_fun(ids.reshape(shape)))
            flat = view.reshape(-1)
            if np.unique(flat).size != flat.size:
                raise ValueError("substack: view_fun selects some lane more than once")
            sel = (flat, view.shape)
            cache.clear()
            cache[shape] = sel
        return sel

    def sub_message(message):
        head = message.head
        flat, vshape = lanes(head.shape)
        return Message(head.reshape(-1)[flat].reshape(vshape), message.tail), flat

    def merge(message, sub, flat):
        new_head = np.array(message.head, copy=True)
        new_head.reshape(-1)[flat] = sub.head.reshape(-1)
        return _with_head(sub, new_head)

    def push(message, symbol):
        sub, flat = sub_message(message)
        sub, = codec.push(sub, symbol)
        return (merge(message, sub, flat),)

    def pop(message):
        sub, flat = sub_message(message)
        sub, symbol = codec.pop(sub)
        return merge(message, sub, flat), symbol

    return Codec(push, pop)


def serial(codecs: Sequence[Codec]) -> Codec:
    """Code a sequence of symbols, ``symbols[i]`` with ``codecs[i]``.

    Pushes go last-to-first so that ``pop`` returns the list in order.
    """
    codecs = list(codecs)

    def push(message, symbols):
        symbols = list(symbols)
        if len(symbols) != len(codecs):
            raise ValueError(
                f"serial: expected {len(codecs)} symbols, got {len(symbols)}")
        for codec, symbol in reversed(list(zip(codecs, symbols))):
            message, = codec.push(message, symbol)
        return (message,)

    def pop(message):
        symbols = []
        for codec in codecs:
            message, symbol = codec.pop(message)
            symbols.append(symbol)
        return message, symbols

    return Codec(push, pop)


def repeat(codec: Codec, n: int) -> Codec:
    """Code ``n`` symbols with the same codec (a list of ``n`` symbols)."""
    return serial([codec] * int(n))


def parallel(codecs: Sequence[Codec], view_funs: Sequence[Callable]) -> Codec:
    """Code ``symbols[i]`` with ``codecs[i]`` on the lanes ``view_funs[i](head)``.

    The views should not overlap; symbols form a list in the codecs' order.
    """
    codecs = list(codecs)
    view_funs = list(view_funs)
    if len(codecs) != len(view_funs):
        raise ValueError("parallel: need one view function per codec")
    return serial([substack(c, v) for c, v in zip(codecs, view_funs)])


def BBANS(prior: Codec, likelihood: Callable, posterior: Callable) -> Codec:
    """Bits-back ANS codec for data ``x`` under a latent variable model.

    ``prior`` codes the latent ``z``; ``likelihood(z)`` returns the codec of
    ``x`` given ``z``; ``posterior(x)`` returns the codec of ``z`` given ``x``.
    The expected net cost of pushing ``x`` is the negative ELBO.
    """

    def push(message, data):
        message, latent = posterior(data).pop(message)
        message, = likelihood(latent).push(message, data)
        message, = prior.push(message, latent)
        return (message,)

    def pop(message):
        message, latent = prior.pop(message)
        message, data = likelihood(latent).pop(message)
        message, = posterior(data).push(message, latent)
        return message, data

    return Codec(push, pop)
