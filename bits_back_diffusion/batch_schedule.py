"""How many images the next batch codes: a fixed size, or a size that grows as the message fills.

Why grow: a Bit-Swap batch of b images pops about b times one image's deficit (one step's
latents) before it pushes anything. From an empty message those bits are borrowed from
craystack's generator and a file has to pay for them; a batch of 16 images at the start of a
CIFAR-10 file borrows about 0.05 bits/dim over the 10,000 test images. A growing schedule codes
one image first (it borrows one image's deficit, paid once), then only as many images at a time
as the words already in the message cover, so nothing more is borrowed; the batch reaches its
full size once the message holds about that many deficits.

The margin (GROWTH_MARGIN = 1.25) covers how much one batch's deficit per image can exceed the
last one's. Measured on the 297 demo digits (100 steps, runs with margins 1.25, 1.1 and 1.0, about
80 batches each): beyond batches of one image (where nothing smaller can be chosen) a batch
needed at most 6.6% more words per image than the batch before it, and larger batches need fewer
words per image (about 81 at 1 image, 78 at 2, 74 at 8 or more). A margin of 1.1 took 79 batches
instead of 88 with no more borrowing, but the whole demo only 1-4% less time (larger batches cost
more per model call), so the wider margin stays.

The encoder's choices depend on the message only, so a resumed run chooses the same sizes;
the decoder reads them from the file (the message is popped last batch first).
`predicted_sizes` runs the same rule forward, for a progress bar that counts model calls.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import craystack as cs

__all__ = ["BatchSchedule", "GROWTH_MARGIN", "encode_batch", "expand_runs", "run_lengths", "words_used"]

GROWTH_MARGIN = 1.25  # words kept in hand per image beyond the last batch's deficit per image


def words_used(before: cs.Message, after: cs.Message) -> int:
    """Tail words a batch needed beyond what it pushed at its deepest point: the words it took
    from the message below its start plus the generator words it borrowed. `before` must have
    had its low-water mark reset (`cs.reset_low_water`) when the batch started."""
    return cs.tail_length(before) - cs.low_water(after) + cs.empty_pops(after) - cs.empty_pops(before)


@dataclass
class BatchSchedule:
    """Sizes of successive batches, at most `max_batch`; with `grow`, sized to the message."""

    max_batch: int
    grow: bool = False
    words_per_image: Optional[float] = None  # the last batch's deficit per image (tail words)
    sizes: List[int] = field(default_factory=list)  # of the batches coded so far

    def __post_init__(self) -> None:
        if int(self.max_batch) < 1:
            raise ValueError(f"batch size must be >= 1, got {self.max_batch}")
        self.max_batch = int(self.max_batch)

    def next_size(self, remaining: int, message: cs.Message) -> int:
        """Images in the next batch, given the images left and the message it will start from."""
        return self._size(remaining, cs.tail_length(message))

    def _size(self, remaining: int, tail_words: float) -> int:
        if remaining <= 0:
            return 0
        if not self.grow:
            return min(self.max_batch, remaining)
        if self.words_per_image is None:
            return 1  # nothing measured yet: one image borrows one deficit
        need = max(self.words_per_image, 1.0) * GROWTH_MARGIN
        fit = int(math.floor(tail_words / need))
        return max(1, min(self.max_batch, remaining, fit))

    def predicted_sizes(self, remaining: int, tail_words: float, words_gained_per_image: float) -> List[int]:
        """The sizes `next_size` would choose for the `remaining` images if each coded image left
        `words_gained_per_image` more words in the message's tail (now `tail_words`) and needed
        the last batch's deficit. Why: the time left is the model calls left (steps per batch),
        and a growing schedule's batches are chosen one at a time; per-image time falls as they
        grow, so counting images left overstates it many times over at the start."""
        sizes: List[int] = []
        while remaining > 0:
            size = self._size(remaining, tail_words)
            if size == self.max_batch:  # full from here on (the tail only grows)
                sizes += [self.max_batch] * (remaining // self.max_batch)
                sizes += [remaining % self.max_batch] if remaining % self.max_batch else []
                break
            sizes.append(size)
            remaining -= size
            tail_words += max(float(words_gained_per_image), 0.0) * size
        return sizes

    def record(self, size: int, used_words: int) -> None:
        """Note a coded batch and how many words it needed (see `words_used`)."""
        self.sizes.append(int(size))
        self.words_per_image = used_words / max(int(size), 1)  # about one step's latents per image

    def to_dict(self) -> Dict[str, Any]:
        return {"max_batch": self.max_batch, "grow": self.grow, "words_per_image": self.words_per_image,
                "sizes": list(self.sizes)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "BatchSchedule":
        return cls(int(data["max_batch"]), bool(data["grow"]), data.get("words_per_image"),
                   [int(v) for v in data.get("sizes", [])])


def encode_batch(codec, message: cs.Message, x_levels: np.ndarray,
                 schedule: BatchSchedule) -> Tuple[cs.Message, int]:
    """Push one batch with `codec` and record its size and the words it used in `schedule`;
    returns (message, words used)."""
    start = cs.reset_low_water(message)
    message = codec.encode(start, x_levels)
    used = words_used(start, message)
    schedule.record(len(x_levels), used)
    return message, used


def run_lengths(sizes: List[int]) -> List[List[int]]:
    """Batch sizes as [size, count] runs: a growing schedule of 10,000 images is a few dozen runs."""
    runs: List[List[int]] = []
    for size in sizes:
        if runs and runs[-1][0] == size:
            runs[-1][1] += 1
        else:
            runs.append([int(size), 1])
    return runs


def expand_runs(runs: List[List[int]]) -> List[int]:
    """The inverse of `run_lengths`."""
    return [int(size) for size, count in runs for _ in range(int(count))]
