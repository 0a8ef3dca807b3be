"""encode.py end to end through its Hydra CLI: results, resume after SIGKILL, clear refusals."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO_ROOT, make_run_dir, run_script, script_env

BASE = ["data=digits", "wandb.mode=disabled", "evaluator.num_samples=8", "data.val.batch_size=2",
        "diffusion.timestep_respacing=12", "save_interval=2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("model") / "run", seed=0)


def encode_args(model_dir, run_dir, *extra):
    return BASE + [f"evaluator.model_path={model_dir}", f"hydra.run.dir={run_dir}", *extra]


def final_message(run_dir: Path, samples: int = 8) -> np.ndarray:
    with np.load(run_dir / f"encode-ckpt{samples}.npz") as data:
        return data["message"].copy()


@pytest.fixture(scope="module")
def uninterrupted(model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("enc") / "run"
    run_script("encode.py", encode_args(model_dir, run_dir, "evaluator.compute_vlb=true", "codec.track=true"))
    return run_dir


def test_results_json_and_outputs(uninterrupted):
    results = json.loads((uninterrupted / "results.json").read_text())
    for key in ("samples", "steps", "respacing", "prior_prec", "latent_prec", "obs_prec", "vlb", "rate_total",
                "rate_used", "rate_effective", "encode_seconds", "decode_seconds", "model_evaluations", "roundtrip_ok"):
        assert key in results, key
    assert results["samples"] == 8 and results["steps"] == 12 and results["roundtrip_ok"] is True
    assert results["classical"]["png_per_image"] > 0 and "webp_mosaic" in results["classical"]
    assert results["rate_total"] > results["rate_used"] > results["rate_effective"] > 0
    # bitswap grows its batches from one image: a tiny message holds no deficit of 2 images yet
    runs, = results["batch_schedule"]
    sizes = [size for size, count in runs for _ in range(count)]
    assert sizes[0] == 1 and sum(sizes) == 8 and max(sizes) <= 2
    assert results["lane_images"] == 1 and results["grow_batches"] is True
    # one model call per step per batch, in encode and in decode
    assert results["model_evaluations"] == 2 * len(sizes) * 12
    assert (uninterrupted / "codec_trace.npz").exists() and (uninterrupted / "codec_trace.png").exists()
    trace = np.load(uninterrupted / "codec_trace.npz")
    assert trace["pop_bits"].shape == (len(sizes), 12)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    start = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended ({proc.returncode}) before {path.name} appeared:\n{proc.stdout.read()}")
        if time.time() - start > timeout:
            proc.kill()
            raise AssertionError(f"{path.name} did not appear within {timeout}s")
        time.sleep(0.02)


@pytest.mark.parametrize("phase", ["encode", "decode"])
def test_sigkill_then_resume_gives_identical_message(model_dir, uninterrupted, tmp_path, phase):
    run_dir = tmp_path / "run"
    after = ["check_alongside=false"] if phase == "decode" else []  # the decode that follows the encode
    cmd = [sys.executable, str(REPO_ROOT / "encode.py")] + encode_args(model_dir, run_dir, *after)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(run_dir / f"{phase}-ckpt2.npz", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "results.json").exists(), "the run finished before it could be killed"
    resumed = run_script("encode.py", encode_args(model_dir, run_dir, *after))
    assert f"RESUMING {phase}" in resumed.stdout + resumed.stderr
    np.testing.assert_array_equal(final_message(run_dir), final_message(uninterrupted))
    assert json.loads((run_dir / "results.json").read_text())["roundtrip_ok"] is True


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_resume_with_a_different_model_is_refused(model_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_script("encode.py", encode_args(model_dir, run_dir, "evaluator.num_samples=2", "check=false"))
    before = {p.name: sha(p) for p in run_dir.glob("*.npz")}
    other = make_run_dir(tmp_path / "other", seed=1)
    proc = run_script("encode.py", encode_args(other, run_dir, "evaluator.num_samples=2", "check=false"), check=False)
    assert proc.returncode != 0
    assert "different model" in proc.stderr
    assert {p.name: sha(p) for p in run_dir.glob("*.npz")} == before


def test_corrupt_checkpoint_is_refused_and_kept(model_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_script("encode.py", encode_args(model_dir, run_dir, "evaluator.num_samples=2", "check=false"))
    ckpt = run_dir / "encode-ckpt2.npz"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    damaged = sha(ckpt)
    proc = run_script("encode.py", encode_args(model_dir, run_dir, "evaluator.num_samples=2", "check=false"), check=False)
    assert proc.returncode != 0
    assert "corrupt or truncated" in proc.stderr and "encode-ckpt2.npz" in proc.stderr
    assert sha(ckpt) == damaged


def test_images_of_the_wrong_shape_are_refused(tmp_path, fixtures_dir):
    proc = run_script("encode.py", ["data=digits", "wandb.mode=disabled", "model=tiny",
                                    f"evaluator.model_path={fixtures_dir / 'tiny_cifar_vlb.pt'}",
                                    f"hydra.run.dir={tmp_path / 'run'}"], check=False)
    assert proc.returncode != 0
    assert "(1, 8, 17) but the model expects (3, 32, 17)" in proc.stderr


def test_images_outside_the_level_range_are_refused(tmp_path, model_dir):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.full((8, 8), 200, np.uint8), mode="L").save(folder / "a.png")
    proc = run_script("encode.py", encode_args(model_dir, tmp_path / "run", "data=folder", f"data.val.data_dir={folder}",
                                               "data.channels=1", "data.num_levels=17", "data.image_size=8", "evaluator.num_samples=1"),
                      check=False)
    assert proc.returncode != 0
    assert "200" in proc.stderr and "17" in proc.stderr
