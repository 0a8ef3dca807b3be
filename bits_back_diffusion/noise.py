"""Noise that depends only on (seed, image id, step): results then do not depend on batch size,
batch layout or the number of ranks, so `mpiexec -n 2` reproduces a single-process run.

The normals are drawn where the model runs. Each value is a pure function of its image's key and
its position in the image (a counter-based generator: a 64-bit hash of key + position, two hashes
per Box-Muller pair), evaluated by a handful of vectorised integer and float ops on the device, so
a step's noise for the whole batch costs a few kernel launches instead of one generator per image
drawn on the host and copied over. Integer hashing is exact on every device; the float part (log,
sqrt, cos) may differ in the last bits between a CPU and a GPU, which changes nothing but the
Monte Carlo draw of the VLB estimate.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit int
_MIX1 = -4658895280553007687  # 0xBF58476D1CE4E5B9
_MIX2 = -7723592293110705685  # 0x94D049BB133111EB
_LOW53 = (1 << 53) - 1


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 values (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (multiplication wraps, as in uint64)."""
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def _unit_open(bits: torch.Tensor) -> torch.Tensor:
    """53 hash bits -> float64 uniform in (0, 1), never 0 (log stays finite)."""
    return (_shr(bits, 11) & _LOW53).to(torch.float64).add_(0.5).mul_(2.0 ** -53)


def image_key(seed: int, image_id: int, step: int) -> int:
    """The 64-bit key of one image's noise at one step (as a signed int64 value)."""
    key = int(np.random.SeedSequence([int(seed), int(image_id), int(step)]).generate_state(1, np.uint64)[0])
    return key - (1 << 64) if key >= 1 << 63 else key


def keyed_normals(keys: torch.Tensor, numel: int) -> torch.Tensor:
    """(len(keys), numel) float32 standard normals; row i depends only on keys[i]."""
    device = keys.device
    pairs = (numel + 1) // 2
    counter = torch.arange(2 * pairs, device=device, dtype=torch.int64).view(1, -1) * _GOLDEN
    bits = _mix64(keys.view(-1, 1) + counter)
    u1, u2 = _unit_open(bits[:, 0::2]), _unit_open(bits[:, 1::2])
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * np.pi) * u2
    normals = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return normals[:, :numel].to(torch.float32)


def per_image_noise_fn(
    seed: int, image_ids: Sequence[int], shape: Sequence[int], device: torch.device
) -> Callable[[int], torch.Tensor]:
    """noise_fn(step) -> (B, *shape) standard normal noise on `device`, keyed per image and step."""
    ids = [int(i) for i in np.asarray(image_ids).reshape(-1)]
    shape = tuple(int(s) for s in shape)
    numel = int(np.prod(shape, dtype=np.int64))

    def noise_fn(step: int) -> torch.Tensor:
        keys = torch.tensor([image_key(seed, i, step) for i in ids], dtype=torch.int64, device=device)
        return keyed_normals(keys, numel).view(len(ids), *shape)

    return noise_fn
