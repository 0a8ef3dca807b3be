"""Batch iterators: a deterministic, resumable one for evaluation and an
infinite shuffled one for training.

Both load batches on one background thread so that file decoding overlaps
with model work; no torch DataLoader is needed.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, TypeVar, Union

import numpy as np

from .base import ImageSet
from .errors import DataError
from .levels import to_model_input

if TYPE_CHECKING:
    import torch

J = TypeVar("J")
R = TypeVar("R")


@dataclass(frozen=True)
class EvalBatch:
    """One evaluation batch: its number on this rank, dataset indices, and levels (B, C, H, W) int64."""

    index: int
    ids: np.ndarray
    x: np.ndarray


def _check_rank(rank: int, world_size: int, batch_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _limit(n: int, num_samples: Optional[int]) -> int:
    if num_samples is None or int(num_samples) < 0 or int(num_samples) > n:
        return n
    return int(num_samples)


def eval_indices(
    dataset_or_len: Union[ImageSet, int], num_samples: Optional[int] = None, rank: int = 0, world_size: int = 1
) -> np.ndarray:
    """Dataset indices this rank evaluates: r, r+W, r+2W, ... among the first ``num_samples``.

    ``num_samples`` of None, -1 (any negative) or more than the dataset means all.
    """
    n = dataset_or_len if isinstance(dataset_or_len, int) else len(dataset_or_len)
    _check_rank(rank, world_size, 1)
    return np.arange(rank, _limit(n, num_samples), world_size, dtype=np.int64)


def num_eval_batches(
    dataset: Union[ImageSet, int],
    batch_size: int,
    num_samples: Optional[int] = None,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
) -> int:
    """How many batches ``eval_batches`` with the same arguments yields on this rank.

    With ``start_batch`` 0 (the default) this is the rank's total batch count.
    """
    _check_rank(rank, world_size, batch_size)
    total = -(-len(eval_indices(dataset, num_samples, rank, world_size)) // batch_size)
    return max(0, total - max(0, int(start_batch)))


def prefetched(load: Callable[[J], R], jobs: Iterable[J], depth: int = 1) -> Iterator[tuple[J, R]]:
    """Yield ``(job, load(job))`` in order, computing up to ``depth`` results ahead on a thread.

    Exceptions raised by ``load`` surface in the consumer when that job's turn
    comes; closing the generator cancels what has not started.
    """
    it = iter(jobs)
    if depth <= 0:
        for job in it:
            yield job, load(job)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bbd-data")
    pending: deque = deque()
    end = object()

    def fill() -> None:
        while len(pending) < depth:
            job = next(it, end)
            if job is end:
                return
            pending.append((job, pool.submit(load, job)))

    try:
        fill()
        while pending:
            job, fut = pending.popleft()
            result = fut.result()
            fill()
            yield job, result
    finally:
        for _, fut in pending:
            fut.cancel()
        pool.shutdown(wait=True)


def eval_batches(
    dataset: ImageSet,
    batch_size: int,
    num_samples: Optional[int] = None,
    rank: int = 0,
    world_size: int = 1,
    start_batch: int = 0,
    prefetch: int = 1,
) -> Iterator[EvalBatch]:
    """Batches of this rank's evaluation items in a fixed order.

    The first ``num_samples`` items are dealt round-robin over ranks, each rank's
    share cut into consecutive batches of ``batch_size`` (the last may be
    smaller). Batches before ``start_batch`` are skipped without being loaded,
    so an interrupted run resumes exactly where it stopped.
    """
    _check_rank(rank, world_size, batch_size)
    ids = eval_indices(dataset, num_samples, rank, world_size)
    first = max(0, int(start_batch))
    jobs = [(b, ids[b * batch_size : (b + 1) * batch_size]) for b in range(first, -(-len(ids) // batch_size))]

    def load(job: tuple[int, np.ndarray]) -> np.ndarray:
        return dataset.get_batch(job[1]).astype(np.int64)

    for (b, batch_ids), x in prefetched(load, jobs, prefetch):
        yield EvalBatch(index=b, ids=batch_ids, x=x)


def train_epoch_order(n: int, rank: int, world_size: int, seed: int, epoch: int) -> np.ndarray:
    """Dataset indices rank `rank` trains on in epoch `epoch`, a function of (seed, epoch) only.

    Each epoch is a permutation seeded by (seed, epoch) shared by all ranks, of which rank r takes
    positions r, r+W, ... (shards are disjoint and equal-sized; the n % W leftover items sit out
    that epoch). Not chaining one generator over epochs is what lets a resumed run start anywhere.
    """
    usable = n - n % world_size
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n)[:usable]
    return perm[rank::world_size]


def _train_index_stream(n: int, rank: int, world_size: int, seed: int, start: int = 0) -> Iterator[int]:
    """Endless indices for one rank, beginning `start` items into the stream."""
    per_epoch = (n - n % world_size) // world_size
    epoch, offset = divmod(int(start), per_epoch)
    while True:
        yield from train_epoch_order(n, rank, world_size, seed, epoch)[offset:].tolist()
        epoch, offset = epoch + 1, 0


class TrainBatches:
    """Infinite shuffled training batches as (float32 NCHW in [-1, 1], {}), resumable.

    Matches improved-diffusion's ``load_data`` convention. Every batch is full; a batch may
    straddle two epochs rather than dropping the remainder. `position` counts the items this rank
    has been given; `seek(position)` restarts the stream there, so a resumed training run sees
    the same batches as an uninterrupted one. With `pin_memory` (CUDA only) batches are pinned
    on the loading thread, so the trainer's host-to-device copies can be asynchronous.
    """

    def __init__(
        self,
        dataset: ImageSet,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        prefetch: int = 2,
        pin_memory: bool = False,
    ):
        _check_rank(rank, world_size, batch_size)
        if len(dataset) < world_size:
            raise DataError(f"{dataset.name}: {len(dataset)} images cannot be sharded over {world_size} ranks")
        if pin_memory:
            import torch

            if not torch.cuda.is_available():
                raise ValueError("pin_memory=True needs CUDA (pinned host memory only speeds up copies to a GPU)")
        self.dataset, self.batch_size, self.rank, self.world_size = dataset, batch_size, rank, world_size
        self.seed, self.prefetch, self.pin_memory = int(seed), prefetch, bool(pin_memory)
        self.position = 0
        self._batches: Optional[Iterator[tuple[Any, Any]]] = None

    def seek(self, position: int) -> None:
        """Continue with the item at `position` of this rank's stream (nothing is loaded until next())."""
        if position < 0:
            raise ValueError(f"position must be >= 0, got {position}")
        self.close()
        self.position = int(position)

    def _start(self) -> Iterator[tuple[Any, Any]]:
        stream = _train_index_stream(len(self.dataset), self.rank, self.world_size, self.seed, self.position)
        size = self.batch_size

        def jobs() -> Iterator[np.ndarray]:
            while True:
                yield np.fromiter((next(stream) for _ in range(size)), dtype=np.int64, count=size)

        def load(idx: np.ndarray) -> "torch.Tensor":
            x = to_model_input(self.dataset.get_batch(idx), self.dataset.num_levels)
            return x.pin_memory() if self.pin_memory else x

        return prefetched(load, jobs(), self.prefetch)

    def __iter__(self) -> "TrainBatches":
        return self

    def __next__(self) -> tuple["torch.Tensor", dict[str, Any]]:
        if self._batches is None:
            self._batches = self._start()
        _, x = next(self._batches)
        self.position += self.batch_size
        return x, {}

    def close(self) -> None:
        """Stop the loading thread (a later next() starts again at `position`)."""
        if self._batches is not None:
            self._batches.close()
            self._batches = None


# The public name the scripts use: infinite shuffled training batches of this rank. An alias rather than a
# wrapper so the arguments and their defaults are written once, in `TrainBatches.__init__`.
train_batches = TrainBatches
