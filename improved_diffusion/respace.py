"""Evaluating or sampling a diffusion process on a subset of its steps.

Keeping steps S = {s_0 < s_1 < …} of a T-step process gives a new Markov chain with
beta'_k = 1 - alpha_bar[s_k] / alpha_bar[s_{k-1}]; the network is still called with the original
step index, which `_WrappedModel` restores.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Set, Tuple, Union

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion


def _vlb_steps(num_timesteps: int, count: int) -> Set[int]:
    """`vlbN`: the first T//N steps densely (where most of the bound lives) plus N - T//N + 1 steps
    evenly spread over all T; the two sets share step 0, giving N steps."""
    dense = num_timesteps // count
    if dense >= count:
        raise ValueError(
            f"vlb{count} keeps the first {dense} steps densely, which is not fewer than {count}; "
            f"ask for more steps (at least vlb{int(np.ceil(np.sqrt(num_timesteps))) + 1}) for T={num_timesteps}"
        )
    spread = count - dense
    return set(range(dense)) | set(_evenly_spaced(0, num_timesteps, spread + 1))


def _evenly_spaced(start: int, size: int, count: int) -> List[int]:
    """`count` indices spread evenly over [start, start + size).

    The position is accumulated by repeated addition (not k * stride) because the reference
    implementation does so, and the two round differently at exact .5 ties (vlb100 of 4000).
    """
    stride = 1.0 if count <= 1 else (size - 1) / (count - 1)
    position, out = 0.0, []
    for _ in range(count):
        out.append(start + int(round(position)))
        position += stride
    return out


def _ddim_steps(num_timesteps: int, count: int) -> Set[int]:
    """`ddimN`: an integer stride starting at 0 that gives exactly N steps."""
    for stride in range(1, num_timesteps):
        candidate = range(0, num_timesteps, stride)
        if len(candidate) == count:
            return set(candidate)
    raise ValueError(f"no integer stride gives exactly {count} of {num_timesteps} steps for ddim{count}")


def _section_steps(num_timesteps: int, section_counts: Sequence[int]) -> Set[int]:
    """Split [0, T) into equal sections and spread the requested count evenly over each."""
    per_section, extra = divmod(num_timesteps, len(section_counts))
    start, steps = 0, []
    for i, count in enumerate(section_counts):
        size = per_section + (1 if i < extra else 0)
        if count < 1:
            raise ValueError(f"every section needs at least one step, got {count}")
        if size < count:
            raise ValueError(f"cannot take {count} steps from a section of {size} steps")
        steps += _evenly_spaced(start, size, count)
        start += size
    return set(steps)


def space_timesteps(num_timesteps: int, section_counts: Union[str, Sequence[int], int]) -> Set[int]:
    """The set of original steps to keep.

    `section_counts` is a list of per-section counts, a comma-separated string ("10,15,20"),
    "ddimN" (even stride) or "vlbN" (dense start, even spread; the results-table respacing).
    An empty string or None keeps every step.
    """
    if section_counts is None or section_counts == "":
        return set(range(num_timesteps))
    if isinstance(section_counts, int):
        section_counts = [section_counts]
    if isinstance(section_counts, str):
        spec = section_counts.strip()
        for prefix, fn in (("ddim", _ddim_steps), ("vlb", _vlb_steps)):
            if spec.startswith(prefix):
                try:
                    count = int(spec[len(prefix):])
                except ValueError:
                    raise ValueError(f"bad timestep respacing {spec!r}: expected {prefix}<number>") from None
                if not 1 <= count <= num_timesteps:
                    raise ValueError(f"{spec}: the step count must be between 1 and T={num_timesteps}")
                return fn(num_timesteps, count)
        try:
            section_counts = [int(x) for x in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"bad timestep respacing {spec!r}: use counts like '10,15,20', 'ddimN' or 'vlbN'"
            ) from None
    return _section_steps(num_timesteps, list(section_counts))


class SpacedDiffusion(GaussianDiffusion):
    """A GaussianDiffusion over the kept steps `use_timesteps` of a base process."""

    def __init__(self, use_timesteps: Iterable[int], **kwargs):
        self.use_timesteps = set(use_timesteps)
        base_betas = np.asarray(kwargs["betas"], dtype=np.float64)
        self.original_num_steps = len(base_betas)
        if not self.use_timesteps or min(self.use_timesteps) < 0 or max(self.use_timesteps) >= self.original_num_steps:
            raise ValueError(f"kept steps must lie in [0, {self.original_num_steps})")
        base_alphas_cumprod = np.cumprod(1.0 - base_betas)
        self.timestep_map: List[int] = sorted(self.use_timesteps)
        kept = base_alphas_cumprod[self.timestep_map]
        previous = np.append(1.0, kept[:-1])
        kwargs["betas"] = 1.0 - kept / previous
        super().__init__(**kwargs)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        cached = getattr(self, "_last_wrapped", None)
        if cached is not None and cached.model is model:  # coding calls one model thousands of times
            return cached
        self._last_wrapped = _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)
        return self._last_wrapped

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        # The wrapper maps and scales; scaling here too would do it twice.
        return t


class _WrappedModel:
    """Calls the network with original step indices (scaled to [0, 1000) if requested)."""

    def __init__(self, model, timestep_map: Sequence[int], rescale_timesteps: bool, original_num_steps: int):
        self.model = model
        self.timestep_map = list(timestep_map)
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps
        self._tables: Dict[Tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def _table(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The step map as a tensor, built once per device and dtype rather than on every call."""
        key = (device, dtype)
        if key not in self._tables:
            with torch.inference_mode(False):  # a normal tensor, usable by training too
                self._tables[key] = torch.tensor(self.timestep_map, device=device, dtype=dtype)
        return self._tables[key]

    def __call__(self, x: torch.Tensor, ts: torch.Tensor, **kwargs) -> torch.Tensor:
        original = self._table(ts.device, ts.dtype)[ts]
        if self.rescale_timesteps:
            original = original.float() * (1000.0 / self.original_num_steps)
        return self.model(x, original, **kwargs)
