"""End-to-end checks of the local SLURM cluster (tests/slurm/start_slurm.sh)
through submitit, and of the Hydra launcher modes config/mode/submitit*.yaml."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

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

pytestmark = pytest.mark.timeout(120)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


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


@pytest.mark.slurm
def test_plain_job_returns_result(slurm_cluster, tmp_path):
    job = slurm_cluster.executor(tmp_path).submit(_square_plus, 7, 1)
    value, host = job.result()
    assert value == 50
    assert host
    # accounting works: the final state is visible through sacct
    assert wait_final(job, timeout=30).startswith("COMPLETED")


@pytest.mark.slurm
def test_two_tasks_see_their_rank(slurm_cluster, tmp_path):
    job = slurm_cluster.executor(tmp_path, tasks_per_node=2).submit(_task_env)
    envs = job.results()
    assert len(envs) == 2
    assert sorted(e["SLURM_PROCID"] for e in envs) == ["0", "1"]
    assert {e["SLURM_NTASKS"] for e in envs} == {"2"}
    assert len({e["SLURM_JOB_ID"] for e in envs}) == 1
    assert wait_final(job, timeout=30).startswith("COMPLETED")


@pytest.mark.slurm
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


# ---------------------------------------------------------------- Hydra modes
# A throw-away Hydra app that uses the project's config/ only through its
# search path, so the mode files are tested on their own.  It must be a real
# file: the launcher pickles the task function and the job imports it again.
_APP = """
import json, os
import hydra
from hydra.core.hydra_config import HydraConfig
from bits_back_diffusion.runtime import register_resolvers

register_resolvers()  # the mode files' sweep dir: ${fresh_run_dir:...}

@hydra.main(version_base=None, config_path="conf", config_name="app")
def main(cfg):
    rec = {k: os.environ.get(k) for k in ("SLURM_PROCID", "SLURM_NTASKS", "SUBMITIT_EXECUTOR")}
    rec["x"] = cfg.x
    rank = rec["SLURM_PROCID"] or "local"
    with open(os.path.join(HydraConfig.get().runtime.output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(rec, f)

if __name__ == "__main__":
    main()
"""


def _make_app(root: Path) -> Path:
    (root / "conf").mkdir(parents=True)
    (root / "conf" / "app.yaml").write_text(
        textwrap.dedent(
            f"""\
            hydra:
              searchpath:
                - file://{CONFIG_DIR}
            x: 0
            """
        )
    )
    (root / "app.py").write_text(_APP)
    return root


def _run_app(root: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "app.py", *args], cwd=root, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _records(root: Path):
    out = {}
    for f in sorted((root / "outputs" / "app" / "multirun").glob("*/*/*/rank*.json")):
        out.setdefault(f.parent.name, []).append(json.loads(f.read_text()))
    return out


@pytest.mark.parametrize(
    "mode, target",
    [("submitit", "SlurmLauncher"), ("submitit_local", "LocalLauncher")],
)
def test_mode_config_composes(tmp_path, mode, target):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from omegaconf import OmegaConf

    root = _make_app(tmp_path)
    out = _run_app(root, f"+mode={mode}", "hydra.launcher.gpus_per_node=3", "--cfg", "hydra").stdout
    hy = OmegaConf.create(out).hydra
    assert hy.launcher._target_.endswith(target)
    assert hy.launcher.gpus_per_node == 3
    assert hy.launcher.tasks_per_node == 3  # follows the GPUs
    assert hy.launcher.nodes == 1
    raw = OmegaConf.to_container(hy, resolve=False)
    assert raw["sweep"]["dir"] == "${fresh_run_dir:outputs/${hydra.job.name}/multirun}"
    if mode == "submitit":
        assert hy.launcher.partition is None


def test_submitit_local_mode_runs(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    root = _make_app(tmp_path)
    _run_app(
        root, "-m", "+mode=submitit_local",
        "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=1", "x=1,2",
    )
    recs = _records(root)
    assert sorted(recs) == ["0", "1"]
    assert sorted(r[0]["x"] for r in recs.values()) == [1, 2]
    assert all(r[0]["SUBMITIT_EXECUTOR"] == "local" for r in recs.values())
    # both jobs in the one sweep dir the launcher reserved, and no folder reserved for nothing
    outputs = root / "outputs" / "app"
    assert [p.name for p in outputs.iterdir()] == ["multirun"]
    sweeps = [p for p in (outputs / "multirun").glob("*/*")]
    assert len(sweeps) == 1 and sorted(p.name for p in sweeps[0].iterdir() if p.name.isdigit()) == ["0", "1"]


@pytest.mark.slurm
def test_submitit_mode_runs_on_slurm(slurm_cluster, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    root = _make_app(tmp_path)
    _run_app(
        root, "-m", "+mode=submitit",
        f"hydra.launcher.partition={slurm_cluster.partition}",
        "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=2",
        "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
        "hydra.launcher.timeout_min=5", "x=1,2",
    )
    recs = _records(root)
    assert sorted(recs) == ["0", "1"], recs  # one SLURM job per sweep point
    for num, ranks in recs.items():
        assert sorted(r["SLURM_PROCID"] for r in ranks) == ["0", "1"]
        assert {r["SLURM_NTASKS"] for r in ranks} == {"2"}
        assert {r["x"] for r in ranks} == {int(num) + 1}
        assert {r["SUBMITIT_EXECUTOR"] for r in ranks} == {"slurm"}
