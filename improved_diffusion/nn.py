"""Small layer helpers shared by the UNet; names follow improved-diffusion so its code ports unchanged."""
from __future__ import annotations

import functools
import math
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as _torch_checkpoint


class SiLU(nn.Module):
    """x * sigmoid(x); kept as a class so old state dicts and module trees line up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 so fp16 activations do not lose the statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # the common case: skip two no-op casts (per-call overhead)
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return super().forward(x.float()).type(x.dtype)


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOL = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}


def conv_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1/2/3-D convolution chosen by `dims`."""
    if dims not in _CONV:
        raise ValueError(f"unsupported dimensions: {dims} (expected 1, 2 or 3)")
    return _CONV[dims](*args, **kwargs)


def avg_pool_nd(dims: int, *args, **kwargs) -> nn.Module:
    """A 1/2/3-D average pooling chosen by `dims`."""
    if dims not in _AVG_POOL:
        raise ValueError(f"unsupported dimensions: {dims} (expected 1, 2 or 3)")
    return _AVG_POOL[dims](*args, **kwargs)


def linear(*args, **kwargs) -> nn.Linear:
    return nn.Linear(*args, **kwargs)


def normalization(channels: int) -> nn.Module:
    """The UNet's normalisation layer: 32-group GroupNorm."""
    if channels % 32:
        raise ValueError(
            f"GroupNorm with 32 groups needs a channel count divisible by 32, got {channels}; "
            "choose num_channels (and channel_mult) so every level has a multiple of 32 channels"
        )
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters so a residual branch starts as the identity."""
    for p in module.parameters():
        p.detach().zero_()
    return module


def scale_module(module: nn.Module, scale: float) -> nn.Module:
    for p in module.parameters():
        p.detach().mul_(scale)
    return module


def mean_flat(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over every dimension but the batch."""
    return tensor.mean(dim=list(range(1, tensor.ndim)))


def update_ema(target_params: Iterable[torch.Tensor], source_params: Iterable[torch.Tensor], rate: float = 0.99) -> None:
    """target <- rate * target + (1 - rate) * source, in place."""
    for targ, src in zip(target_params, source_params):
        targ.detach().mul_(rate).add_(src, alpha=1 - rate)


@functools.lru_cache(maxsize=16)
def _embedding_frequencies(half: int, max_period: int, device: torch.device) -> torch.Tensor:
    """The geometric frequencies of `timestep_embedding`, computed once per size and device:
    coding calls a small model thousands of times, and these four ops were a visible share."""
    with torch.inference_mode(False):  # a normal tensor, usable by training after coding
        exponent = torch.arange(half, dtype=torch.float32, device=device) / half
        return torch.exp(-math.log(max_period) * exponent)[None]


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [cos | sin] over geometric frequencies."""
    half = dim // 2
    freqs = _embedding_frequencies(half, max_period, timesteps.device)
    angles = timesteps[:, None].float() * freqs
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def checkpoint(func, inputs: Sequence[torch.Tensor], params: Iterable[torch.Tensor], flag: bool):
    """Gradient checkpointing when `flag` (trades compute for memory during training)."""
    if flag and torch.is_grad_enabled():
        return _torch_checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)
