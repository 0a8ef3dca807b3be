"""Timestep samplers for training: which diffusion steps each batch element trains on.

Sampling t non-uniformly and weighting each loss by 1 / (T p(t)) keeps the objective's mean
unchanged while lowering its variance; `LossSecondMomentResampler` picks p(t) proportional to
the root mean square of recent losses at t, which is what makes direct L_vlb training stable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence, Union

import numpy as np
import torch

from . import dist_util

SAMPLER_NAMES = ("uniform", "loss-second-moment")


def create_named_schedule_sampler(name: str, diffusion: Any) -> "ScheduleSampler":
    """Build a sampler by name: 'uniform' or 'loss-second-moment'."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise ValueError(
        f"Unknown schedule sampler {name!r}; choose one of {', '.join(repr(n) for n in SAMPLER_NAMES)} "
        "(e.g. trainer.schedule_sampler=loss-second-moment)."
    )


class ScheduleSampler(ABC):
    """A distribution over the diffusion's timesteps, used by unbiased importance sampling."""

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Positive, not necessarily normalised, weight of every timestep."""

    def sample(self, batch_size: int, device: Union[str, torch.device]) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw `batch_size` timesteps and the loss weights 1 / (T p(t)) that keep the mean unbiased."""
        w = np.asarray(self.weights(), dtype=np.float64)
        if w.ndim != 1 or len(w) == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("Schedule sampler weights must be a non-empty vector of finite, non-negative numbers.")
        p = w / w.sum()
        idx = np.random.choice(len(p), size=(batch_size,), p=p)
        indices = torch.from_numpy(idx).long().to(device)
        weights = torch.from_numpy(1.0 / (len(p) * p[idx])).float().to(device)
        return indices, weights


class UniformSampler(ScheduleSampler):
    """Every timestep equally likely (weights all 1)."""

    def __init__(self, diffusion: Any):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps], dtype=np.float64)

    def weights(self) -> np.ndarray:
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler that adapts to the losses the model reports."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Record this rank's (timestep, loss) pairs; all ranks must call this together.

        The pairs of all ranks are gathered so every rank updates with identical data and
        keeps an identical distribution.
        """
        ts = [int(t) for t in local_ts.detach().reshape(-1).cpu().tolist()]
        losses = [float(x) for x in local_losses.detach().reshape(-1).float().cpu().tolist()]
        if len(ts) != len(losses):
            raise ValueError(f"Got {len(ts)} timesteps but {len(losses)} losses; pass one loss per timestep.")
        all_ts: list[int] = []
        all_losses: list[float] = []
        for part_ts, part_losses in dist_util.all_gather_object((ts, losses)):
            all_ts.extend(part_ts)
            all_losses.extend(part_losses)
        self.update_with_all_losses(all_ts, all_losses)

    @abstractmethod
    def update_with_all_losses(self, ts: Sequence[int], losses: Sequence[float]) -> None:
        """Update from every rank's pairs (deterministic, so ranks stay in step)."""


class LossSecondMomentResampler(LossAwareSampler):
    """p(t) ∝ sqrt(E[loss_t^2]) over the last `history_per_term` losses of each t.

    Uniform until every timestep has a full history; afterwards a `uniform_prob` share of
    probability stays uniform so no timestep is starved.
    """

    def __init__(self, diffusion: Any, history_per_term: int = 10, uniform_prob: float = 0.001):
        if history_per_term < 1:
            raise ValueError(f"history_per_term must be >= 1, got {history_per_term}.")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must be in [0, 1], got {uniform_prob}.")
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=np.int64)

    def weights(self) -> np.ndarray:
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        w = np.sqrt(np.mean(self._loss_history**2, axis=-1))
        total = w.sum()
        if not np.isfinite(total) or total <= 0:
            return np.ones_like(w)
        w = w / total * (1.0 - self.uniform_prob)
        return w + self.uniform_prob / len(w)

    def update_with_all_losses(self, ts: Sequence[int], losses: Sequence[float]) -> None:
        n_steps = len(self._loss_counts)
        for t, loss in zip(ts, losses):
            if not 0 <= t < n_steps:
                raise ValueError(f"Timestep {t} is outside the diffusion's range 0..{n_steps - 1}.")
            if self._loss_counts[t] == self.history_per_term:
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())

    def state_dict(self) -> dict[str, np.ndarray]:
        """History and counts, so a resumed run keeps its importance weights."""
        return {"loss_history": self._loss_history.copy(), "loss_counts": self._loss_counts.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (shapes must match this diffusion)."""
        hist = np.asarray(state["loss_history"], dtype=np.float64)
        counts = np.asarray(state["loss_counts"], dtype=np.int64)
        if hist.shape != self._loss_history.shape or counts.shape != self._loss_counts.shape:
            raise ValueError(
                f"Sampler state has history shape {hist.shape}, expected {self._loss_history.shape}: "
                "it belongs to a diffusion with another number of steps or history length."
            )
        self._loss_history, self._loss_counts = hist.copy(), counts.copy()
