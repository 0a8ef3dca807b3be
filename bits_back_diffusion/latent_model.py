"""A diffusion model seen as a hierarchical latent-variable model over its (respaced) steps.

    prior      p(z_{N-1}) = N(0, I)
    transition p(z_t | z_{t+1})      from p_mean_variance(z_{t+1}, t+1)
    likelihood p(x | z_0)            discretized Gaussian from p_mean_variance(z_0, 0)
    posterior  q(z_{N-1} | x)        from q_mean_variance(x, N-1)
               q(z_t | z_{t+1}, x)   from q_posterior_mean_variance(x, z_{t+1}, t+1)

Parameters come back as float64 NumPy arrays (exact copies of the float32 torch values) so the
entropy coder sees bit-identical inputs in encode and decode. The network is called through
`coding_net.CodingNet`: on the CPU a trace of the UNet with the eager model's outputs bit for bit
and less Python per call, which dominated the demo's thousands of small calls.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

import numpy as np
import torch

from improved_diffusion.respace import SpacedDiffusion

from .coding_net import CodingNet

Gaussian = Tuple[np.ndarray, np.ndarray]  # (mean, std)
RawGaussian = Tuple[np.ndarray, np.ndarray]  # (mean, log-variance) as the network produced them


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _host(t: torch.Tensor) -> np.ndarray:
    """A contiguous host copy in the tensor's own dtype (float types NumPy lacks widen exactly to
    float64); a copy, so a kept array never pins a larger buffer it was a view of."""
    t = t.detach()
    if t.dtype not in (torch.float16, torch.float32, torch.float64):
        t = t.to(torch.float64)
    return np.array(t.to("cpu").numpy(), copy=True, order="C")


@dataclass
class DiffusionLatentModel:
    """Adapter from (UNet, diffusion) to the Gaussians the bits-back codecs need."""

    model: torch.nn.Module
    diffusion: SpacedDiffusion
    device: torch.device
    clip_denoised: bool = True
    likelihood_std_min: float = 1e-6
    # A variance output far outside the learned range would under/overflow exp(); bins need 0 < std < inf.
    std_range: Tuple[float, float] = (1e-12, 1e12)
    model_evals: int = field(default=0, init=False)
    _net: CodingNet = field(init=False, repr=False, compare=False)  # the model as coding calls it

    def __post_init__(self) -> None:
        self._net = CodingNet(self.model, self.device)

    @property
    def num_steps(self) -> int:
        return self.diffusion.num_timesteps

    @property
    def num_levels(self) -> int:
        return self.diffusion.num_levels

    def data_to_model(self, x_levels: np.ndarray) -> torch.Tensor:
        """Integer levels -> model space [-1, 1], float32 on the device."""
        scale = 2.0 / (self.num_levels - 1)
        return torch.from_numpy(np.asarray(x_levels, dtype=np.float32) * np.float32(scale) - np.float32(1.0)).to(self.device)

    def latent_to_model(self, z: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.asarray(z, dtype=np.float32)).to(self.device)

    def _steps(self, t: int, batch: int) -> torch.Tensor:
        return torch.full((batch,), t, dtype=torch.long, device=self.device)

    def reverse(self, z: torch.Tensor, t: int) -> Gaussian:
        """p(z_{t-1} | z_t) for t >= 1, or the likelihood's Gaussian p(x | z_0) for t = 0: one model call."""
        return self.gaussian_from_raw(self.reverse_raw(z, t), t)

    def _network(self, z: torch.Tensor, t: int) -> dict:
        with torch.inference_mode():
            out = self.diffusion.p_mean_variance(self._net, z, self._steps(t, z.shape[0]), clip_denoised=self.clip_denoised)
        self.model_evals += 1
        return out

    def reverse_raw(self, z: torch.Tensor, t: int) -> RawGaussian:
        """`reverse` before the float64 step: the model's mean and log-variance on the host, in the
        dtype the network produced (float32), half the bytes of the float64 (mean, std) pair. BB-ANS
        decode keeps these for every step and recomputes the pair with `gaussian_from_raw`."""
        out = self._network(z, t)
        return _host(out["mean"]), _host(out["log_variance"])

    # --- the same values left on the model's device (the CUDA coder's inputs) ----------------------
    # torch's elementwise operations there (its exp is the device's own), so only the same device
    # reproduces them: files say which coder wrote them.

    def reverse_raw_on_device(self, z: torch.Tensor, t: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """`reverse_raw` without the copy to the host."""
        out = self._network(z, t)
        return out["mean"].detach(), out["log_variance"].detach()

    def gaussian_from_raw_on_device(self, raw, t: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """`gaussian_from_raw` in torch on the device, from the network's values (tensors)."""
        low = max(self.std_range[0], self.likelihood_std_min if t == 0 else 0.0)
        mean = raw[0].to(torch.float64)
        std = torch.clamp(torch.exp(0.5 * raw[1].to(torch.float64)), low, self.std_range[1])
        return mean, std

    def reverse_on_device(self, z: torch.Tensor, t: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """`reverse`, float64 on the device."""
        return self.gaussian_from_raw_on_device(self.reverse_raw_on_device(z, t), t)

    def posterior_top_on_device(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """`posterior_top`, float64 on the device."""
        mean, _, log_var = self.diffusion.q_mean_variance(x, self._steps(self.num_steps - 1, x.shape[0]))
        return mean.to(torch.float64), torch.exp(0.5 * log_var.to(torch.float64))

    def posterior_on_device(self, x: torch.Tensor, z_next: torch.Tensor, t_next: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """`posterior`, float64 on the device."""
        mean, _, log_var = self.diffusion.q_posterior_mean_variance(x, z_next, self._steps(t_next, x.shape[0]))
        return mean.to(torch.float64), torch.exp(0.5 * log_var.to(torch.float64))

    def gaussian_from_raw(self, raw: RawGaussian, t: int) -> Gaussian:
        """The float64 (mean, std) of `reverse` from `reverse_raw`'s output. Elementwise NumPy on an
        exact widening of the model's values, so the same raw arrays give the same bits every call:
        recomputing a prior later is as exact as keeping it."""
        mean = raw[0].astype(np.float64)
        low = max(self.std_range[0], self.likelihood_std_min if t == 0 else 0.0)
        std = raw[1].astype(np.float64)  # a fresh array: the steps below reuse it (a third less time)
        std *= 0.5
        np.exp(std, out=std)
        np.maximum(std, low, out=std)  # np.clip's bits (NaN passes through), without its temporaries
        np.minimum(std, self.std_range[1], out=std)
        return mean, std

    def posterior_top(self, x: torch.Tensor) -> Gaussian:
        """q(z_{N-1} | x)."""
        mean, _, log_var = self.diffusion.q_mean_variance(x, self._steps(self.num_steps - 1, x.shape[0]))
        return _np(mean), np.exp(0.5 * _np(log_var))

    def posterior(self, x: torch.Tensor, z_next: torch.Tensor, t_next: int) -> Gaussian:
        """q(z_{t_next - 1} | z_{t_next}, x)."""
        mean, _, log_var = self.diffusion.q_posterior_mean_variance(x, z_next, self._steps(t_next, x.shape[0]))
        return _np(mean), np.exp(0.5 * _np(log_var))
