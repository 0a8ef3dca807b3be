"""tests/cuda_sim in numba's CUDA simulator: a pytest subprocess started as soon as the suite has
been collected (tests/conftest.py), whose result tests/test_cuda_coder.py collects.

Why in the background: the simulator runs every GPU thread as Python and compiles the per-lane
functions on their own, about three minutes on one core, while pytest runs one test at a time
and leaves the second core of a 2-core machine mostly idle. Started early and at a lower
priority, it is usually done before its test is reached, and the suite's other tests keep the
CPU first."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import IO, Optional, Tuple

from helpers import REPO_ROOT

TEST_NAME = "test_cuda_coder.py::test_cuda_kernels_in_the_simulator"
THREADS_PER_BLOCK = "4"  # few threads, many lanes each: the block scans' runs and strides are exercised

_process: Optional[subprocess.Popen] = None
_log: Optional[IO[bytes]] = None
_started = 0.0


def start() -> None:
    """Start the simulator run (once)."""
    global _process, _log, _started
    if _process is not None:
        return
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1", "BBD_CUDA_THREADS": THREADS_PER_BLOCK}
    _log = tempfile.TemporaryFile()
    _started = time.monotonic()
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/cuda_sim"]
    nice = shutil.which("nice")  # a lower priority, without a fork hook in this threaded process
    _process = subprocess.Popen(([nice, "-n", "10"] if nice else []) + command, cwd=REPO_ROOT, env=env, stdout=_log,
                                stderr=subprocess.STDOUT)


def result(timeout: float) -> Tuple[int, str, float]:
    """(exit status, output, seconds since the start) of the run, started now if it was not yet;
    waits at most `timeout` seconds from its start."""
    start()
    try:
        _process.wait(timeout=max(1.0, timeout - (time.monotonic() - _started)))
    except subprocess.TimeoutExpired:
        stop()
        raise
    _log.seek(0)
    return _process.returncode, _log.read().decode(errors="replace"), time.monotonic() - _started


def stop() -> None:
    """End the run if it is still going (the session ends before its test, say after -x), and
    drop its log."""
    global _log
    if _process is not None and _process.poll() is None:
        _process.kill()
        _process.wait()
    if _log is not None:
        _log.close()
        _log = None
