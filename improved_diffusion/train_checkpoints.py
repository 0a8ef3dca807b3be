"""The files of a training run's checkpoints, and which step a resumed run starts from.

A checkpoint saved after update N is ``model{N:06d}.pt`` + ``ema_{rate}_{N:06d}.pt`` (one per
EMA rate) + ``opt{N:06d}.pt`` + ``state{N:06d}.pt`` (RNG states, data position, timestep
sampler: what makes a resumed run bit-exact). Each file is written atomically and the model
file last, so a step with a model file was written completely. A file can still be damaged
later (a disk that filled up, an interrupted copy): a step is *complete* when its model and
optimizer files exist and every file of it that exists can be read; resuming starts from the
newest complete step and says loudly which newer files it skipped.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from . import dist_util, logger
from .atomic_io import atomic_write
from .checkpoint_io import CheckpointReadError

_MODEL_RE = re.compile(r"^model(\d+)\.pt$")
# What each file holds, for the log line that names it.
_DESCRIPTIONS = {"model": "model weights", "opt": "optimizer state", "state": "trainer state", "sampler": "sampler state"}


class NoCompleteCheckpointError(ValueError):
    """A run dir has checkpoints, but none of its steps can be read completely."""


def parse_resume_step_from_filename(filename: str) -> int:
    """N from ``.../modelNNNNNN.pt`` (0 when the name has no step)."""
    match = _MODEL_RE.match(os.path.basename(filename))
    return int(match.group(1)) if match else 0


def checkpoint_paths(directory: str, step: int, ema_rates: Sequence[float]) -> dict[str, str]:
    """Paths of the files of one checkpoint step (``sampler`` is only written by older versions)."""
    paths = {
        "model": os.path.join(directory, f"model{step:06d}.pt"),
        "opt": os.path.join(directory, f"opt{step:06d}.pt"),
        "state": os.path.join(directory, f"state{step:06d}.pt"),
        "sampler": os.path.join(directory, f"sampler{step:06d}.pt"),
    }
    for rate in ema_rates:
        paths[f"ema_{rate}"] = os.path.join(directory, f"ema_{rate}_{step:06d}.pt")
    return paths


def model_steps(directory: Optional[str]) -> list[int]:
    """Steps that have a model file in `directory`, newest first."""
    if not directory or not os.path.isdir(directory):
        return []
    steps = [int(m.group(1)) for m in map(_MODEL_RE.match, os.listdir(directory)) if m]
    return sorted(steps, reverse=True)


def find_resume_checkpoint(directory: Optional[str]) -> Optional[int]:
    """Newest step in `directory` whose model and optimizer files both exist (not checked for damage)."""
    for step in model_steps(directory):
        if os.path.exists(os.path.join(str(directory), f"opt{step:06d}.pt")):
            return step
    return None


def atomic_save(obj: Any, path: str) -> None:
    """torch.save to a temporary file in the same folder, then rename over `path`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def remove_stale_tmp_files(directory: str) -> None:
    """Delete the hidden temporaries a killed save left behind (never a finished checkpoint)."""
    for name in os.listdir(directory):
        if name.startswith(".") and ".pt.tmp-" in name:
            os.remove(os.path.join(directory, name))


@dataclass
class ResumePoint:
    """The step a run resumes from, its files and what was read from them."""

    step: int
    paths: dict[str, str]
    loaded: dict[str, Any]
    skipped: list[str] = field(default_factory=list)


def read_step(paths: dict[str, str], why: str) -> tuple[dict[str, Any], list[CheckpointReadError]]:
    """Every existing file of a step, read; damaged ones are returned as errors, refused ones raise."""
    loaded: dict[str, Any] = {}
    damaged: list[CheckpointReadError] = []
    for key, path in paths.items():
        if not os.path.exists(path):
            continue
        what = _DESCRIPTIONS.get(key, f"EMA weights (rate {key[len('ema_'):]})")
        try:
            loaded[key] = dist_util.load_state_dict(path, what=what, why=why)
        except CheckpointReadError as exc:
            if exc.unsafe:
                raise
            damaged.append(exc)
    return loaded, damaged


def newest_complete_step(directory: str, ema_rates: Sequence[float]) -> Optional[ResumePoint]:
    """The newest step of `directory` that reads completely (None when there is no checkpoint).

    Newer steps with damaged or missing files are skipped with a loud message naming each file;
    when checkpoints exist but no step is complete, NoCompleteCheckpointError says what to do
    (training from scratch would overwrite them)."""
    skipped: list[str] = []
    for step in model_steps(directory):
        paths = checkpoint_paths(directory, step, ema_rates)
        if not os.path.exists(paths["opt"]):
            skipped.append(f"step {step}: optimizer file {paths['opt']} is missing")
            _warn_skipped(step, skipped[-1:])
            continue
        loaded, damaged = read_step(paths, why=f"resuming from step {step} of run dir {directory}")
        if damaged:
            reasons = [f"checkpoint {exc.path} is unreadable (truncated?)" for exc in damaged]
            for exc in damaged:
                logger.log(str(exc))
            _warn_skipped(step, reasons)
            skipped.extend(f"step {step}: {reason}" for reason in reasons)
            continue
        return ResumePoint(step, paths, loaded, skipped)
    if skipped:
        raise NoCompleteCheckpointError(
            f"No complete checkpoint step in {directory}:\n  " + "\n  ".join(skipped) + "\n"
            "Training from scratch here would overwrite them. Restore the damaged files (or move them "
            "out of the run dir to resume from an older step), or train in a new run dir."
        )
    return None


def _warn_skipped(step: int, reasons: Sequence[str]) -> None:
    banner = "!" * 72
    logger.warn(banner)
    for reason in reasons:
        logger.warn(f"WARNING: {reason}")
    logger.warn(
        f"WARNING: skipping checkpoint step {step}; resuming from an older complete step. Training will "
        f"write step {step} again when it gets there, replacing these files."
    )
    logger.warn(banner)
