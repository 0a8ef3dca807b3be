"""Finding checkpoints in run dirs and fingerprinting model weights."""
from __future__ import annotations

import hashlib
import os
import re
from typing import Dict, List, Mapping, Optional, Tuple

import torch

_STEP_RE = re.compile(r"(\d+)\.(pt|npz)$")
_EMA_RE = re.compile(r"^ema_([0-9.]+)_(\d+)\.pt$")


def step_from_name(path: str) -> int:
    """The step number at the end of a checkpoint file name (model012000.pt -> 12000)."""
    match = _STEP_RE.search(os.path.basename(path))
    if not match:
        raise ValueError(f"cannot read a step number from checkpoint name {os.path.basename(path)!r}")
    return int(match.group(1))


def ema_checkpoints(run_dir: str) -> List[Tuple[int, float, str]]:
    """(step, rate, path) of every `ema_<rate>_<step>.pt` in a run dir, sorted."""
    found = []
    for name in os.listdir(run_dir):
        match = _EMA_RE.match(name)
        if match:
            found.append((int(match.group(2)), float(match.group(1)), os.path.join(run_dir, name)))
    return sorted(found)


def newest_ema_checkpoint(run_dir: str) -> Optional[str]:
    """The newest EMA checkpoint; at equal steps the slowest (largest) rate, the usual choice for evaluation."""
    found = ema_checkpoints(run_dir)
    return found[-1][2] if found else None


def strip_module_prefix(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Undo DistributedDataParallel's `module.` prefix, so wrapped saves load into a bare model."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


def state_dict_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A fingerprint of the weights (names, dtypes, shapes, bytes), independent of file layout.

    Decoding needs bit-identical model outputs, so encoders store this and decoders compare it.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()
