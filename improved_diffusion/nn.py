"""Small layer helpers shared by the UNet; names follow improved-diffusion so its code ports unchanged."""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint as _torch_checkpoint


class SiLU(nn.Module):
    """x * sigmoid(x); kept as a class so old state dicts and module trees line up."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 so fp16 activations do not lose the statistics."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
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


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: [cos | sin] over geometric frequencies."""
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = timesteps[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def checkpoint(func, inputs: Sequence[torch.Tensor], params: Iterable[torch.Tensor], flag: bool):
    """Gradient checkpointing when `flag` (trades compute for memory during training)."""
    if flag and torch.is_grad_enabled():
        return _torch_checkpoint(func, *inputs, use_reentrant=False)
    return func(*inputs)
