"""Builders shared by tests: tiny models saved as run dirs, and running the scripts for real."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from improved_diffusion.script_util import create_model

REPO_ROOT = Path(__file__).resolve().parents[1]

TINY_MODEL = dict(
    image_size=8, num_channels=32, num_res_blocks=1, learn_sigma=True, class_cond=False, use_checkpoint=False,
    attention_resolutions="", num_heads=1, num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0,
    channel_mult="1,2", in_channels=1,
)
TINY_DIFFUSION = dict(
    steps=40, learn_sigma=True, sigma_small=False, noise_schedule="cosine", use_kl=True, predict_xstart=False,
    rescale_timesteps=True, rescale_learned_sigmas=True, timestep_respacing="", num_levels=17,
)


def make_run_dir(path: Path, seed: int = 0, model: Optional[Dict] = None, diffusion: Optional[Dict] = None,
                 step: int = 0, perturb: float = 0.05) -> Path:
    """A run dir like train.py leaves: .hydra/config.yaml plus an EMA checkpoint of random weights.

    Every parameter (also the zero-initialised output layers) gets N(0, perturb^2) noise so the
    model's outputs are non-trivial.
    """
    model_cfg = dict(TINY_MODEL, **(model or {}))
    diffusion_cfg = dict(TINY_DIFFUSION, **(diffusion or {}))
    torch.manual_seed(seed)
    net = create_model(**model_cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * perturb)
    path.mkdir(parents=True, exist_ok=True)
    (path / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create({"model": model_cfg, "diffusion": diffusion_cfg}), path / ".hydra" / "config.yaml")
    torch.save(net.state_dict(), path / f"ema_0.9999_{step:06d}.pt")
    return path


def compose_cfg(config_name: str, overrides) -> DictConfig:
    """The script's Hydra config with `overrides`, composed in-process (run a script's run(cfg) without a subprocess)."""
    from hydra import compose, initialize_config_dir

    from bits_back_diffusion import runtime

    runtime.register_resolvers()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "config"), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


def script_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    env = dict(os.environ)
    env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "HYDRA_FULL_ERROR": "1",
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")})
    env.update(extra or {})
    return env


def mpiexec_command(ranks: int) -> List[str]:
    """`mpiexec -n <ranks>`; a missing mpiexec fails the test (the test extra installs mpich), so the
    MPI tests never pass by being skipped."""
    import pytest

    exe = shutil.which("mpiexec")
    if exe is None:
        pytest.fail("mpiexec not found: install the test extra (pip install -e '.[test]' brings mpich)")
    return [exe, "-n", str(ranks)]


def run_script(script: str, overrides: List[str], timeout: float = 600, check: bool = True,
               launcher: Optional[List[str]] = None, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run `python <script> <overrides>` from the repo root, as a user would (`env`: extra variables)."""
    cmd = (launcher or []) + [sys.executable, str(REPO_ROOT / script)] + overrides
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=script_env(env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def decode_script() -> ModuleType:
    """decode.py's command line as a library module (`main(argv)` composes config/decode.yaml with
    the overrides, as the script does), to run it in-process (no interpreter start-up)."""
    from bits_back_diffusion import decode_cli

    return decode_cli


def read_pngs(folder: Path, numbers) -> List[np.ndarray]:
    """decode.py's <i:05d>.png files as (C, H, W) uint8 arrays."""
    from PIL import Image

    out = []
    for i in numbers:
        pixels = np.asarray(Image.open(Path(folder) / f"{i:05d}.png"))
        out.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
    return out
