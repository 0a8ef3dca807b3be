"""End-to-end checks of the local SLURM cluster (tests/slurm/start_slurm.sh)
through submitit, the same path the Hydra submitit launcher takes."""

import sys

import pytest

try:
    from slurm_helpers import poll_job, slurm_cluster, wait_final  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.slurm_helpers import poll_job, slurm_cluster, wait_final  # noqa: F401

submitit = pytest.importorskip("submitit")
cloudpickle = pytest.importorskip("cloudpickle")

# The jobs unpickle the submitted functions in a fresh interpreter where this
# test module is not importable, so ship the functions by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(120)]


def _square_plus(x, y):
    import socket

    return x * x + y, socket.gethostname()


def _task_env():
    import os

    return {k: os.environ.get(k) for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_JOB_ID", "SLURM_LOCALID")}


def _sleep(seconds):
    import time

    time.sleep(seconds)
    return "not cancelled"


def test_plain_job_returns_result(slurm_cluster, tmp_path):
    job = slurm_cluster.executor(tmp_path).submit(_square_plus, 7, 1)
    value, host = job.result()
    assert value == 50
    assert host
    # accounting works: the final state is visible through sacct
    assert wait_final(job, timeout=30).startswith("COMPLETED")


def test_two_tasks_see_their_rank(slurm_cluster, tmp_path):
    job = slurm_cluster.executor(tmp_path, tasks_per_node=2).submit(_task_env)
    envs = job.results()
    assert len(envs) == 2
    assert sorted(e["SLURM_PROCID"] for e in envs) == ["0", "1"]
    assert {e["SLURM_NTASKS"] for e in envs} == {"2"}
    assert len({e["SLURM_JOB_ID"] for e in envs}) == 1
    assert wait_final(job, timeout=30).startswith("COMPLETED")


def test_cancelled_job_reaches_cancelled_state(slurm_cluster, tmp_path):
    job = slurm_cluster.executor(tmp_path).submit(_sleep, 300)
    poll_job(job, lambda s: s == "RUNNING", timeout=30)
    job.cancel()
    state = wait_final(job, timeout=30)
    assert state.startswith("CANCELLED"), state
    assert job.done(force_check=True)
    # No result was written: result() must raise promptly, not hang.
    job._results_timeout_s = 0  # submitit otherwise waits 15 s for a late pickle
    with pytest.raises(submitit.core.utils.UncompletedJobError):
        job.result()
