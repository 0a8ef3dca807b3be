"""Checkpoint loading: pickled code never runs, the log names the file loaded and why, README names."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from bits_back_diffusion.models import ModelLoadError, load_model, resolve_checkpoint
from improved_diffusion import dist_util, logger
from improved_diffusion.checkpoint_io import CheckpointReadError

REPO = Path(__file__).resolve().parents[1]


class _Payload:
    """Unpickling this object runs `code` (what a hostile checkpoint does)."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return (exec, (self.code,))


def plant(path: Path, marker: Path) -> Path:
    """A .pt file whose unpickling writes `marker`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": _Payload(f"open({str(marker)!r}, 'w').write('payload ran')")}, path)
    return path


def _toy_checkpoint(directory: Path, step: int, evil: str, marker: Path) -> None:
    """A toy run dir's checkpoint step whose `evil` file ('model', 'opt' or 'state') carries a payload."""
    directory.mkdir(parents=True)
    model = nn.Linear(2, 2)
    good = {
        "model": model.state_dict(),
        "opt": torch.optim.AdamW(model.parameters()).state_dict(),
        "state": {"format": 1, "step": step},
    }
    for name, value in good.items():
        path = directory / f"{name}{step:06d}.pt"
        if name == evil:
            plant(path, marker)
        else:
            torch.save(value, path)


ENTRY_POINTS = r"""
import json, sys
import torch, torch.nn as nn
from omegaconf import OmegaConf
from bits_back_diffusion.models import load_model
from improved_diffusion import dist_util
from improved_diffusion.train_util import TrainLoop

work, flags_path, control = sys.argv[1], sys.argv[2], sys.argv[3]
flags = json.load(open(flags_path))
results = {}


class Diffusion:
    num_timesteps = 4


def model_cfg(path):
    diffusion = dict(flags["diffusion"], timestep_respacing=flags["timestep_respacing"])
    return OmegaConf.create({"evaluator": {"model_path": path}, "model": flags["model"], "diffusion": diffusion})


def train_loop(save_dir, resume_checkpoint=None):
    TrainLoop(model=nn.Linear(2, 2), diffusion=Diffusion(), data=iter(()), batch_size=2, microbatch=-1, lr=1e-3,
              ema_rate=[0.9], log_interval=1, save_interval=1, resume_checkpoint=resume_checkpoint, max_steps=1,
              save_dir=save_dir, progress=False)


attempts = {
    "encode/compute_vlb: checkpoint file": lambda: load_model(model_cfg(f"{work}/evil_model.pt"), torch.device("cpu")),
    "encode/compute_vlb: run dir": lambda: load_model(model_cfg(f"{work}/evil_run"), torch.device("cpu")),
    "decode: shared loader": lambda: dist_util.load_state_dict(f"{work}/evil_model.pt", what="model weights"),
    "train resume: model file": lambda: train_loop(f"{work}/train_model"),
    "train resume: optimizer file": lambda: train_loop(f"{work}/train_opt"),
    "train resume: trainer state": lambda: train_loop(f"{work}/train_state"),
    "train resume: resume_checkpoint": lambda: train_loop(f"{work}/fresh", f"{work}/evil_src/model000003.pt"),
}
for name, attempt in attempts.items():
    try:
        attempt()
        results[name] = "loaded"
    except Exception as exc:
        results[name] = f"{type(exc).__name__}: {exc}"
# Control: the same kind of file, unpickled the unsafe way, does run its payload in this process.
torch.load(control, weights_only=False)
print("RESULTS " + json.dumps(results))
"""


@pytest.mark.parametrize("force_unsafe_default", [False, True])
def test_planted_payload_never_runs_through_any_loader(tmp_path, fixtures_dir, force_unsafe_default):
    markers = tmp_path / "markers"
    markers.mkdir()
    plant(tmp_path / "evil_model.pt", markers / "model_file")
    plant(tmp_path / "evil_run" / "ema_0.9999_000010.pt", markers / "run_dir")
    plant(tmp_path / "evil_src" / "model000003.pt", markers / "resume_checkpoint")
    for part in ("model", "opt", "state"):
        _toy_checkpoint(tmp_path / f"train_{part}", 1, part, markers / f"train_{part}")
    control_marker = tmp_path / "control_ran"
    plant(tmp_path / "control.pt", control_marker)

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    if force_unsafe_default:
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"  # torch's default then unpickles anything
    script = tmp_path / "entry_points.py"
    script.write_text(textwrap.dedent(ENTRY_POINTS))
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(fixtures_dir / "tiny_cifar_vlb.json"), str(tmp_path / "control.pt")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.split("RESULTS ")[-1])
    assert len(results) == 7
    for name, outcome in results.items():
        assert "holds pickled objects other than tensors" in outcome and "refusing to load it" in outcome, (name, outcome)
        assert "exec" in outcome, (name, outcome)  # names what was refused
    assert sorted(os.listdir(markers)) == []  # no payload ran
    assert control_marker.exists()  # ... although the files' payloads do work when unpickled unsafely


def test_model_loading_logs_the_path_and_why(tmp_path, fixtures_dir):
    flags = json.loads((fixtures_dir / "tiny_cifar_vlb.json").read_text())
    ckpt = fixtures_dir / "tiny_cifar_vlb.pt"
    cfg = OmegaConf.create({"evaluator": {"model_path": str(ckpt)}, "model": flags["model"],
                            "diffusion": dict(flags["diffusion"], timestep_respacing=flags["timestep_respacing"])})
    logger.configure(str(tmp_path), format_strs=["log"])
    try:
        load_model(cfg, torch.device("cpu"))
    finally:
        logger.reset()
    assert f"loading model weights from {ckpt} (evaluator.model_path)" in (tmp_path / "log.txt").read_text()


def test_truncated_model_file_is_named_as_unreadable(tmp_path, fixtures_dir):
    data = (fixtures_dir / "tiny_cifar_vlb.pt").read_bytes()
    (tmp_path / "run").mkdir()
    for step in (1, 2):
        (tmp_path / "run" / f"ema_0.9999_{step:06d}.pt").write_bytes(data if step == 1 else data[: len(data) // 3])
    flags = json.loads((fixtures_dir / "tiny_cifar_vlb.json").read_text())
    cfg = OmegaConf.create({"evaluator": {"model_path": str(tmp_path / "run")}, "model": flags["model"],
                            "diffusion": dict(flags["diffusion"], timestep_respacing=flags["timestep_respacing"])})
    with pytest.raises(ModelLoadError, match=r"(?s)ema_0.9999_000002.pt is unreadable \(truncated\?\).*"
                       r"evaluator.model_path=.*ema_0.9999_000001.pt"):
        load_model(cfg, torch.device("cpu"))


def test_weights_only_cannot_be_switched_off(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    with pytest.raises(ValueError, match="always reads checkpoints with weights_only=True"):
        dist_util.load_state_dict(str(tmp_path / "ok.pt"), weights_only=False)
    assert torch.equal(dist_util.load_state_dict(str(tmp_path / "ok.pt"))["w"], torch.ones(2))
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointReadError, match=r"empty.pt is unreadable \(truncated\?\)") as info:
        dist_util.load_state_dict(str(tmp_path / "empty.pt"))
    assert not info.value.unsafe


# ---------------------------------------------------------------- the reference README's file names


@pytest.mark.parametrize(
    "default, readme_name",
    [("cifar10_uncond_vlb_50M_500K.pt", "cifar_vlb.pt"), ("imagenet64_uncond_vlb_100M_1500K.pt", "imagenet_vlb.pt")],
)
def test_readme_download_names_are_accepted_when_the_default_is_missing(tmp_path, default, readme_name):
    (tmp_path / readme_name).write_bytes(b"fake")
    logger.configure(str(tmp_path), format_strs=["log"])
    try:
        assert resolve_checkpoint(str(tmp_path / default)) == (str(tmp_path / readme_name), None)
        (tmp_path / default).write_bytes(b"fake")  # the default name wins when it exists
        assert resolve_checkpoint(str(tmp_path / default)) == (str(tmp_path / default), None)
    finally:
        logger.reset()
    assert f"{tmp_path / default} is missing; using {tmp_path / readme_name}" in (tmp_path / "log.txt").read_text()


def test_missing_public_checkpoint_without_readme_name_still_says_how_to_download(tmp_path):
    with pytest.raises(ModelLoadError, match=r"(?s)does not exist.*curl -L -o"):
        resolve_checkpoint(str(tmp_path / "cifar10_uncond_vlb_50M_500K.pt"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "cifar_vlb.pt"))
