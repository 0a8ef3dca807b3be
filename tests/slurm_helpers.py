"""Pytest support for tests that need a real (local, one-node) SLURM cluster.

Usage in a test module::

    import pytest
    from slurm_helpers import slurm_cluster  # noqa: F401  (pytest fixture)

    pytestmark = pytest.mark.slurm

    def test_something(slurm_cluster, tmp_path):
        executor = slurm_cluster.executor(tmp_path, tasks_per_node=2)
        ...

The ``slurm_cluster`` fixture (session scope):

* uses the cluster if ``sinfo``/``sacct`` already answer (e.g. after
  ``bash tests/slurm/start_slurm.sh``);
* otherwise runs ``tests/slurm/start_slurm.sh`` (root only; it may install the
  Debian packages) and stops what it started at the end of the session unless
  ``BBD_SLURM_KEEP=1``; set ``BBD_SLURM_NO_AUTOSTART=1`` to never start it;
* when no cluster can be had: skips the test with the reason, or -- when the
  ``CI`` environment variable is set -- fails it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

import pytest

SLURM_DIR = Path(__file__).resolve().parent / "slurm"
START_SCRIPT = SLURM_DIR / "start_slurm.sh"
STOP_SCRIPT = SLURM_DIR / "stop_slurm.sh"
DEFAULT_PARTITION = os.environ.get("BBD_SLURM_PARTITION", "debug")

# States after which a job will not change any more (as reported by sacct).
FINAL_STATES = (
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED",
    "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
)
USABLE_NODE_STATES = ("idle", "mixed", "allocated", "completing")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def in_ci() -> bool:
    return _env_flag("CI")


def _run(cmd, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def slurm_available(partition: str = DEFAULT_PARTITION) -> Tuple[bool, str]:
    """Can jobs be submitted and followed through ``sacct`` right now?

    Returns ``(ok, reason)``; ``reason`` says what is missing when ``ok`` is false.
    """
    for tool in ("sinfo", "sbatch", "sacct", "scancel"):
        if shutil.which(tool) is None:
            return False, f"SLURM client tools not installed ({tool} not found on PATH)"
    try:
        info = _run(["sinfo", "-h", "-N", "-p", partition, "-o", "%N %T %c"])
    except (subprocess.TimeoutExpired, OSError) as exc:
        return False, f"sinfo did not answer: {exc}"
    if info.returncode != 0:
        return False, f"sinfo failed: {info.stderr.strip() or info.stdout.strip()}"
    nodes = [line.split() for line in info.stdout.splitlines() if line.strip()]
    if not nodes:
        return False, f"no node in partition {partition!r}"
    usable = [n for n in nodes if len(n) >= 2 and n[1].rstrip("*~#!%$@^-") in USABLE_NODE_STATES
              and not n[1].endswith("*")]
    if not usable:
        return False, "no usable node: " + ", ".join(" ".join(n[:2]) for n in nodes)
    try:
        acct = _run(["sacct", "-n", "-X", "-S", "now-1minutes", "-o", "JobID"])
    except (subprocess.TimeoutExpired, OSError) as exc:
        return False, f"sacct did not answer: {exc}"
    if acct.returncode != 0:
        return False, f"job accounting (sacct) not available: {acct.stderr.strip()}"
    return True, f"{len(usable)} usable node(s) in partition {partition!r}"


def start_cluster(timeout: float = 600.0) -> Tuple[bool, str]:
    """Run start_slurm.sh; returns ``(ok, output or reason)``."""
    if os.geteuid() != 0:
        return False, "cannot start SLURM: start_slurm.sh needs root"
    if not START_SCRIPT.exists():
        return False, f"{START_SCRIPT} not found"
    try:
        proc = _run(["bash", str(START_SCRIPT)], timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"start_slurm.sh did not finish within {timeout:.0f} s"
    out = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-15:])
        return False, f"start_slurm.sh failed (exit {proc.returncode}):\n{tail}"
    return True, out


@dataclass
class SlurmCluster:
    """What a test needs to know about the running cluster."""

    partition: str
    started_by_fixture: bool

    def executor(self, folder, **params: Any):
        """A ``submitit.AutoExecutor`` bound to this cluster.

        CPU-only defaults (``gpus_per_node=0``); ``params`` are passed to
        ``update_parameters`` with submitit's generic names (``tasks_per_node``,
        ``timeout_min``, ...) or ``slurm_*`` names.
        """
        import submitit

        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        defaults = dict(
            slurm_partition=self.partition,
            timeout_min=5,
            nodes=1,
            tasks_per_node=1,
            cpus_per_task=1,
            gpus_per_node=0,
        )
        defaults.update(params)
        ex.update_parameters(**defaults)
        return ex


def poll_job(job, predicate: Callable[[str], bool], timeout: float, interval: float = 0.5) -> str:
    """Refresh ``job``'s state through sacct until ``predicate(state)`` holds.

    sacct lags the scheduler by a second or two, so this forces a fresh query
    (``get_info(mode="force")``) each time.  Returns the last state seen; raises
    ``TimeoutError`` if the predicate never held.
    """
    deadline = time.monotonic() + timeout
    state = "UNKNOWN"
    while True:
        info = job.get_info(mode="force")
        state = info.get("State") or "UNKNOWN"
        if predicate(state):
            return state
        if time.monotonic() >= deadline:
            raise TimeoutError(f"job {job.job_id}: still {state!r} after {timeout:.0f} s")
        time.sleep(interval)


def wait_final(job, timeout: float = 60.0) -> str:
    """Wait until sacct reports a final state for ``job``; returns it."""
    return poll_job(job, lambda s: s.split()[0] in FINAL_STATES, timeout)


def _unavailable(reason: str) -> None:
    msg = f"SLURM cluster not available: {reason}"
    if in_ci():
        pytest.fail(msg + " (CI is set, so this is an error, not a skip)", pytrace=False)
    pytest.skip(msg)


_STATE: dict = {}


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node SLURM cluster with accounting (see module doc)."""
    partition = DEFAULT_PARTITION
    if "failure" in _STATE:  # do not retry a failed start for every test
        _unavailable(_STATE["failure"])
    ok, reason = slurm_available(partition)
    started = False
    if not ok:
        if _env_flag("BBD_SLURM_NO_AUTOSTART"):
            _STATE["failure"] = f"{reason}; autostart disabled (BBD_SLURM_NO_AUTOSTART)"
            _unavailable(_STATE["failure"])
        ok, out = start_cluster()
        if not ok:
            _STATE["failure"] = f"{reason}; {out}"
            _unavailable(_STATE["failure"])
        started = "started now : nothing" not in out
        ok, reason = slurm_available(partition)
        if not ok:
            _STATE["failure"] = f"start_slurm.sh ran but the cluster is not usable: {reason}"
            _unavailable(_STATE["failure"])
    yield SlurmCluster(partition=partition, started_by_fixture=started)
    if started and not _env_flag("BBD_SLURM_KEEP"):
        subprocess.run(["bash", str(STOP_SCRIPT)], capture_output=True, timeout=120)
