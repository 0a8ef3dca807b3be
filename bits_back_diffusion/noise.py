"""Noise that depends only on (seed, image id, step): results then do not depend on batch size,
batch layout or the number of ranks, so `mpiexec -n 2` reproduces a single-process run."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch


def per_image_noise_fn(
    seed: int, image_ids: Sequence[int], shape: Sequence[int], device: torch.device
) -> Callable[[int], torch.Tensor]:
    """noise_fn(step) -> (B, *shape) standard normal noise, one generator per image and step."""
    ids = [int(i) for i in np.asarray(image_ids).reshape(-1)]

    def noise_fn(step: int) -> torch.Tensor:
        parts = []
        for image_id in ids:
            key = np.random.SeedSequence([int(seed), image_id, int(step)]).generate_state(1, np.uint64)[0]
            gen = torch.Generator().manual_seed(int(key) >> 1)
            parts.append(torch.randn(*shape, generator=gen))
        return torch.stack(parts).to(device)

    return noise_fn
