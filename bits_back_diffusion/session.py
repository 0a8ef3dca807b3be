"""The frame every script runs in: runtime set up and the run dir locked, logging open, always
closed and unlocked.

A run dir is written only once the run has been *accepted*: the script does its checks (model,
data, settings, resume compatibility) inside `session.checks()`; only when every rank passed
them are the launch's `.hydra/*.yaml`, `log.txt` and the W&B files written. A refused run
therefore leaves every file of an existing run dir byte-identical. Messages logged before
acceptance are printed at once and copied into `log.txt` when the run is accepted.
"""
from __future__ import annotations

import io
import os
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from omegaconf import DictConfig

from improved_diffusion import dist_util, logger

from . import runtime
from .run_dir import launch_config_texts, save_launch_config
from .wandb_logging import finish_logging, setup_logging


class RunRefused(RuntimeError):
    """Another rank refused the run (its own error names the reason)."""


class ScriptSession:
    """One run of a script in its run dir: `rt` is the runtime; `checks()` guards acceptance."""

    def __init__(self, cfg: DictConfig, rt: runtime.Runtime, comm: Any = None):
        self.cfg = cfg
        self.rt = rt
        self.comm = comm
        self.accepted = False
        self._pending: Optional[io.StringIO] = None
        self._log_to_stdout_only()

    def _log_to_stdout_only(self) -> None:
        logger.configure(dir=self.rt.run_dir, format_strs=["stdout"] if self.rt.is_main else [], comm=self.comm)
        if self.rt.is_main:
            self._pending = io.StringIO()
            logger.add_output(logger.HumanOutputFormat(self._pending))

    @contextmanager
    def checks(self) -> Iterator[None]:
        """Run the script's checks; when all ranks pass, accept the run (see the module doc)."""
        try:
            yield
        except BaseException as exc:
            self._agree(f"{type(exc).__name__}: {exc}")
            raise
        self._agree(None)
        self.accept()

    def _agree(self, error: Optional[str]) -> None:
        if self.rt.world_size == 1:
            return
        errors = dist_util.all_gather_object(error)
        if error is None:
            refused = [(rank, e) for rank, e in enumerate(errors) if e is not None]
            if refused:
                rank, message = refused[0]
                raise RunRefused(f"rank {rank} refused the run: {message}")

    def accept(self) -> None:
        """Write this launch's config files and start logging into the run dir (once)."""
        if self.accepted:
            return
        rank, run_dir = self.rt.rank, self.rt.run_dir
        save_launch_config(os.path.join(run_dir, ".hydra" if rank == 0 else f".hydra/rank{rank}"),
                           launch_config_texts(self.cfg))
        if self._pending is not None and self._pending.getvalue():
            with open(os.path.join(run_dir, "log.txt"), "a", encoding="utf-8") as f:
                f.write(self._pending.getvalue())
        self._pending = None
        setup_logging(run_dir, self.cfg, rank, comm=self.comm)
        self.accepted = True


@contextmanager
def script_session(cfg: DictConfig, run_dir: Optional[str] = None, deterministic: bool = True,
                   average_over_ranks: bool = False) -> Iterator[ScriptSession]:
    """average_over_ranks: logged values are averaged over ranks (every rank then dumps together)."""
    rt = runtime.setup(cfg, run_dir=run_dir, deterministic=deterministic)
    try:
        comm = dist_util.TorchComm() if average_over_ranks and rt.world_size > 1 else None
        yield ScriptSession(cfg, rt, comm)
    finally:
        try:
            finish_logging()
        finally:
            rt.release()
