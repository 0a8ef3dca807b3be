"""craystack: vectorized rANS and composable codecs in NumPy.

Messages
    A message ``(head, tail)`` holds one 64-bit ANS state per lane in
    ``head`` (a ``uint64`` array of any shape, values in ``[2**32, 2**64)``)
    and a shared, immutable stack of 32-bit words in ``tail``.  Messages are
    values: every operation returns a new message and never changes its
    argument.  See :mod:`craystack.rans` for the flat layout used by
    :func:`flatten` / :func:`unflatten`.

Codecs
    A :class:`Codec` is a pair of functions::

        push(message, symbol) -> (message,)
        pop(message)          -> (message, symbol)

    where ``pop`` exactly undoes ``push``.  Convention: the distribution's
    parameters are bound when the codec is constructed (``Categorical(probs,
    prec)`` returns closures over ``probs``), and a symbol is an integer array
    with the head's shape (or, inside :func:`substack`, the view's shape), one
    symbol per lane.  Parameters broadcast against that shape.  Invalid
    parameters or symbols raise ``ValueError`` naming the codec and the bad
    value; since messages are immutable the caller's message is never
    affected.

Quantization
    Each codec maps its model onto integer frequencies out of
    ``2**coding_prec`` such that every symbol gets frequency >= 1, so any
    symbol in range can be coded whatever the parameters (see
    :mod:`craystack.codecs`).
"""

from .rans import (
    EmptyTailWarning,
    Message,
    Tail,
    base_message,
    empty_pops,
    flatten,
    low_water,
    message_equal,
    SlotKey,
    peek,
    peek_keyed,
    pop_freqs,
    push_freqs,
    random_message,
    reset_low_water,
    reshape_head,
    tail_length,
    unflatten,
)
from .codecs import Categorical, Codec, NonUniform, Uniform, quantized_cdf_codec
from .gaussian import (
    DiagGaussian_GaussianBins,
    DiagGaussian_StdBins,
    DiagGaussian_UnifBins,
    DiscretizedGaussian,
    gaussian_bin_centres,
    std_gaussian_buckets,
    std_gaussian_centres,
)
from .combinators import BBANS, parallel, repeat, serial, substack

__all__ = [
    # messages
    "Message", "Tail", "EmptyTailWarning", "base_message", "random_message",
    "flatten", "unflatten", "message_equal", "reshape_head", "tail_length",
    "low_water", "reset_low_water", "empty_pops",
    # rANS primitives
    "push_freqs", "peek", "peek_keyed", "pop_freqs", "SlotKey",
    # codecs
    "Codec", "NonUniform", "Uniform", "Categorical", "quantized_cdf_codec",
    "DiagGaussian_StdBins", "DiagGaussian_GaussianBins", "DiagGaussian_UnifBins",
    "DiscretizedGaussian", "std_gaussian_buckets", "std_gaussian_centres",
    "gaussian_bin_centres",
    # combinators
    "substack", "serial", "repeat", "parallel", "BBANS",
]
