"""The frame every evaluation script runs in: runtime set up, logging open, always closed."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

from omegaconf import DictConfig

from . import runtime
from .wandb_logging import finish_logging, setup_logging


@contextmanager
def script_session(cfg: DictConfig, run_dir: Optional[str] = None, deterministic: bool = True) -> Iterator[runtime.Runtime]:
    rt = runtime.setup(cfg, run_dir=run_dir, deterministic=deterministic)
    setup_logging(rt.run_dir, cfg, rt.rank)
    try:
        yield rt
    finally:
        finish_logging()
