"""What every bits-back codec here shares: coding precisions, message accounting, the message the
first batch starts from, lane views and the per-step trace.

Its own module so that each codec (codec.py: BB-ANS, bitswap.py: Bit-Swap) imports it and neither
imports the other; codec_registry.py is the one place that knows both.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Tuple

import numpy as np

import craystack as cs


@dataclass(frozen=True)
class Precisions:
    prior_prec: int = 10
    latent_prec: int = 18
    obs_prec: int = 24

    def __post_init__(self) -> None:
        if not 1 <= self.prior_prec < self.latent_prec <= 32:
            raise ValueError(
                f"need 1 <= prior_prec < latent_prec <= 32, got prior_prec={self.prior_prec}, "
                f"latent_prec={self.latent_prec}"
            )
        if not 8 <= self.obs_prec <= 32:
            raise ValueError(f"obs_prec must lie in [8, 32], got {self.obs_prec}")


def message_bits(message: cs.Message) -> float:
    """Information held by a message: 32 bits per tail word plus log2 of every head lane, less 32
    bits per word borrowed from craystack's generator (a debt: the decoder gives them back)."""
    words = cs.tail_length(message) - cs.empty_pops(message)
    return 32.0 * words + float(np.log2(message.head.astype(np.float64)).sum())


@dataclass
class StepTrace:
    """Bits taken from (pop) and added to (push) the message at each respaced step, per batch."""

    pop_bits: List[np.ndarray] = field(default_factory=list)
    push_bits: List[np.ndarray] = field(default_factory=list)
    data_bits: List[float] = field(default_factory=list)

    def as_arrays(self) -> dict:
        return {
            "pop_bits": np.stack(self.pop_bits) if self.pop_bits else np.zeros((0, 0)),
            "push_bits": np.stack(self.push_bits) if self.push_bits else np.zeros((0, 0)),
            "data_bits": np.asarray(self.data_bits),
        }


BARE_HEAD = 1 << 40


def initial_message(codec, head_shape: Tuple[int, ...], seed: int) -> cs.Message:
    """The message the first batch starts from (see `initial_message_for`)."""
    return initial_message_for(head_shape, codec.initial_words_per_lane(), seed)


def initial_message_for(head_shape: Tuple[int, ...], words_per_lane: int, seed: int) -> cs.Message:
    """Random bits for the first batch to pop: a random head plus `words_per_lane` tail words per
    lane, reproducible from the seed; with 0 words, a bare message (every head BARE_HEAD = 2**40,
    no tail), whose pops borrow craystack's generator words, which a file does not store. Not
    the floor 2**32: the first pop from a head whose quotient is only 2**4 would take up to
    log2(1 + 2**-4) bits less than its symbol's information; at 2**40 that is 3.5e-4 bits, and
    the 8 bits above the floor are popped as the first random bits (Bit-Swap's first step takes
    more).

    A file holds the final message, so every random bit the encoder started from is in it; a
    codec whose deficit is small (Bit-Swap) starts bare and pays only for the bits it borrowed."""
    if words_per_lane == 0:
        bare = cs.base_message(head_shape)
        head = np.full(bare.head.shape, BARE_HEAD, dtype=np.uint64)
        head.flags.writeable = False
        return cs.Message(head, bare.tail)
    header = len(cs.flatten(cs.base_message(head_shape)))  # head words plus bookkeeping
    return cs.random_message(header + int(words_per_lane) * int(np.prod(head_shape)), head_shape, seed=seed)


def on_lanes(codec: cs.Codec, batch: int, full_batch: int) -> cs.Codec:
    """Run a codec on the first `batch` images' lanes of a message sized for `full_batch`."""
    if batch == full_batch:
        return codec
    return cs.substack(codec, lambda head: head[:batch])
