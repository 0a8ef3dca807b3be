"""Building the model and diffusion the scripts evaluate, from a checkpoint file or a run dir.

A run dir is self-describing: its `.hydra/config.yaml` holds the architecture and process that
trained it, so evaluation never retypes architecture flags.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from improved_diffusion import dist_util
from improved_diffusion.respace import SpacedDiffusion
from improved_diffusion.script_util import create_gaussian_diffusion, create_model
from improved_diffusion.unet import UNetModel

from .checkpoints import newest_ema_checkpoint, state_dict_sha256, strip_module_prefix

PUBLIC_CHECKPOINT_URL = "https://openaipublic.blob.core.windows.net/diffusion/march-2021/{name}"
PUBLIC_CHECKPOINTS = ("cifar10_uncond_vlb_50M_500K.pt", "imagenet64_uncond_vlb_100M_1500K.pt")

# Keys of the diffusion config that describe how to *evaluate*, not what was trained.
_EVALUATION_KEYS = ("timestep_respacing",)


class ModelLoadError(ValueError):
    """The checkpoint cannot be found or does not fit the configured model."""


@dataclass
class LoadedModel:
    model: UNetModel
    diffusion: SpacedDiffusion
    checkpoint: str
    sha256: str
    model_cfg: Dict[str, Any]
    diffusion_cfg: Dict[str, Any]


def download_hint(path: str) -> str:
    """The command that fetches a public checkpoint to `path`, or how to make one."""
    name = os.path.basename(path)
    if name in PUBLIC_CHECKPOINTS:
        return f"download it with:\n  mkdir -p {os.path.dirname(path) or '.'} && curl -L -o {path} {PUBLIC_CHECKPOINT_URL.format(name=name)}"
    lines = ["download a public checkpoint with one of:"]
    for public in PUBLIC_CHECKPOINTS:
        lines.append(f"  curl -L -o outputs/pretrained/{public} {PUBLIC_CHECKPOINT_URL.format(name=public)}")
    lines.append("or train one with `python train.py` and pass evaluator.model_path=<its run dir>")
    return "\n".join(lines)


def resolve_checkpoint(model_path: str) -> tuple[str, Optional[str]]:
    """(checkpoint file, run dir or None) for a file or a run directory."""
    path = os.path.abspath(os.path.expanduser(str(model_path)))
    if os.path.isdir(path):
        ckpt = newest_ema_checkpoint(path)
        if ckpt is None:
            raise ModelLoadError(
                f"no EMA checkpoint (ema_<rate>_<step>.pt) in run dir {path}; train longer, or pass a "
                f"checkpoint file as evaluator.model_path"
            )
        return ckpt, path
    if not os.path.isfile(path):
        raise ModelLoadError(f"checkpoint {path} does not exist; {download_hint(str(model_path))}")
    return path, None


def run_dir_config(run_dir: str) -> Optional[DictConfig]:
    """The resolved training config saved by Hydra in a run dir, if any."""
    cfg_path = os.path.join(run_dir, ".hydra", "config.yaml")
    return OmegaConf.load(cfg_path) if os.path.isfile(cfg_path) else None


def _plain(section: Any) -> Dict[str, Any]:
    return dict(OmegaConf.to_container(section, resolve=True)) if OmegaConf.is_config(section) else dict(section)


def model_and_diffusion_cfg(cfg: DictConfig, run_dir: Optional[str]) -> tuple[Dict[str, Any], Dict[str, Any]]:
    """Model and diffusion flags: the run dir's training config wins over the command line's,
    except for evaluation choices such as the respacing."""
    model_cfg, diffusion_cfg = _plain(cfg.model), _plain(cfg.diffusion)
    saved = run_dir_config(run_dir) if run_dir else None
    if saved is not None:
        model_cfg = _plain(saved.model)
        trained = _plain(saved.diffusion)
        for key in _EVALUATION_KEYS:
            trained[key] = diffusion_cfg.get(key, trained.get(key))
        diffusion_cfg = trained
    return model_cfg, diffusion_cfg


def load_model(cfg: DictConfig, device: torch.device) -> LoadedModel:
    """Build the UNet and the respaced diffusion and load `cfg.evaluator.model_path` strictly."""
    ckpt, run_dir = resolve_checkpoint(cfg.evaluator.model_path)
    model_cfg, diffusion_cfg = model_and_diffusion_cfg(cfg, run_dir)
    model = create_model(**model_cfg)
    try:
        state = strip_module_prefix(dist_util.load_state_dict(ckpt, map_location="cpu"))
    except Exception as exc:  # torch raises many types for a damaged file
        raise ModelLoadError(f"cannot read checkpoint {ckpt}: {exc}; the file may be truncated, download it again") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelLoadError(
            f"checkpoint {ckpt} does not match the model config {model_cfg}: {str(exc)[:600]}\n"
            "choose the matching model=... group, or pass the training run dir as evaluator.model_path"
        ) from None
    model.to(device).eval()
    diffusion = create_gaussian_diffusion(**diffusion_cfg)
    return LoadedModel(model, diffusion, ckpt, state_dict_sha256(state), model_cfg, diffusion_cfg)


def check_data_fits_model(loaded: LoadedModel, channels: int, image_size: int, num_levels: int) -> None:
    """Refuse data the model cannot describe, naming both sides."""
    expected = (loaded.model.in_channels, loaded.model_cfg["image_size"], loaded.diffusion.num_levels)
    got = (channels, image_size, num_levels)
    if expected != got:
        raise ModelLoadError(
            f"data (channels, image size, levels) = {got} but the model expects {expected}; "
            "pick the data=... matching the model, or the model for this data"
        )
