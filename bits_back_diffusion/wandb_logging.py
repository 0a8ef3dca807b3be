"""Logging setup shared by the scripts: improved-diffusion's logger plus Weights & Biases.

Rank 0 writes stdout, ``log.txt`` and ``progress.csv`` in the run dir and, unless
``wandb.mode`` is ``disabled``, sends every `logger.dumpkvs` to W&B through `WandbWriter`.
Other ranks log nothing. The W&B run id is kept in ``<run dir>/wandb_run_id.txt`` so a resumed
run (same run dir) continues the same W&B run instead of starting a new one.
"""

from __future__ import annotations

import numbers
import os
from typing import Any, Mapping, Optional

from improved_diffusion import logger

WANDB_MODES = ("online", "offline", "disabled")
_RUN_ID_FILE = "wandb_run_id.txt"


class WandbWriter(logger.KVWriter):
    """Sends each dump's numeric values to the active W&B run, at its ``step`` if present."""

    def __init__(self, run: Any):
        self.run = run

    def writekvs(self, kvs: dict[str, Any]) -> None:
        data = {}
        for key, value in kvs.items():
            if hasattr(value, "item") and getattr(value, "size", 1) == 1:
                value = value.item()
            if isinstance(value, numbers.Number) and not isinstance(value, bool):
                data[key] = value
        if not data:
            return
        step = data.get("step")
        if isinstance(step, numbers.Integral) or (isinstance(step, float) and step.is_integer()):
            self.run.log(data, step=int(step))
        else:
            self.run.log(data)

    def close(self) -> None:
        """The run is finished by `finish_logging`, not per writer."""


def _wandb_cfg(cfg: Any) -> Mapping[str, Any]:
    section = cfg.get("wandb") if hasattr(cfg, "get") else None
    return section if section is not None else {"mode": "disabled"}


def _plain(cfg: Any) -> Any:
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(cfg):
            return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # unresolvable values must not stop training; log them unresolved
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=False)
    return cfg


def setup_logging(run_dir: str, cfg: Any, rank: int, comm: Any = None) -> Optional[Any]:
    """Configure the logger in `run_dir` and, on rank 0, W&B per ``cfg.wandb``; returns the W&B run or None.

    comm: pass `dist_util.TorchComm()` to average logged values over ranks (then every rank
    must call `logger.dumpkvs` together).
    """
    os.makedirs(run_dir, exist_ok=True)
    wcfg = _wandb_cfg(cfg)
    mode = str(wcfg.get("mode", "disabled") or "disabled")
    if mode not in WANDB_MODES:
        raise ValueError(f"Unknown wandb.mode {mode!r}; choose one of {', '.join(WANDB_MODES)} (e.g. wandb.mode=offline).")
    formats = ["stdout", "log", "csv"] if rank == 0 else []
    logger.configure(dir=run_dir, format_strs=formats, comm=comm)
    if rank != 0 or mode == "disabled":
        return None

    import wandb

    id_path = os.path.join(run_dir, _RUN_ID_FILE)
    run_id = open(id_path).read().strip() if os.path.exists(id_path) else None
    tags = wcfg.get("tags") or []
    run = wandb.init(
        mode=mode,
        project=wcfg.get("project") or None,
        entity=wcfg.get("entity") or None,
        name=wcfg.get("name") or None,
        tags=[str(t) for t in tags],
        dir=run_dir,
        config=_plain(cfg),
        id=run_id,
        resume="allow" if run_id else None,
        reinit="finish_previous",
    )
    if run_id is None:
        with open(id_path, "w") as f:
            f.write(run.id)
    logger.add_output(WandbWriter(run))
    logger.log(f"W&B run {run.id} ({mode}) in {run_dir}")
    return run


def log_image(name: str, png_path: str) -> None:
    """Send a PNG (e.g. a plot) to the active W&B run; does nothing without one."""
    if not os.path.isfile(png_path):
        raise FileNotFoundError(f"log_image: {png_path} does not exist; save the figure before logging it.")
    import wandb

    if wandb.run is not None:
        wandb.run.log({name: wandb.Image(png_path)})


def finish_logging() -> None:
    """Finish the W&B run (if any) and close the logger's files."""
    try:
        import wandb

        if wandb.run is not None:
            wandb.run.finish()
    finally:
        logger.reset()
