"""Run dirs are never clobbered: refused runs change nothing, a live run locks its dir, default
dirs never collide, and a launch's config files never overwrite an earlier launch's."""
from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict

import pytest
from omegaconf import OmegaConf

from bits_back_diffusion import run_dir as run_dirs
from bits_back_diffusion import runtime
from helpers import REPO_ROOT, compose_cfg, make_run_dir, mpiexec_command, run_script, script_env
from improved_diffusion import dist_util

if str(REPO_ROOT) not in sys.path:  # the scripts live at the repo root
    sys.path.insert(0, str(REPO_ROOT))

ENCODE = ["data=digits", "wandb.mode=disabled", "evaluator.num_samples=2", "data.val.batch_size=2",
          "diffusion.timestep_respacing=3", "check=false", "compare_classical=false", "evaluator.compute_vlb=false"]
VLB = ["data=digits", "wandb.mode=disabled", "evaluator.num_samples=2", "data.val.batch_size=2",
       "diffusion.timestep_respacing=3"]
TRAIN = ["+experiment=digits", "model.num_res_blocks=1", "model.dropout=0.0", "diffusion.steps=50",
         "diffusion.timestep_respacing=", "trainer.batch_size=4", "trainer.log_interval=1", "trainer.save_interval=1",
         "trainer.max_steps=1", "trainer.lr_anneal_steps=0", "wandb.mode=disabled"]


def digests(folder: Path) -> Dict[str, str]:
    """md5 of every file under `folder` (hidden ones and .hydra included), by relative path."""
    return {str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("model") / "run", seed=0)


# ------------------------------------------------------------------ refused runs change nothing


def run_in_process(script: str, overrides, run_dir: Path):
    """The script's run(cfg, run_dir) in this process (no interpreter start-up)."""
    module = importlib.import_module(script[:-3])
    try:
        return module.run(compose_cfg(script[:-3], overrides), str(run_dir))
    finally:
        dist_util.cleanup_dist()


@pytest.mark.parametrize("script", ["encode.py", "compute_vlb.py", "train.py"])
def test_a_refused_run_leaves_every_file_of_the_run_dir_byte_identical(script, model_dir, tmp_path):
    """Hydra used to write the refused launch's .hydra/*.yaml before the run could refuse it."""
    run_dir = tmp_path / "run"
    if script == "train.py":
        first, refused, reason = TRAIN, TRAIN + ["model.num_channels=64"], "num_channels"  # another architecture
    else:
        base = ENCODE if script == "encode.py" else VLB
        first = base + [f"evaluator.model_path={model_dir}"]
        if script == "encode.py":  # checkpoints of another model: the resume is refused
            refused, reason = base + [f"evaluator.model_path={make_run_dir(tmp_path / 'other', seed=1)}"], "different model"
        else:
            refused, reason = base + [f"evaluator.model_path={tmp_path / 'missing.pt'}"], "missing.pt"
    run_in_process(script, first, run_dir)
    before = digests(run_dir)
    assert ".hydra/config.yaml" in before and "log.txt" in before
    proc = run_script(script, refused + [f"hydra.run.dir={run_dir}"], check=False)
    assert proc.returncode != 0 and reason in proc.stderr, proc.stderr[-2000:]
    assert digests(run_dir) == before


def test_an_accepted_rerun_keeps_the_first_config_and_records_its_own(model_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ENCODE + [f"evaluator.model_path={model_dir}"]
    run_in_process("encode.py", args, run_dir)
    first = digests(run_dir)
    run_in_process("encode.py", args, run_dir)  # the same launch again: nothing new under .hydra
    assert [p for p in digests(run_dir) if p.startswith(".hydra")] == [".hydra/config.yaml"]
    run_in_process("encode.py", args + ["compare_classical=true"], run_dir)  # accepted: not part of the message
    now = digests(run_dir)
    assert now[".hydra/config.yaml"] == first[".hydra/config.yaml"]
    assert "compare_classical: true" in (run_dir / ".hydra" / "launch2" / "config.yaml").read_text()


def test_launch_configs_are_numbered_and_never_overwritten(tmp_path):
    folder = str(tmp_path / ".hydra")
    assert run_dirs.save_launch_config(folder, {"config.yaml": "a: 1\n"}) == folder
    assert run_dirs.save_launch_config(folder, {"config.yaml": "a: 1\n"}) == folder
    assert run_dirs.save_launch_config(folder, {"config.yaml": "a: 2\n"}) == os.path.join(folder, "launch2")
    assert run_dirs.save_launch_config(folder, {"config.yaml": "a: 3\n"}) == os.path.join(folder, "launch3")
    assert run_dirs.save_launch_config(folder, {"config.yaml": "a: 2\n"}) == os.path.join(folder, "launch2")
    assert (tmp_path / ".hydra" / "config.yaml").read_text() == "a: 1\n"
    assert (tmp_path / ".hydra" / "launch3" / "config.yaml").read_text() == "a: 3\n"


# ------------------------------------------------------------------ the lock

HOLDER = textwrap.dedent("""
    import sys, time
    from bits_back_diffusion.run_dir import RunDirLock
    RunDirLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(600)
""")


def start_holder(run_dir: Path) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO_ROOT, env=script_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_into_a_locked_dir_is_refused_at_once_naming_the_holder(model_dir, tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir)
    try:
        before = digests(run_dir)
        started = time.monotonic()
        proc = run_script("encode.py", ENCODE + [f"evaluator.model_path={model_dir}", f"hydra.run.dir={run_dir}"],
                          check=False)
        took = time.monotonic() - started
        assert proc.returncode != 0
        assert f"in use by another run (pid {holder.pid} on" in proc.stderr, proc.stderr[-2000:]
        assert "loading model" not in proc.stdout  # refused before any work
        assert digests(run_dir) == before
        assert took < 60
    finally:
        holder.kill()
        holder.wait()


def test_kill_minus_9_leaves_no_stale_lock(tmp_path):
    run_dir = tmp_path / "run"
    holder = start_holder(run_dir)
    with pytest.raises(run_dirs.RunDirBusy, match=f"pid {holder.pid}"):
        run_dirs.RunDirLock(str(run_dir)).acquire()
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (run_dir / run_dirs.LOCK_NAME).exists()  # the file stays, the lock does not
    lock = run_dirs.RunDirLock(str(run_dir)).acquire()
    assert f"pid {os.getpid()} on" in (run_dir / run_dirs.LOCK_NAME).read_text()
    lock.release()
    assert not (run_dir / run_dirs.LOCK_NAME).exists()


def test_the_lock_is_held_by_the_run_and_released_after_it(tmp_path):
    rt = runtime.setup(OmegaConf.create({"seed": 0}), run_dir=str(tmp_path))
    try:
        with pytest.raises(run_dirs.RunDirBusy, match=f"pid {os.getpid()}"):
            runtime.setup(OmegaConf.create({"seed": 0}), run_dir=str(tmp_path))
    finally:
        rt.release()
        dist_util.cleanup_dist()
    run_dirs.RunDirLock(str(tmp_path)).acquire().release()


# ------------------------------------------------------------------ default run dirs


def test_two_default_run_dirs_in_the_same_second_differ(tmp_path, monkeypatch):
    monkeypatch.setattr(run_dirs, "default_stamp", lambda: "2001-02-03/04-05-06")
    runtime.register_resolvers()
    prefix = tmp_path / "outputs" / "encode"
    first = OmegaConf.create({"dir": f"${{fresh_run_dir:{prefix}}}"}).dir
    second = OmegaConf.create({"dir": f"${{fresh_run_dir:{prefix}}}"}).dir
    assert first == str(prefix / "2001-02-03" / "04-05-06")
    assert second == first + "-1"
    assert os.path.isdir(first) and os.path.isdir(second)


@pytest.mark.parametrize("config", ["train", "encode", "decode", "compute_vlb", "mode/submitit",
                                    "mode/submitit_local"])
def test_two_sweeps_in_the_same_second_get_two_sweep_dirs(tmp_path, monkeypatch, config):
    """`-m` sweeps started in the same second (a script submitting two SLURM sweeps) must not share
    a sweep dir: their jobs' run dirs (<sweep dir>/<job num>) would collide, and a later job
    would resume an earlier sweep's checkpoints under another config."""
    monkeypatch.setattr(run_dirs, "default_stamp", lambda: "2001-02-03/04-05-06")
    monkeypatch.chdir(tmp_path)
    runtime.register_resolvers()
    sweep = OmegaConf.load(REPO_ROOT / "config" / f"{config}.yaml").hydra.sweep
    raw = OmegaConf.to_container(sweep)["dir"].replace("${hydra.job.name}", "job")
    first = OmegaConf.create({"dir": raw}).dir
    second = OmegaConf.create({"dir": raw}).dir
    assert first == os.path.join("outputs", "job", "multirun", "2001-02-03", "04-05-06")
    assert second == first + "-1"
    assert os.path.isdir(first) and os.path.isdir(second)


def test_a_launched_config_keeps_its_run_dir_when_unpickled(tmp_path, monkeypatch):
    """A requeued SLURM job rebuilds its config from the launcher's pickle: same dir, no new one."""
    runtime.register_resolvers()
    cfg = OmegaConf.create({"dir": f"${{fresh_run_dir:{tmp_path}}}"})
    chosen = cfg.dir
    blob = pickle.dumps(cfg)
    monkeypatch.setattr(run_dirs, "default_stamp", lambda: "2001-02-03/04-05-06")
    assert pickle.loads(blob).dir == chosen
    assert [p.name for p in Path(chosen).parent.iterdir()] == [Path(chosen).name]


@pytest.mark.mpi
def test_two_mpiexec_jobs_with_default_run_dirs_get_one_dir_each(model_dir, tmp_path):
    """Rank 0 of each job picks the dir (a suffix when another job took the name) and shares it."""
    cmd = [*mpiexec_command(2), sys.executable, str(REPO_ROOT / "compute_vlb.py"), *VLB,
           f"evaluator.model_path={model_dir}"]
    jobs = [subprocess.Popen(cmd, cwd=tmp_path, env=script_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    for job in jobs:
        assert job.wait(timeout=300) == 0, job.stderr.read()[-3000:]
    dirs = sorted(p.parent for p in (tmp_path / "outputs" / "compute_vlb").glob("*/*/results.json"))
    assert len(dirs) == 2, dirs
    for run_dir in dirs:
        assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / ".hydra" / "rank1" / "config.yaml").is_file()
    assert len(list((tmp_path / "outputs" / "compute_vlb").glob("*/*"))) == 2  # no stray dir of a rank
