"""Closed-form divergences and the discretized-Gaussian data likelihood used by the VLB."""
from __future__ import annotations

import math
from typing import Union

import torch

Number = Union[float, torch.Tensor]


def normal_kl(mean1: Number, logvar1: Number, mean2: Number, logvar2: Number) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats; scalars broadcast."""
    ref = next((v for v in (mean1, logvar1, mean2, logvar2) if isinstance(v, torch.Tensor)), None)
    if ref is None:
        raise ValueError("normal_kl needs at least one tensor argument")
    logvar1, logvar2 = (v if isinstance(v, torch.Tensor) else torch.tensor(v).to(ref) for v in (logvar1, logvar2))
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of Phi used by the reference VLB numbers (kept for reproducibility)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor, num_levels: int = 256
) -> torch.Tensor:
    """log P(x) of data on `num_levels` equally spaced levels in [-1, 1] under a Gaussian.

    Each level owns the interval of half-width 1/(num_levels-1) around it; the outermost levels
    own everything beyond them, so probabilities sum to one.
    """
    if x.shape != means.shape or x.shape != log_scales.shape:
        raise ValueError(f"shapes differ: x {tuple(x.shape)}, means {tuple(means.shape)}, log_scales {tuple(log_scales.shape)}")
    if num_levels < 2:
        raise ValueError(f"num_levels must be at least 2, got {num_levels}")
    half_width = 1.0 / (num_levels - 1)
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_upper = approx_standard_normal_cdf(inv_std * (centered + half_width))
    cdf_lower = approx_standard_normal_cdf(inv_std * (centered - half_width))
    log_cdf_upper = torch.log(cdf_upper.clamp(min=1e-12))
    log_survival_lower = torch.log((1.0 - cdf_lower).clamp(min=1e-12))
    log_bin = torch.log((cdf_upper - cdf_lower).clamp(min=1e-12))
    edge = 1.0 - half_width
    log_probs = torch.where(x < -edge, log_cdf_upper, torch.where(x > edge, log_survival_lower, log_bin))
    if log_probs.shape != x.shape:
        raise AssertionError("log-likelihood shape mismatch")
    return log_probs

