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

from improved_diffusion import dist_util, logger
from improved_diffusion.respace import SpacedDiffusion
from improved_diffusion.script_util import create_gaussian_diffusion, create_model
from improved_diffusion.unet import UNetModel

from .checkpoints import ema_checkpoints, newest_ema_checkpoint, state_dict_sha256, strip_module_prefix

PUBLIC_CHECKPOINT_URL = "https://openaipublic.blob.core.windows.net/diffusion/march-2021/{name}"
PUBLIC_CHECKPOINTS = ("cifar10_uncond_vlb_50M_500K.pt", "imagenet64_uncond_vlb_100M_1500K.pt")
# The names the reference implementation's README downloads these files to; accepted in the same
# folder when the default name is missing, so users who followed it need not rename anything.
README_CHECKPOINT_NAMES = {
    "cifar10_uncond_vlb_50M_500K.pt": "cifar_vlb.pt",
    "imagenet64_uncond_vlb_100M_1500K.pt": "imagenet_vlb.pt",
}

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


def readme_alias(path: str) -> Optional[str]:
    """The reference README's name for a missing public checkpoint, if that file exists beside it."""
    alias = README_CHECKPOINT_NAMES.get(os.path.basename(path))
    if alias is None or os.path.exists(path):
        return None
    candidate = os.path.join(os.path.dirname(path), alias)
    return candidate if os.path.isfile(candidate) else None


def resolve_checkpoint(model_path: str) -> tuple[str, Optional[str]]:
    """(checkpoint file, run dir or None) for a file or a run directory.

    A missing public checkpoint is looked for under its reference-README name too (logged)."""
    path = os.path.abspath(os.path.expanduser(str(model_path)))
    if os.path.isdir(path):
        ckpt = newest_ema_checkpoint(path)
        if ckpt is None:
            raise ModelLoadError(
                f"no EMA checkpoint (ema_<rate>_<step>.pt) in run dir {path}; train longer, or pass a "
                f"checkpoint file as evaluator.model_path"
            )
        return ckpt, path
    alias = readme_alias(path)
    if alias is not None:
        logger.log(f"{path} is missing; using {alias} (the reference README's name for {os.path.basename(path)})")
        return alias, None
    if not os.path.isfile(path):
        raise ModelLoadError(f"checkpoint {path} does not exist; {download_hint(str(model_path))}")
    return path, None


def checkpoint_reason(ckpt: str, run_dir: Optional[str], setting: str = "evaluator.model_path") -> str:
    """Why `ckpt` is the file loaded, for the log line that names it."""
    if run_dir is not None:
        return f"newest EMA checkpoint of run dir {run_dir}, given as {setting}"
    return setting


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


class WeightsMismatch(ModelLoadError):
    """A state dict that does not fit the architecture its flags describe (strict loading failed)."""


def parameter_count(model_cfg: Dict[str, Any]) -> int:
    """Numbers in the state dict `create_model(**model_cfg)` would have, counted on the meta device
    (nothing is allocated), so flags can be checked against a checkpoint, or refused, cheaply."""
    with torch.device("meta"):
        model = create_model(**model_cfg)
    return sum(t.numel() for t in model.state_dict().values())


def build_model(model_cfg: Dict[str, Any], diffusion_cfg: Dict[str, Any], state: Dict[str, torch.Tensor],
                device: torch.device) -> tuple[UNetModel, SpacedDiffusion]:
    """The one place a UNet is built from flags, given its weights (strictly) and put on `device`
    in eval mode, next to its process. Every loader (scripts' configs, a .bbd header, the
    benches) comes through here, so all of them build the same model from the same flags.

    Raises WeightsMismatch when `state` does not fit; errors of the diffusion flags propagate
    unchanged, for the caller to name."""
    model = create_model(**model_cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsMismatch(str(exc)) from None
    model.to(device).eval()
    return model, create_gaussian_diffusion(**diffusion_cfg)


def read_weights(ckpt: str, why: str, run_dir: Optional[str] = None, what: str = "model weights") -> Dict[str, torch.Tensor]:
    """A checkpoint's state dict (weights-only unpickler, `module.` prefixes stripped); the
    ModelLoadError names the file, and for a run dir an older checkpoint to try."""
    try:
        raw = dist_util.load_state_dict(ckpt, what=what, why=why)
    except dist_util.CheckpointReadError as exc:
        hint = "" if exc.unsafe or run_dir is None else _older_checkpoints_hint(run_dir, ckpt)
        raise ModelLoadError(f"{exc}{hint}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ModelLoadError(f"checkpoint {ckpt} is not a state dict (a mapping of names to tensors); pass a model checkpoint")
    return strip_module_prefix(raw)


def load_model(cfg: DictConfig, device: torch.device) -> LoadedModel:
    """Build the UNet and the respaced diffusion and load `cfg.evaluator.model_path` strictly."""
    ckpt, run_dir = resolve_checkpoint(cfg.evaluator.model_path)
    model_cfg, diffusion_cfg = model_and_diffusion_cfg(cfg, run_dir)
    parameter_count(model_cfg)  # flags that build no model are refused before the (large) file is read
    state = read_weights(ckpt, checkpoint_reason(ckpt, run_dir), run_dir)
    try:
        model, diffusion = build_model(model_cfg, diffusion_cfg, state, device)
    except WeightsMismatch as exc:
        raise ModelLoadError(
            f"checkpoint {ckpt} does not match the model config {model_cfg}: {str(exc)[:600]}\n"
            "choose the matching model=... group, or pass the training run dir as evaluator.model_path"
        ) from None
    return LoadedModel(model, diffusion, ckpt, state_dict_sha256(state), model_cfg, diffusion_cfg)


def load_run_model(path: str, device: torch.device) -> LoadedModel:
    """A training run dir's newest EMA weights with the architecture and process it was trained
    with (its .hydra/config.yaml), for tools that take a run dir alone (bench/rates.py)."""
    ckpt, run_dir = resolve_checkpoint(path)
    if run_dir is None or run_dir_config(run_dir) is None:
        raise ModelLoadError(f"{path}: need a training run dir with .hydra/config.yaml (train one with: "
                             "python train.py +experiment=digits)")
    empty = OmegaConf.create({"evaluator": {"model_path": run_dir}, "model": {}, "diffusion": {}})
    return load_model(empty, device)


def _older_checkpoints_hint(run_dir: str, unreadable: str) -> str:
    older = [path for _, _, path in ema_checkpoints(run_dir) if path != unreadable]
    if not older:
        return ""
    return f"\nto evaluate an older checkpoint of this run instead, pass evaluator.model_path={older[-1]}"


def check_data_fits_model(loaded: LoadedModel, channels: int, image_size: int, num_levels: int) -> None:
    """Refuse data the model cannot describe, naming both sides."""
    expected = (loaded.model.in_channels, loaded.model_cfg["image_size"], loaded.diffusion.num_levels)
    got = (channels, image_size, num_levels)
    if expected != got:
        raise ModelLoadError(
            f"data (channels, image size, levels) = {got} but the model expects {expected}; "
            "pick the data=... matching the model, or the model for this data"
        )
