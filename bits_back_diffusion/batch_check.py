"""The roundtrip check of each batch on a second thread, while the encoder codes the next one.

Why: encode.py proves its message by decoding it (`check=true`), which doubles the model calls.
On a CPU the model of a small image gains little from a second torch thread at the small batches
of a growing schedule (the demo's 8x8 UNet at batch 1-12: 1 thread 2.5-10.2 ms per call, 2 threads
3.2-8.9 ms, on the 2-core machine), so running the encoder and the check side by side, each on half
of the rank's cores, nearly halves the wall time of `python encode.py data=digits`.

Why checking batch by batch proves the file: a decoder is a function of the message. Decoding
batch k from the message M_k left after pushing it must give back the batch's images and exactly
the message M_{k-1} it was pushed onto (heads, tail words and generator borrowings:
`cs.message_equal`). With that shown for every k, the full decode that decode.py runs, from the
final message downwards, meets M_{n-1}, M_{n-2}, ... in turn and ends at the initial message M_0,
the very comparisons `DatasetCoder.decode` makes; the checker runs the same `pop_batch` as that
loop, with the same codec settings, on its own codec (codecs keep per-call state).

Bit-exactness of the two streams: torch's CPU thread count is one setting for the whole process
(and changes a model's last bits at some batch sizes), so both streams run with the count the file
and checkpoints record; the compiled codec's results do not depend on numba's thread count.

Resuming: the encoder waits for the checker before every checkpoint, so a checkpoint's batches
are all checked (`checked_batches` in its stats) and a resumed run goes on checking alongside; a
run whose checkpoints hold unchecked batches (`check=false` before, or an older version) decodes
everything after encoding, as without this module.
"""
from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import Any, Callable, Iterator, NamedTuple, Optional

import numpy as np

import craystack as cs

from .decoder import pop_batch
from .runtime import pin_torch_threads

THREAD_SAFE_LAYERS = ("omp", "tbb")  # numba threading layers that two threads may use at once

Verify = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]  # (index, image ids, input, decoded)


class RoundtripError(RuntimeError):
    """A decoded batch differs from the input, or popping it did not give back the message it was
    pushed onto: the compressed message is not trustworthy."""


class _Job(NamedTuple):
    index: int
    ids: np.ndarray
    images: np.ndarray  # what the encoder pushed
    before: cs.Message  # the message the batch was pushed onto
    after: cs.Message   # the message once it was pushed


class AlongsideChecker:
    """Decodes each submitted batch on a worker thread. `verify` compares the images with the input
    and the files (and raises); the checker compares the message it gets back with the one the
    batch was pushed onto. The first failure stops the worker and is raised in the caller's thread
    by the next `submit` or `wait`. At most `depth` batches wait, so a slow check holds the encoder
    back instead of piling up messages."""

    def __init__(self, codec, verify: Verify, threads: int, depth: int = 2):
        self.codec = codec
        self.verify = verify
        self.threads = int(threads)
        self.checked = 0
        self.seconds = 0.0
        self._jobs: "queue.Queue[Optional[_Job]]" = queue.Queue(maxsize=max(int(depth), 1))
        self._error: Optional[BaseException] = None
        self._cancelled = False
        self._worker = threading.Thread(target=self._run, name="bbd-check", daemon=True)
        self._worker.start()

    @property
    def model_evals(self) -> int:
        return int(self.codec.lm.model_evals)

    def submit(self, index: int, ids: np.ndarray, images: np.ndarray, before: cs.Message, after: cs.Message) -> None:
        """Check batch `index` (image `ids`, the `images` pushed) popped from `after` back to `before`."""
        self._raise_failure()
        self._jobs.put(_Job(index, np.asarray(ids), images, before, after))

    def wait(self) -> None:
        """Return once every submitted batch is checked; raise the first failure."""
        self._jobs.join()
        self._raise_failure()

    def close(self, cancel: bool = False) -> None:
        """Stop the worker once the batches already submitted are checked, or with `cancel` (the
        encoder failed) once the batch being checked is; safe to call more than once."""
        self._cancelled = self._cancelled or cancel
        if self._worker.is_alive():
            self._jobs.put(None)
            self._worker.join()

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        import numba

        numba.set_num_threads(self.threads)  # numba's count is per thread; torch's is the process's
        while True:
            job = self._jobs.get()
            try:
                if job is None:
                    return
                if self._error is None and not self._cancelled:
                    self._check(job)
            except BaseException as exc:  # handed to the encoder's thread, which raises it
                self._error = exc
            finally:
                self._jobs.task_done()

    def _check(self, job: _Job) -> None:
        started = time.time()
        decoded = pop_batch(self.codec, job.after, len(job.images), job.index, job.index + 1)
        self.verify(job.index, job.ids, job.images, decoded.images)
        if not cs.message_equal(decoded.message, job.before):
            raise RoundtripError(
                f"batch {job.index}: its images decoded, but popping it did not give back the message it was pushed "
                "onto; the bits-back accounting is broken and the message must not be trusted")
        self.checked = job.index + 1
        self.seconds += time.time() - started


def alongside_threads(check: bool, alongside: bool, device: Any) -> int:
    """torch threads for each of the encoder and the checker when the check runs alongside, 0 when
    it runs after the encode: on a GPU (untested there, and the CUDA coder's kernels share one
    device), without a check, with fewer than two CPU threads to split, or on numba's workqueue
    layer, which aborts when two threads start threaded passes at once (OpenMP and TBB do not)."""
    import numba
    import torch

    if not (check and alongside) or str(getattr(device, "type", device)) != "cpu":
        return 0
    pin_torch_threads()  # starts numba's threading layer, if nothing has yet, keeping torch's count
    if numba.threading_layer() not in THREAD_SAFE_LAYERS:
        return 0
    threads = torch.get_num_threads()
    return threads // 2 if threads >= 2 else 0


def use_threads(threads: int) -> None:
    """Run torch (the whole process) and this thread's numba kernels on `threads` threads."""
    import numba
    import torch

    torch.set_num_threads(int(threads))
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


@contextlib.contextmanager
def threads_restored() -> Iterator[None]:
    """Put torch's and this thread's numba thread counts back afterwards (in-process callers)."""
    import numba
    import torch

    saved = torch.get_num_threads(), numba.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        numba.set_num_threads(saved[1])
