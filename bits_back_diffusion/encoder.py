"""Compressing a whole (sharded) dataset into one message, resumably, and proving it decodes.

One message per rank. Images are pushed batch after batch; decoding pops them in reverse order
(the message is a stack) and compares every batch with the input. Batch sizes come from a
`BatchSchedule`: fixed for BB-ANS; for Bit-Swap they start at one image and grow as the message
fills, on a message head of `lane_images` images (see `batch_schedule` and `bitswap.lane_groups`).
The sizes are saved in every checkpoint and in the .bbd header. Rates are in bits/dim:

    rate_total      all bits of the final message, the initial random bits included
    rate_effective  bits added to the message: final − initial (craystack generator words borrowed
                    count as a debt of 32 bits each)
    rate_used       rate_effective plus the initial bits the first batch actually consumed

`initial_bytes_per_lane` is that consumption per ANS lane (bytes): initial tail words used plus
generator words borrowed, the figure that tells how many initial bits a codec really needs (BB-ANS:
about steps x latent_prec bits; Bit-Swap, which starts from a bare message: about one step of one
image, since its first batch holds one image).

Bits are counted as message information (32 per tail word plus log2 of each 64-bit head lane);
rate_total counts whole stored words.
"""
from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

import craystack as cs
from improved_diffusion import logger

from .coding import initial_message, message_bits
from .batch_check import AlongsideChecker, RoundtripError
from .runtime import pin_torch_threads
from .codec_checkpoints import CodecState, checkpoint_name, newest_state
from .batch_schedule import BatchSchedule, encode_batch, run_lengths
from .data import ImageSet, eval_indices
from .decoder import pop_batches
from .rank_results import wait_for_rank_results, write_rank_results

INITIAL_SEED_OFFSET = 7919


def _now() -> float:
    """Monotonic seconds for time-based checkpoints (a seam for tests)."""
    return time.monotonic()


@dataclass
class EncodePlan:
    """Which images this rank codes, on how many images' lanes, and the settings the message
    depends on. `batch_sizes` is known up front for a fixed schedule and empty for a growing one
    (Bit-Swap), whose sizes the encoder chooses as it goes (see `batch_schedule`). The coder never
    changes a plan: the sizes it used are `DatasetCoder.batch_sizes` / `coded_batch_sizes(state)`."""

    batch_size: int
    num_samples: int
    rank: int
    world_size: int
    image_shape: tuple
    meta: Dict[str, Any]
    ids: np.ndarray
    head_images: int
    grow: bool = False
    batch_sizes: List[int] = field(default_factory=list)

    @classmethod
    def build(cls, dataset: ImageSet, batch_size: int, num_samples: int, rank: int, world_size: int,
              meta: Dict[str, Any], head_images: Optional[int] = None, grow: bool = False) -> "EncodePlan":
        ids = eval_indices(dataset, num_samples, rank, world_size)
        batch_size = int(batch_size)
        head = batch_size if head_images is None else int(head_images)
        if not 1 <= head <= batch_size:
            raise ValueError(f"codec.lane_images={head} must lie in [1, data.val.batch_size={batch_size}]")
        sizes = [] if grow else [min(batch_size, len(ids) - s) for s in range(0, len(ids), batch_size)]
        shape = (dataset.channels, dataset.image_size, dataset.image_size)
        return cls(batch_size, num_samples, rank, world_size, shape, meta, np.asarray(ids), head, bool(grow), sizes)

    @property
    def head_shape(self) -> tuple:
        return (self.head_images,) + self.image_shape

    @property
    def samples(self) -> int:
        return len(self.ids)

    def dims(self, sizes: Sequence[int]) -> int:
        """Pixel values in batches of these sizes (the rate's denominator)."""
        return int(sum(sizes)) * int(np.prod(self.image_shape))

    def schedule(self) -> BatchSchedule:
        return BatchSchedule(self.batch_size, self.grow)


def validate_batch(x: np.ndarray, shape: tuple, num_levels: int, batch_index: int) -> np.ndarray:
    """Images must be integer levels in [0, num_levels) of the model's shape; say which batch is not."""
    if tuple(x.shape[1:]) != tuple(shape):
        raise ValueError(f"batch {batch_index}: images have shape {tuple(x.shape[1:])}, the model expects {tuple(shape)}")
    if x.min() < 0 or x.max() >= num_levels:
        raise ValueError(
            f"batch {batch_index}: pixel levels span [{int(x.min())}, {int(x.max())}] but the data has "
            f"{num_levels} levels [0, {num_levels - 1}]; check data.num_levels"
        )
    return x.astype(np.int64)


class DatasetCoder:
    """Runs `codec` over this rank's images with checkpoints every `save_interval` samples or every
    `save_minutes` minutes, whichever comes first (slow models code few images an hour)."""

    def __init__(self, codec, dataset: ImageSet, plan: EncodePlan, run_dir: str, save_interval: int,
                 seed: int, show_progress: bool = True, vlb_fn=None, save_minutes: float = 10.0,
                 check_codec=None, check_threads: int = 1):
        self.codec = codec
        # With a second codec (same settings, its own model wrapper), each batch is decoded on a
        # second thread while the next one encodes (batch_check); `decode` then has nothing left.
        self.check_codec = check_codec
        self.check_threads = int(check_threads)
        self.dataset = dataset
        self.plan = plan
        self.run_dir = run_dir
        self.save_interval = max(int(save_interval), 1)
        self.seed = seed
        self.show_progress = show_progress
        self.vlb_fn = vlb_fn
        self.save_seconds = 60.0 * float(save_minutes)
        self._vlb_pool: Optional[ThreadPoolExecutor] = None  # the VLB's thread while checking alongside
        self._vlb_jobs: List[Future] = []
        self._last_save = _now()
        # The batch sizes of the last encode or decode: the plan's own for a fixed schedule, the
        # encoder's choices for a growing one (kept here so the plan stays as built).
        self.batch_sizes: List[int] = list(plan.batch_sizes)

    # --- the initial message ---------------------------------------------------------------
    @property
    def initial_seed(self) -> int:
        return self.seed + INITIAL_SEED_OFFSET + self.plan.rank

    def initial_message(self) -> cs.Message:
        """Random bits the first batch borrows from; reproducible from the seed and rank."""
        return initial_message(self.codec, self.plan.head_shape, self.initial_seed)

    def initial_message_spec(self) -> Dict[str, int]:
        """What a decoder needs to rebuild `initial_message` and check it ended there (.bbd header)."""
        return {"words_per_lane": int(self.codec.initial_words_per_lane()), "seed": int(self.initial_seed)}

    def _path(self, phase: str, samples: int) -> str:
        return os.path.join(self.run_dir, checkpoint_name(phase, samples, self.plan.rank, self.plan.world_size))

    def check_resume(self) -> None:
        """Refuse, before anything is written, a run dir whose checkpoints this run cannot continue."""
        for phase in ("encode", "decode"):
            found = newest_state(self.run_dir, phase, self.plan.rank, self.plan.world_size)
            if found is not None:
                found[1].check_meta(self.plan.meta, found[0])

    def _resume(self, phase: str) -> Optional[CodecState]:
        found = newest_state(self.run_dir, phase, self.plan.rank, self.plan.world_size)
        if found is None:
            return None
        path, state = found
        state.check_meta(self.plan.meta, path)
        logger.log(f"RESUMING {phase} from {path}: {state.samples_done} images ({state.batches_done} batches) done")
        return state

    def _bar(self, desc: str, calls_done: int, calls_total: Optional[int]):
        """A bar counting model calls (one per step of each batch), not images: with growing batches
        the time per image falls several times over, and counting images showed 1:52:37 left after
        the first demo digit of a 6-minute run."""
        return tqdm(total=calls_total, initial=calls_done, desc=desc, unit="call", disable=not self.show_progress)

    def _encode_calls_left(self, schedule: BatchSchedule, state: CodecState) -> Optional[int]:
        """Model calls still to make: the batches the schedule is expected to choose (from the words
        the message gained per image so far) times the steps; None before a growing schedule has
        measured anything."""
        if schedule.grow and state.samples_done == 0:
            return None
        gained = (message_bits(state.message) - state.stats["initial_bits"]) / 32.0 / max(state.samples_done, 1)
        sizes = schedule.predicted_sizes(self.plan.samples - state.samples_done, cs.tail_length(state.message), gained)
        return len(sizes) * self.codec.lm.num_steps

    # --- encode ----------------------------------------------------------------------------------
    def encode(self) -> CodecState:
        pin_torch_threads()  # the thread count the checkpoints record is the one the model runs with
        state = self._resume("encode")
        if state is None:
            msg0 = self.initial_message()
            state = CodecState("encode", 0, 0, msg0, self.plan.meta, {
                "initial_bits": message_bits(msg0), "initial_bytes": 4 * len(cs.flatten(msg0)),
                "consumed_bits": None, "encode_seconds": 0.0, "model_evals": 0, "vlb_sum": 0.0, "vlb_count": 0,
                "schedule": self.plan.schedule().to_dict(),
            })
        schedule = BatchSchedule.from_dict(state.stats["schedule"])
        self.batch_sizes = list(schedule.sizes)
        if state.samples_done == self.plan.samples:
            return state
        calls_done = state.batches_done * self.codec.lm.num_steps
        left = self._encode_calls_left(schedule, state)
        bar = self._bar("encode", calls_done, None if left is None else calls_done + left)
        self._start_clock()
        traces = {k: list(v) for k, v in state.arrays.items()}
        pending: List[tuple] = []  # coded images whose VLB waits for a full batch of them
        checker = self._start_checker(state)
        if checker is not None and self.vlb_fn is not None:
            self._vlb_pool = ThreadPoolExecutor(1, thread_name_prefix="bbd-vlb")
        completed = False
        try:
            state = self._encode_batches(state, schedule, traces, pending, bar, checker)
            completed = True
        finally:  # a failed encode cancels the batches still waiting for their check
            if self._vlb_pool is not None:
                self._vlb_pool.shutdown(wait=True, cancel_futures=True)
                self._vlb_pool, self._vlb_jobs = None, []
            if checker is not None:
                checker.close(cancel=not completed)
        bar.close()
        return state

    def _start_checker(self, state: CodecState) -> Optional[AlongsideChecker]:
        """A checker alongside the encoder when a check codec was given and every batch coded so
        far was checked (a resumed run whose checkpoints hold unchecked ones decodes at the end)."""
        if self.check_codec is None or state.stats.get("checked_batches", 0) != state.batches_done:
            return None
        return AlongsideChecker(self.check_codec, self._verify_batch, self.check_threads)

    def _encode_batches(self, state: CodecState, schedule: BatchSchedule, traces: Dict[str, list],
                        pending: List[tuple], bar, checker: Optional[AlongsideChecker]) -> CodecState:
        stats, message = state.stats, state.message
        check_seconds, check_evals = stats.get("decode_seconds", 0.0), stats.get("check_model_evals", 0)
        while state.samples_done < self.plan.samples:
            index, done = state.batches_done, state.samples_done
            size = schedule.next_size(self.plan.samples - done, message)
            batch_ids = self.plan.ids[done:done + size]
            x = validate_batch(self.dataset.get_batch(batch_ids), self.plan.image_shape, self.dataset.num_levels, index)
            evals = self.codec.lm.model_evals
            before = message
            message, used = encode_batch(self.codec, message, x, schedule)
            if checker is not None:
                checker.submit(index, batch_ids, x, before, message)
            if index == 0:
                stats["consumed_bits"] = 32.0 * used
            final = done + size == self.plan.samples
            saving = self._save_due(done + size, size, final)
            if self.vlb_fn is not None:
                pending.append((x, batch_ids))
                if saving or sum(len(ids) for _, ids in pending) >= self.plan.batch_size:
                    self._add_vlb(stats, pending)
            self._collect_trace(traces)
            stats["schedule"] = schedule.to_dict()
            self.batch_sizes = list(schedule.sizes)
            state = CodecState("encode", index + 1, done + size, message, self.plan.meta, stats)
            bar.update(self.codec.lm.model_evals - evals)
            bar.total = bar.n + self._encode_calls_left(schedule, state)
            checked = {} if checker is None else {"checked": f"{checker.checked}/{index + 1} batches"}
            bar.set_postfix(images=f"{state.samples_done}/{self.plan.samples}", batch=size,
                            rate=f"{self._rate_effective(state):.4f}", **checked)
            if saving:
                self._collect_vlb(stats)
                if checker is not None:  # a checkpoint holds checked batches only
                    checker.wait()
                    stats["checked_batches"] = checker.checked
                    stats["decode_seconds"] = check_seconds + checker.seconds
                    stats["check_model_evals"] = check_evals + checker.model_evals
                self._save(state, traces)
        return state

    def _rate_effective(self, state: CodecState) -> float:
        return (message_bits(state.message) - state.stats["initial_bits"]) / max(self.plan.dims(self.batch_sizes[:state.batches_done]), 1)

    def _collect_trace(self, traces: Dict[str, list]) -> None:
        trace = self.codec.trace
        if trace is None:
            return
        for key, value in trace.as_arrays().items():
            if len(value):
                traces.setdefault(key, []).append(np.asarray(value)[-1])

    def _start_clock(self) -> None:
        self._clock = (time.time(), self.codec.lm.model_evals)
        self._vlb_since_clock = 0.0  # VLB time inside this clock's span: not coding time

    def _add_vlb(self, stats: Dict[str, Any], pending: List[tuple]) -> None:
        """Evaluate the VLB of the images coded since the last call, as one batch: growing schedules
        code one image at a time at first, and the VLB's noise depends on image ids only. While the
        check runs alongside, on a third thread (`_vlb_pool`): the cores the encoder and the checker
        leave idle while they wait for each other take it, and `_collect_vlb` adds it up."""
        x = np.concatenate([xs for xs, _ in pending])
        ids = np.concatenate([np.asarray(i) for _, i in pending])
        pending.clear()
        if self._vlb_pool is not None:
            self._vlb_jobs.append(self._vlb_pool.submit(self._timed_vlb, x, ids))
            return
        totals, spent = self._timed_vlb(x, ids)
        self._vlb_since_clock += spent
        self._add_vlb_totals(stats, totals, spent)

    def _timed_vlb(self, x: np.ndarray, ids: np.ndarray) -> tuple:
        started = time.time()
        return self.vlb_fn(x, ids), time.time() - started

    @staticmethod
    def _add_vlb_totals(stats: Dict[str, Any], totals: np.ndarray, spent: float) -> None:
        stats["vlb_seconds"] = stats.get("vlb_seconds", 0.0) + spent
        stats["vlb_sum"] += float(np.sum(totals))
        stats["vlb_count"] += len(totals)

    def _collect_vlb(self, stats: Dict[str, Any]) -> None:
        """Wait for the VLB batches on the third thread and add them to `stats` (before a save)."""
        for job in self._vlb_jobs:
            self._add_vlb_totals(stats, *job.result())
        self._vlb_jobs.clear()

    def _save_due(self, samples_done: int, batch: int, final: bool) -> bool:
        """Save when a batch (of `batch` images) crossed a multiple of save_interval samples, when
        save_minutes have passed since the last save, and at the end."""
        return (final or samples_done // self.save_interval > (samples_done - batch) // self.save_interval
                or _now() - self._last_save >= self.save_seconds)

    def _maybe_save(self, state: CodecState, traces, batch: int, final: bool) -> None:
        if self._save_due(state.samples_done, batch, final):
            self._save(state, traces)

    def _save(self, state: CodecState, traces) -> None:
        started, evals0 = self._clock
        key = f"{state.phase}_seconds"
        state.stats[key] = state.stats.get(key, 0.0) + time.time() - started - self._vlb_since_clock
        state.stats["model_evals"] = state.stats.get("model_evals", 0) + self.codec.lm.model_evals - evals0
        state.arrays = {k: np.stack(v) for k, v in traces.items() if v}
        state.save(self._path(state.phase, state.samples_done))
        self._last_save = _now()
        self._start_clock()

    # --- decode ----------------------------------------------------------------------------------
    def _verify_batch(self, index: int, batch_ids: np.ndarray, original: np.ndarray, decoded: np.ndarray) -> None:
        """Raise RoundtripError unless a decoded batch equals the input and the files on disk."""
        original = np.asarray(original, dtype=np.int64)  # the encoder's batches already are: no copy
        if not np.array_equal(decoded, original):
            bad = [int(batch_ids[j]) for j in range(len(batch_ids)) if not np.array_equal(decoded[j], original[j])]
            raise RoundtripError(
                f"rank {self.plan.rank}, batch {index}: decoded images differ from the input for image ids "
                f"{bad[:10]}; the message in {self.run_dir} must not be trusted (model outputs were not "
                "bit-identical between encode and decode: check determinism settings and the device)"
            )
        changed = self.dataset.mismatches_on_disk(batch_ids, decoded)  # the files themselves, re-read
        if changed:
            raise RoundtripError(f"rank {self.plan.rank}, batch {index}: decoded images are not the pictures on "
                                 f"disk: {'; '.join(changed[:5])}; {self.run_dir} would not restore them")

    def check(self, encoded: CodecState) -> CodecState:
        """The roundtrip check's result: from the checker that ran alongside the encoder when it
        checked every batch, else from decoding the whole message now (`decode`)."""
        sizes = coded_batch_sizes(encoded)
        if self.check_codec is None or encoded.stats.get("checked_batches") != len(sizes):
            return self.decode(encoded)
        self.batch_sizes = list(sizes)
        stats = {"decode_seconds": encoded.stats.get("decode_seconds", 0.0),
                 "model_evals": encoded.stats.get("check_model_evals", 0),
                 "message_restored": True, "checked_alongside": True}
        return CodecState("decode", len(sizes), self.plan.samples, self.initial_message(), self.plan.meta, stats)

    def decode(self, encoded: CodecState) -> CodecState:
        """Pop every batch (last first, `decoder.pop_batches`: the loop decode.py runs), compare
        with the input, and check the initial bits came back."""
        pin_torch_threads()
        sizes = coded_batch_sizes(encoded)
        self.batch_sizes = list(sizes)
        starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        state = self._resume("decode")
        total_batches = len(sizes)
        if state is None:
            state = CodecState("decode", 0, 0, encoded.message, self.plan.meta,
                               {"decode_seconds": 0.0, "model_evals": 0})
        message = state.message
        steps = self.codec.lm.num_steps
        bar = self._bar("decode", state.batches_done * steps, total_batches * steps)
        self._start_clock()
        evals = self.codec.lm.model_evals
        for done, batch in enumerate(pop_batches(self.codec, message, sizes, state.batches_done), state.batches_done):
            index, message = batch.index, batch.message
            size = sizes[index]
            batch_ids = self.plan.ids[starts[index]:starts[index] + size]
            self._verify_batch(index, batch_ids, self.dataset.get_batch(batch_ids), batch.images)
            state = CodecState("decode", done + 1, state.samples_done + size, message, self.plan.meta, state.stats)
            bar.update(self.codec.lm.model_evals - evals)
            evals = self.codec.lm.model_evals
            bar.set_postfix(images=f"{state.samples_done}/{self.plan.samples}", batch=size)
            self._maybe_save(state, {}, size, final=done + 1 == total_batches)
        bar.close()
        restored = cs.message_equal(message, self.initial_message())
        state.stats["message_restored"] = bool(restored)
        if not restored:
            raise RoundtripError(
                f"rank {self.plan.rank}: all images decoded, but the message did not return to the initial random "
                "bits; the bits-back accounting is broken"
            )
        return state


def summarize(states: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Aggregate per-rank statistics (lists gathered on rank 0) into dataset-level rates."""
    dims = sum(s["dims"] for s in states)
    final_bits = sum(s["final_bits"] for s in states)
    initial_bits = sum(s["initial_bits"] for s in states)
    consumed = sum(s["consumed_bits"] or 0.0 for s in states)
    total_bytes = sum(s["final_bytes"] for s in states)
    vlb_count = sum(s["vlb_count"] for s in states)
    lanes = sum(s["lanes"] for s in states)
    return {
        "samples": sum(s["samples"] for s in states),
        "rate_total": 8.0 * total_bytes / dims,
        "rate_effective": (final_bits - initial_bits) / dims,
        "rate_used": (final_bits - initial_bits + consumed) / dims,
        "bytes_total": total_bytes,
        "initial_bytes": sum(s["initial_bytes"] for s in states),
        "initial_bytes_used": consumed / 8.0,
        "initial_bytes_per_lane": consumed / 8.0 / lanes if lanes else None,
        "vlb": sum(s["vlb_sum"] for s in states) / vlb_count if vlb_count else None,
        "encode_seconds": max(s["encode_seconds"] for s in states),  # coding only, without the VLB pass
        "vlb_seconds": max(s.get("vlb_seconds", 0.0) for s in states) if vlb_count else None,
        "decode_seconds": max(s.get("decode_seconds", 0.0) for s in states),
        "model_evaluations": sum(s["model_evals"] for s in states),
    }


def coded_batch_sizes(encoded: CodecState) -> List[int]:
    """The batch sizes an encode used, in coding order, from its state (its schedule)."""
    return list(BatchSchedule.from_dict(encoded.stats["schedule"]).sizes)


def rank_stats(plan: EncodePlan, encoded: CodecState, decoded: Optional[CodecState]) -> Dict[str, Any]:
    stats = dict(encoded.stats)
    sizes = coded_batch_sizes(encoded)
    return {
        "dims": plan.dims(sizes),
        "samples": plan.samples,
        "lanes": int(np.prod(plan.head_shape)),
        "batches": run_lengths(sizes),
        "final_bits": message_bits(encoded.message),
        "final_bytes": 4 * len(cs.flatten(encoded.message)),
        "initial_bits": stats["initial_bits"],
        "initial_bytes": stats["initial_bytes"],
        "consumed_bits": stats.get("consumed_bits"),
        "vlb_sum": stats.get("vlb_sum", 0.0),
        "vlb_count": stats.get("vlb_count", 0),
        "encode_seconds": stats.get("encode_seconds", 0.0),
        "vlb_seconds": stats.get("vlb_seconds", 0.0),
        "decode_seconds": decoded.stats.get("decode_seconds", 0.0) if decoded else 0.0,
        "model_evals": stats.get("model_evals", 0) + (decoded.stats.get("model_evals", 0) if decoded else 0),
        "roundtrip_ok": decoded is not None and decoded.stats.get("message_restored", False),
        "check_alongside": decoded is not None and bool(decoded.stats.get("checked_alongside", False)),
    }


def gather_stats(stats: Dict[str, Any], run_dir: str, rank: int, world_size: int,
                 show_progress: bool = True) -> Optional[List[Dict[str, Any]]]:
    """Every rank's stats on rank 0 (None elsewhere), through files: no collective that can time out
    while ranks finish hours apart (see `rank_results`)."""
    write_rank_results(run_dir, rank, stats)
    if rank != 0:
        return None
    return wait_for_rank_results(run_dir, world_size, show_progress=show_progress, log=logger.log)
