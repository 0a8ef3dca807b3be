"""compute_vlb.py and encode.py submitted to the local SLURM cluster through Hydra's submitit
launcher (`-m +mode=submitit`), two tasks each: torch.distributed comes from SLURM's variables."""
from __future__ import annotations

import json

import pytest

from helpers import make_run_dir, run_script

try:
    from slurm_helpers import slurm_cluster  # noqa: F401
except ImportError:  # tests/ imported as a package
    from tests.slurm_helpers import slurm_cluster  # noqa: F401

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(600)]

LAUNCHER = ["-m", "+mode=submitit", "hydra.launcher.gpus_per_node=0", "hydra.launcher.tasks_per_node=2",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10"]
COMMON = ["data=digits", "wandb.mode=offline", "evaluator.num_samples=6", "data.val.batch_size=2",
          "diffusion.timestep_respacing=4"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("slurm_model") / "run", seed=7)


@pytest.mark.parametrize("script", ["compute_vlb.py", "encode.py"])
def test_two_task_job_writes_results(slurm_cluster, model_dir, tmp_path, script):
    sweep = tmp_path / "sweep"
    run_script(script, LAUNCHER + COMMON + [f"evaluator.model_path={model_dir}", f"hydra.sweep.dir={sweep}",
                                            f"hydra.launcher.partition={slurm_cluster.partition}"])
    results = json.loads((sweep / "0" / "results.json").read_text())
    assert results["world_size"] == 2 and results["samples"] == 6
    if script == "encode.py":
        assert results["roundtrip_ok"] is True
        assert (sweep / "0" / "encode-ckpt3.rank1.npz").exists()
    else:
        assert results["vlb"] > 0
