"""A SLURM job requeued mid-run runs again in the same run dir and resumes there (issue 6).

`train.py -m` goes to the local cluster (tests/slurm/start_slurm.sh) through Hydra's submitit
launcher. Once the job has written a checkpoint it is requeued, in one of the two ways a real
cluster does it:

* ``usr2``: ``scancel --signal=USR2`` -- the signal SLURM sends before the time limit (submitit's
  ``--signal=USR2@120``) and that clusters can be set to send on preemption; submitit calls the
  launcher's ``checkpoint()``, rewrites the job pickle and runs ``scontrol requeue`` itself;
* ``requeue``: ``scontrol requeue`` -- what slurmctld does for ``PreemptMode=REQUEUE`` (and an
  admin requeue): the tasks are killed and the batch script starts again from the same pickle.

The run dir keeps the sweep dir the launcher reserved (``${fresh_run_dir:}`` of config/train.yaml
and of the mode files), so the second start finds the checkpoints and resumes from the newest one.
The runs are started from a temporary folder so they use these default, timestamped sweep dirs.
"""
from __future__ import annotations

import pickle
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
from omegaconf import OmegaConf

from bits_back_diffusion import run_dir as run_dirs
from bits_back_diffusion import runtime
from helpers import REPO_ROOT, script_env
from improved_diffusion.train_util import find_resume_checkpoint

try:
    from slurm_helpers import FINAL_STATES, poll_job, slurm_cluster, wait_final  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.slurm_helpers import FINAL_STATES, poll_job, slurm_cluster, wait_final  # noqa: F401

# The tiny digits model of tests/test_train.py: several steps a second on one CPU core.
TRAIN = [
    "+experiment=digits", "model.num_res_blocks=1", "model.dropout=0.0", "diffusion.steps=50",
    "diffusion.timestep_respacing=", "trainer.batch_size=8", "trainer.log_interval=5", "trainer.lr_anneal_steps=0",
    "wandb.mode=disabled",
]
# timeout_min > 10: submitit counts a USR2 within min(0.8 * limit, limit - 10 min) of the start as a
# preemption (requeued); with a shorter limit every USR2 is a timeout, and Hydra's launcher allows
# no timeouts (max_num_timeout=0), so the job would end instead of being requeued.
LAUNCHER_KEYS = ["hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
                 "hydra.launcher.timeout_min=30"]


# ---------------------------------------------------------------- unit: the fix in runtime.py


def test_sweep_dir_survives_pickling_like_a_launched_config(tmp_path, monkeypatch):
    """The submitit launcher pickles the composed config and the job (or its requeued rerun)
    rebuilds its sweep config from it with Hydra's copy_cache: the sweep dir must come back as the
    one the launcher reserved, not a new one reserved when the job (re)started."""
    runtime.register_resolvers()
    sweep = f"${{fresh_run_dir:{tmp_path}/outputs/train/multirun}}"
    master = OmegaConf.create({"sweep": sweep})
    launched = master.sweep  # the launcher resolves the sweep dir before it submits
    blob = pickle.dumps(master)
    monkeypatch.setattr(run_dirs, "default_stamp", lambda: "2001-02-03/04-05-06")  # a later start
    later = OmegaConf.create({"sweep": sweep}).sweep  # what a job resolving it anew would get
    assert later.endswith("2001-02-03/04-05-06")
    job_master = pickle.loads(blob)
    assert job_master.sweep == launched
    sweep_config = OmegaConf.create({"sweep": sweep})
    OmegaConf.copy_cache(from_config=job_master, to_config=sweep_config)  # Hydra's load_sweep_config
    assert sweep_config.sweep == launched != later


def test_rank_dependent_subdir_is_not_cached(monkeypatch):
    """Each task of a launched job must keep its own .hydra subdir, not the launcher's (rank 0's)."""
    runtime.register_resolvers()
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    cfg = OmegaConf.create({"out": "${hydra_subdir:}"})
    assert cfg.out == ".hydra"
    restored = pickle.loads(pickle.dumps(cfg))
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert restored.out == ".hydra/rank1"


# ---------------------------------------------------------------- the real cluster


def _wait_for(what: str, check: Callable[[], Optional[object]], timeout: float, alive: Callable[[], None],
              interval: float = 0.2) -> object:
    """Poll `check` until it returns something truthy; `alive` raises when waiting is pointless."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        alive()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else f"({path} does not exist)"


@pytest.mark.slurm
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "how, mode, tasks, max_steps",
    [
        # The documented mode; two tasks: rank 1 must ignore the signal.
        # Rank 0 leaves as soon as the signal arrives, so few steps suffice.
        ("usr2", "+mode=submitit", 2, 40),
        # Hydra's launcher without the mode: config/train.yaml's sweep dir. submitit
        # ignores the SIGTERM of a requeue, so training goes on until SIGKILL, some seconds later:
        # on an idle machine 250 steps were all done by then (about 10 ms a step), hence 1000.
        ("requeue", "hydra/launcher=submitit_slurm", 1, 1000),
    ],
)
def test_requeued_training_resumes_in_the_same_run_dir(slurm_cluster, tmp_path, how, mode, tasks, max_steps):
    pytest.importorskip("submitit")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from submitit.slurm.slurm import SlurmJob

    t0 = time.monotonic()
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), "-m", mode,
           f"hydra.launcher.partition={slurm_cluster.partition}", f"hydra.launcher.tasks_per_node={tasks}",
           *LAUNCHER_KEYS, *TRAIN, f"trainer.max_steps={max_steps}", f"trainer.save_interval={max_steps // 8}"]
    launcher_log = tmp_path / "launcher.log"
    multirun = tmp_path / "outputs" / "train" / "multirun"
    job = None
    with open(launcher_log, "w") as log:
        # cwd=tmp_path: the default, timestamped sweep dir outputs/train/multirun/<date>/<time>
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=script_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        def launcher_alive() -> None:
            if proc.poll() is not None:
                found = sorted(str(p.relative_to(tmp_path)) for p in multirun.glob("*/*/*"))
                raise AssertionError(f"the Hydra launcher exited early ({proc.returncode}); run dirs: {found}\n"
                                     f"{_tail(launcher_log)}")

        def submitted() -> Optional[Path]:
            found = [p for p in multirun.glob("*/*/.submitit/*") if p.is_dir()]
            return found[0] if len(found) == 1 else None

        job_folder = _wait_for("the job's submitit folder", submitted, 60, launcher_alive)
        sweep_dir = job_folder.parents[1]
        job_id = job_folder.name  # `<id>` or `<array id>_<index>`
        run_dir = sweep_dir / "0"
        rank0_out = job_folder / f"{job_id}_0_log.out"
        job = SlurmJob(folder=job_folder.parent / "%j", job_id=job_id)

        def job_running() -> None:
            launcher_alive()
            state = job.get_info(mode="force").get("State") or "UNKNOWN"
            if state.split()[0] in FINAL_STATES:
                raise AssertionError(f"job {job_id} ended ({state}) before its first checkpoint:\n{_tail(rank0_out)}")

        # Wait for a complete checkpoint (the model file is written last).
        _wait_for(f"a checkpoint in {run_dir}", lambda: find_resume_checkpoint(str(run_dir)), 120, job_running)
        signal_cmd = (["scancel", "--signal=USR2", job_id] if how == "usr2" else ["scontrol", "requeue", job_id])
        sent = subprocess.run(signal_cmd, capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, f"{' '.join(signal_cmd)} failed: {sent.stderr}"

        state = poll_job(job, lambda s: s == "PENDING" or s.split()[0] in FINAL_STATES, timeout=90)
        assert state == "PENDING", (
            f"job {job_id} was not requeued after {' '.join(signal_cmd)} (state {state}); "
            f"did it finish all {max_steps} steps first?\n{_tail(rank0_out)}")
        # The old tasks are gone (PENDING comes after COMPLETING), so this is what a restart finds.
        newest = find_resume_checkpoint(str(run_dir))
        assert newest is not None and 0 < newest < max_steps, newest
        # slurmctld holds a requeued job back (BeginTime, about 2 minutes); let it start now.
        begin = subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"],
                               capture_output=True, text=True, timeout=30)
        assert begin.returncode == 0, f"could not release requeued job {job_id}: {begin.stderr}"

        try:
            proc.wait(timeout=360)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"job {job_id} did not finish after the requeue:\n{_tail(rank0_out)}") from None
        assert proc.returncode == 0, f"launcher failed ({proc.returncode}):\n{_tail(launcher_log)}\n{_tail(rank0_out)}"
        assert wait_final(job, timeout=30).startswith("COMPLETED")
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)
        if job is not None and not job.done(force_check=True):
            subprocess.run(["scancel", job.job_id], capture_output=True, timeout=30)

    # One SLURM job that ran twice.
    history = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", job_id, "-o", "State"],
                             capture_output=True, text=True, timeout=30).stdout.split()
    assert history[0] == "REQUEUED" and history[-1] == "COMPLETED", history

    # Both starts used the same run dir, and no other run dir appeared.
    assert [p.relative_to(multirun) for p in multirun.glob("*/*")] == [sweep_dir.relative_to(multirun)]
    log = (run_dir / "log.txt").read_text()
    starts = re.findall(rf"^rank 0/{tasks} on \S+; run dir (.+)$", log, flags=re.M)
    assert starts == [str(run_dir)] * 2, starts

    # The second start resumed from the newest checkpoint; none restarted from step 0.
    resumed = [int(n) for n in re.findall(r"RESUMING TRAINING AT STEP (\d+)", log)]
    assert resumed == [newest], (resumed, newest)
    assert f"training finished at step {max_steps}" in log
    for name in (f"model{max_steps:06d}.pt", f"opt{max_steps:06d}.pt", f"ema_0.999_{max_steps:06d}.pt"):
        assert (run_dir / name).is_file(), name

    job_log = rank0_out.read_text(errors="replace")
    assert job_log.count("Starting with JobEnvironment") == 2
    if how == "usr2":  # submitit's own path: a preemption (not a timeout), checkpoint(), requeue
        assert "this job is preempted" in job_log and f"Requeued job {job_id}" in job_log
    print(f"{how}: requeued at step {newest}; {time.monotonic() - t0:.0f} s")
