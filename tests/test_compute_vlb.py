"""compute_vlb.py through its Hydra CLI and through `run(cfg)` with hydra.compose."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from bits_back_diffusion import runtime
from helpers import REPO_ROOT, make_run_dir, run_script


@pytest.fixture(scope="module")
def tiny_png_folder(tmp_path_factory, fixtures_dir):
    """Three 32x32 RGB images: the two fixture images and one of noise."""
    folder = tmp_path_factory.mktemp("pngs")
    images = list(np.load(fixtures_dir / "tiny_cifar_vlb.npz")["x_uint8"].transpose(0, 2, 3, 1))
    images.append(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img_{i}.png")
    return folder


def test_cli_on_fixture_model_matches_reference_vlb(tiny_png_folder, fixtures_dir, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_script("compute_vlb.py", [
        "data=folder", f"data.val.data_dir={tiny_png_folder}", "model=tiny", "evaluator=fixture",
        "evaluator.num_samples=2", "data.val.batch_size=2", "wandb.mode=offline", f"hydra.run.dir={run_dir}",
    ])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["samples"] == 2 and results["steps"] == 100 and results["respacing"] == "vlb100"
    reference = np.load(fixtures_dir / "tiny_cifar_vlb.npz")["total_bpd"].mean()
    # Different noise draws than the fixture: agreement to Monte-Carlo precision only.
    assert abs(results["vlb"] - reference) < 0.5
    assert results["vlb_stderr"] > 0 and Path(results["model_path"]).name == "tiny_cifar_vlb.pt"
    curve = np.load(run_dir / "vlb_terms.npz")
    assert curve["vb"].shape == (100,) and curve["timesteps"][-1] == 3999
    assert (run_dir / "vlb_terms.png").stat().st_size > 1000
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert list((run_dir / "wandb").glob("offline-run-*")), "an offline W&B run should be written"
    assert "VLB" in proc.stdout + proc.stderr


def compose_cfg(overrides):
    runtime.register_resolvers()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "config"), version_base="1.3"):
        return compose(config_name="compute_vlb", overrides=overrides)


def test_run_reads_architecture_from_a_run_dir(tmp_path):
    import compute_vlb

    model_dir = make_run_dir(tmp_path / "train_run", seed=3)
    cfg = compose_cfg(["data=digits", f"evaluator.model_path={model_dir}", "evaluator.num_samples=3",
                       "diffusion.timestep_respacing=5", "wandb.mode=disabled"])
    # cfg.model is the digits demo architecture; the run dir's own (different) one must win
    assert cfg.model.num_res_blocks != 1
    from improved_diffusion import dist_util

    try:
        results = compute_vlb.run(cfg, str(tmp_path / "out"))
    finally:
        dist_util.cleanup_dist()
    assert results["samples"] == 3 and results["steps"] == 5
    assert np.isfinite(results["vlb"]) and results["model_path"].endswith("ema_0.9999_000000.pt")


def test_missing_checkpoint_prints_the_download_command(tmp_path):
    proc = run_script("compute_vlb.py", [
        "data=folder", f"data.val.data_dir={tmp_path}", "wandb.mode=disabled", f"hydra.run.dir={tmp_path / 'run'}",
        f"evaluator.model_path={tmp_path / 'cifar10_uncond_vlb_50M_500K.pt'}",
    ], check=False)
    assert proc.returncode != 0
    assert "curl -L -o" in proc.stderr and "cifar10_uncond_vlb_50M_500K.pt" in proc.stderr


def test_overrides_of_the_reference_scripts_compose():
    cfg = compose_cfg(["data=imagenet", "diffusion.timestep_respacing=vlb200", "evaluator.model_path=x.pt"])
    assert cfg.model.image_size == 64 and cfg.data.image_size == 64
    assert cfg.diffusion.timestep_respacing == "vlb200" and cfg.evaluator.model_path == "x.pt"
    assert cfg.data.val.data_dir and cfg.data.val.batch_size > 0 and cfg.evaluator.clip_denoised is True
