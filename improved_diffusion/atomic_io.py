"""Writing a file so that readers only ever see the old or the complete new version."""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import BinaryIO, Callable, Iterator, List

# What schedulers send to stop or preempt a job (SLURM: SIGTERM, and SIGUSR1/SIGUSR2 as set up by
# submitit), and Ctrl-C.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")
                     if hasattr(signal, name))


@contextlib.contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Hold the stop signals' Python handlers until the block ends, then run them (the default
    action for a signal that had no Python handler).

    Why: a handler that raises (submitit's preemption handler exits the process) inside a writer
    running in C++ (torch.save's zip writer) leaves that writer broken, and the job then dies with
    the writer's error instead of its handler's clean exit; deferred, the file is completed first.
    Only the main thread can swap handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: List[int] = []
    previous = {}
    for signum in STOP_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is None or handler is signal.SIG_IGN:  # set outside Python, or ignored: left alone
            continue
        previous[signum] = handler
        signal.signal(signum, lambda received, frame: caught.append(received))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in caught:
            signal.raise_signal(signum)


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file in `path`'s folder, sync it, then rename it over `path`.

    A run killed mid-write (checkpoints, compressed files) leaves the previous file intact and
    no partial one under the real name; the hidden temporary is removed if anything fails. A stop
    signal that arrives during the write is handled once the file is complete
    (`stop_signals_deferred`)."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with stop_signals_deferred():
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
