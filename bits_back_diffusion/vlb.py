"""Evaluating the variational bound of a dataset, batch by batch and across ranks."""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import numpy as np
import torch

from improved_diffusion import dist_util
from improved_diffusion.respace import SpacedDiffusion

from .noise import per_image_noise_fn


def batch_vlb(
    diffusion: SpacedDiffusion,
    model: torch.nn.Module,
    x: torch.Tensor,
    image_ids: Sequence[int],
    seed: int,
    clip_denoised: bool = True,
) -> Dict[str, np.ndarray]:
    """`calc_bpd_loop` on one batch with noise keyed by image id; NumPy arrays, time axis t = 0 … N-1."""
    noise_fn = per_image_noise_fn(seed, image_ids, x.shape[1:], x.device)
    with torch.no_grad():
        out = diffusion.calc_bpd_loop(model, x, clip_denoised=clip_denoised, noise_fn=noise_fn)
    return {
        "total_bpd": out["total_bpd"].double().cpu().numpy(),
        "prior_bpd": out["prior_bpd"].double().cpu().numpy(),
        "vb": out["vb"].double().cpu().numpy()[:, ::-1].copy(),
        "xstart_mse": out["xstart_mse"].double().cpu().numpy()[:, ::-1].copy(),
    }


class VLBAccumulator:
    """Per-image totals and per-step sums, mergeable over ranks into one dataset summary."""

    def __init__(self) -> None:
        self.ids: List[int] = []
        self.total: List[float] = []
        self.prior: List[float] = []
        self.vb_sum: np.ndarray | None = None
        self.mse_sum: np.ndarray | None = None

    def add(self, image_ids: Sequence[int], result: Dict[str, np.ndarray]) -> None:
        self.ids += [int(i) for i in image_ids]
        self.total += result["total_bpd"].tolist()
        self.prior += result["prior_bpd"].tolist()
        vb, mse = result["vb"].sum(0), result["xstart_mse"].sum(0)
        self.vb_sum = vb if self.vb_sum is None else self.vb_sum + vb
        self.mse_sum = mse if self.mse_sum is None else self.mse_sum + mse

    @property
    def count(self) -> int:
        return len(self.total)

    @property
    def mean(self) -> float:
        return float(np.mean(self.total)) if self.total else float("nan")

    @property
    def stderr(self) -> float:
        n = len(self.total)
        return float(np.std(self.total, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")

    def gathered(self) -> "VLBAccumulator":
        """All ranks' images in one accumulator (every rank must call this)."""
        parts = dist_util.all_gather_object((self.ids, self.total, self.prior, self.vb_sum, self.mse_sum))
        merged = VLBAccumulator()
        for ids, total, prior, vb_sum, mse_sum in parts:
            merged.ids += ids
            merged.total += total
            merged.prior += prior
            for name, value in (("vb_sum", vb_sum), ("mse_sum", mse_sum)):
                if value is not None:
                    current = getattr(merged, name)
                    setattr(merged, name, value if current is None else current + value)
        return merged

    def summary(self) -> Dict[str, float]:
        n = self.count
        if n == 0:
            raise ValueError("no images were evaluated: check evaluator.num_samples and the data folder")
        return {"vlb": self.mean, "vlb_stderr": self.stderr, "prior_bpd": float(np.mean(self.prior)), "samples": n}

    def per_step_means(self) -> Dict[str, np.ndarray]:
        return {"vb": self.vb_sum / self.count, "xstart_mse": self.mse_sum / self.count}
