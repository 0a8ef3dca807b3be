"""Exact conversion between integer levels and the model's [-1, 1] inputs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported on first use so that data-preparation scripts start quickly
ArrayLike = Union[np.ndarray, "torch.Tensor"]


def to_model_input(x_levels: ArrayLike, num_levels: int) -> "torch.Tensor":
    """Map level k of K to 2k/(K-1) - 1, as float32 (on the input tensor's device).

    Computed in float64 and rounded once, so the value for each level is the
    float32 nearest to the exact one and ``from_model_input`` inverts it exactly.
    """
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    import torch

    x = torch.as_tensor(np.asarray(x_levels) if not isinstance(x_levels, torch.Tensor) else x_levels)
    return (x.to(torch.float64) * (2.0 / (num_levels - 1)) - 1.0).to(torch.float32)


def from_model_input(x: ArrayLike, num_levels: int) -> "torch.Tensor":
    """Round [-1, 1] values back to the nearest level in [0, num_levels-1] (int64)."""
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    import torch

    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    k = torch.round((x.to(torch.float64) + 1.0) * ((num_levels - 1) / 2.0))
    return k.clamp_(0, num_levels - 1).to(torch.int64)
