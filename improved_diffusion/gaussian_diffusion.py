"""Gaussian diffusion (Ho et al. 2020; Nichol & Dhariwal 2021): schedules, forward process,
learned reverse process, training losses and the variational bound in bits/dim.

Schedule arithmetic is done in float64 NumPy and cast to float32 per lookup, as the reference
does, so VLB numbers match the published ones bit for bit up to float32 model noise.
"""
from __future__ import annotations

import enum
import math
from typing import Any, Callable, Dict, Iterator, Optional, Sequence

import numpy as np
import torch

from .losses import discretized_gaussian_log_likelihood, normal_kl
from .nn import mean_flat


class ModelMeanType(enum.Enum):
    """What the network predicts for the mean."""

    PREVIOUS_X = enum.auto()  # x_{t-1}
    START_X = enum.auto()  # x_0
    EPSILON = enum.auto()  # the noise


class ModelVarType(enum.Enum):
    """How the reverse-process variance is chosen. LEARNED_RANGE interpolates (in log space)
    between the two fixed choices beta_t and the posterior variance."""

    LEARNED = enum.auto()
    FIXED_SMALL = enum.auto()
    FIXED_LARGE = enum.auto()
    LEARNED_RANGE = enum.auto()


class LossType(enum.Enum):
    MSE = enum.auto()
    RESCALED_MSE = enum.auto()  # MSE plus the VB term scaled like the original MSE weighting
    KL = enum.auto()
    RESCALED_KL = enum.auto()  # KL scaled by the number of steps (L_vlb)

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


NOISE_SCHEDULES = ("linear", "cosine")


def get_named_beta_schedule(schedule_name: str, num_diffusion_timesteps: int) -> np.ndarray:
    """Betas of a named schedule; linear is rescaled so any T matches the 1000-step DDPM schedule."""
    if num_diffusion_timesteps < 1:
        raise ValueError(f"number of diffusion steps must be positive, got {num_diffusion_timesteps}")
    if schedule_name == "linear":
        scale = 1000 / num_diffusion_timesteps
        return np.linspace(scale * 0.0001, scale * 0.02, num_diffusion_timesteps, dtype=np.float64)
    if schedule_name == "cosine":
        return betas_for_alpha_bar(
            num_diffusion_timesteps, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        )
    raise ValueError(f"unknown noise schedule {schedule_name!r}; choose one of {', '.join(NOISE_SCHEDULES)}")


def betas_for_alpha_bar(num_diffusion_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous alpha_bar(s), s in [0, 1], into per-step betas (capped at max_beta)."""
    out = []
    for i in range(num_diffusion_timesteps):
        s0, s1 = i / num_diffusion_timesteps, (i + 1) / num_diffusion_timesteps
        out.append(min(1 - alpha_bar(s1) / alpha_bar(s0), max_beta))
    return np.array(out, dtype=np.float64)


def _extract_into_tensor(arr: np.ndarray, timesteps: torch.Tensor, broadcast_shape: Sequence[int]) -> torch.Tensor:
    """arr[timesteps] as float32 on the timesteps' device, broadcast to `broadcast_shape`."""
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    while res.ndim < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)


class GaussianDiffusion:
    """A discrete-time Gaussian diffusion process and its learned reverse process.

    Works with any `model(x_t, t, **model_kwargs)` returning the mean parameterisation (and, for
    learned variances, the variance values stacked along the channel axis).
    """

    def __init__(
        self,
        *,
        betas: Sequence[float],
        model_mean_type: ModelMeanType,
        model_var_type: ModelVarType,
        loss_type: LossType,
        rescale_timesteps: bool = False,
        num_levels: int = 256,
    ):
        self.model_mean_type = model_mean_type
        self.model_var_type = model_var_type
        self.loss_type = loss_type
        self.rescale_timesteps = rescale_timesteps
        if num_levels < 2:
            raise ValueError(f"num_levels (data levels per channel) must be at least 2, got {num_levels}")
        self.num_levels = int(num_levels)

        betas = np.array(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0).all() and (betas <= 1).all()):
            raise ValueError("betas must be a 1-D array of values in (0, 1]")
        self.betas = betas
        self.log_betas = np.log(betas)  # the learned range's upper end, looked up on every model call
        self.num_timesteps = int(betas.shape[0])

        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.alphas_cumprod_next = np.append(self.alphas_cumprod[1:], 0.0)

        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_one_minus_alphas_cumprod = np.log(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)

        # q(x_{t-1} | x_t, x_0)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance is 0 at t=0; its log is clipped to the t=1 value so it stays finite.
        if self.num_timesteps > 1:
            self.posterior_log_variance_clipped = np.log(
                np.append(self.posterior_variance[1], self.posterior_variance[1:])
            )
        else:
            self.posterior_log_variance_clipped = np.log(np.maximum(self.posterior_variance, 1e-20))
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # ----- forward process -------------------------------------------------------------------
    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_t | x_0)."""
        mean = _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = _extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = _extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0), with the given noise if any."""
        if noise is None:
            noise = torch.randn_like(x_start)
        if noise.shape != x_start.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} differs from x_start shape {tuple(x_start.shape)}")
        return (
            _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
            + _extract_into_tensor(self.sqrt_one_minus_alphas_cumprod, t, x_start.shape) * noise
        )

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
        if x_start.shape != x_t.shape:
            raise ValueError(f"x_start {tuple(x_start.shape)} and x_t {tuple(x_t.shape)} differ in shape")
        mean = (
            _extract_into_tensor(self.posterior_mean_coef1, t, x_t.shape) * x_start
            + _extract_into_tensor(self.posterior_mean_coef2, t, x_t.shape) * x_t
        )
        variance = _extract_into_tensor(self.posterior_variance, t, x_t.shape)
        log_variance = _extract_into_tensor(self.posterior_log_variance_clipped, t, x_t.shape)
        return mean, variance, log_variance

    # ----- reverse process -------------------------------------------------------------------
    def p_mean_variance(
        self,
        model,
        x: torch.Tensor,
        t: torch.Tensor,
        clip_denoised: bool = True,
        denoised_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
    ) -> Dict[str, torch.Tensor]:
        """Apply the model to get p(x_{t-1} | x_t): dict with mean, variance, log_variance, pred_xstart."""
        model_kwargs = model_kwargs or {}
        b, c = x.shape[:2]
        if t.shape != (b,):
            raise ValueError(f"t must have shape ({b},), got {tuple(t.shape)}")
        model_output = model(x, self._scale_timesteps(t), **model_kwargs)
        return self._p_mean_variance_from_output(model_output, x, t, clip_denoised, denoised_fn)

    def _p_mean_variance_from_output(self, model_output, x, t, clip_denoised=True, denoised_fn=None):
        """The part of p_mean_variance after the network call (lets callers reuse one forward pass)."""
        b, c = x.shape[:2]
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            if model_output.shape != (b, c * 2, *x.shape[2:]):
                raise ValueError(
                    f"a learned-variance model must output {c * 2} channels (mean and variance), "
                    f"got output shape {tuple(model_output.shape)}; check learn_sigma"
                )
            model_output, var_values = torch.split(model_output, c, dim=1)
            if self.model_var_type == ModelVarType.LEARNED:
                model_log_variance = var_values
                model_variance = torch.exp(model_log_variance)
            else:
                min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
                max_log = _extract_into_tensor(self.log_betas, t, x.shape)
                frac = (var_values + 1) / 2  # the network outputs values in [-1, 1]
                model_log_variance = frac * max_log + (1 - frac) * min_log
                model_variance = torch.exp(model_log_variance)
        else:
            if model_output.shape != x.shape:
                raise ValueError(
                    f"a fixed-variance model must output {c} channels, got output shape "
                    f"{tuple(model_output.shape)}; check learn_sigma"
                )
            if self.model_var_type == ModelVarType.FIXED_LARGE:
                # beta_t, except at t=0 where the posterior variance gives a better decoder
                variance = np.append(self.posterior_variance[1], self.betas[1:])
                log_variance = np.log(variance)
            else:
                variance, log_variance = self.posterior_variance, self.posterior_log_variance_clipped
            model_variance = _extract_into_tensor(variance, t, x.shape)
            model_log_variance = _extract_into_tensor(log_variance, t, x.shape)

        def process_xstart(x0: torch.Tensor) -> torch.Tensor:
            if denoised_fn is not None:
                x0 = denoised_fn(x0)
            return x0.clamp(-1, 1) if clip_denoised else x0

        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            pred_xstart = process_xstart(self._predict_xstart_from_xprev(x_t=x, t=t, xprev=model_output))
            model_mean = model_output
        elif self.model_mean_type in (ModelMeanType.START_X, ModelMeanType.EPSILON):
            if self.model_mean_type == ModelMeanType.START_X:
                pred_xstart = process_xstart(model_output)
            else:
                pred_xstart = process_xstart(self._predict_xstart_from_eps(x_t=x, t=t, eps=model_output))
            model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)
        else:
            raise NotImplementedError(self.model_mean_type)
        return {
            "mean": model_mean,
            "variance": model_variance,
            "log_variance": model_log_variance,
            "pred_xstart": pred_xstart,
        }

    def _predict_xstart_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t
            - _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape) * eps
        )

    def _predict_xstart_from_xprev(self, x_t: torch.Tensor, t: torch.Tensor, xprev: torch.Tensor) -> torch.Tensor:
        return (
            _extract_into_tensor(1.0 / self.posterior_mean_coef1, t, x_t.shape) * xprev
            - _extract_into_tensor(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t.shape) * x_t
        )

    def _predict_eps_from_xstart(self, x_t: torch.Tensor, t: torch.Tensor, pred_xstart: torch.Tensor) -> torch.Tensor:
        return (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x_t.shape) * x_t - pred_xstart
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x_t.shape)

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Map step indices to the [0, 1000) range the network saw when rescale_timesteps is set."""
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    # ----- sampling --------------------------------------------------------------------------
    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, noise=None):
        """One ancestral step x_t -> x_{t-1}; no noise is added at t = 0."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        if noise is None:
            noise = torch.randn_like(x)
        nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
        sample = out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                      model_kwargs=None, device=None, progress=False):
        """Sample from the model by running every reverse step."""
        final = None
        for final in self.p_sample_loop_progressive(
            model, shape, noise, clip_denoised, denoised_fn, model_kwargs, device, progress
        ):
            pass
        return final["sample"]

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  model_kwargs=None, device=None, progress=False) -> Iterator[Dict[str, torch.Tensor]]:
        device = device or next(model.parameters()).device
        img = noise if noise is not None else torch.randn(*shape, device=device)
        for i in self._progress(range(self.num_timesteps)[::-1], progress):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            with torch.no_grad():
                out = self.p_sample(model, img, t, clip_denoised, denoised_fn, model_kwargs)
            yield out
            img = out["sample"]

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0):
        """One DDIM step x_t -> x_{t-1}; eta = 0 is deterministic."""
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        abar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        abar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        mean = out["pred_xstart"] * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma**2) * eps
        nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
        sample = mean + nonzero * sigma * torch.randn_like(x)
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None, eta=0.0):
        """One deterministic DDIM step x_t -> x_{t+1} (encoding an image into noise)."""
        if eta != 0.0:
            raise ValueError("the reverse ODE is only defined for eta = 0")
        out = self.p_mean_variance(model, x, t, clip_denoised, denoised_fn, model_kwargs)
        eps = (
            _extract_into_tensor(self.sqrt_recip_alphas_cumprod, t, x.shape) * x - out["pred_xstart"]
        ) / _extract_into_tensor(self.sqrt_recipm1_alphas_cumprod, t, x.shape)
        abar_next = _extract_into_tensor(self.alphas_cumprod_next, t, x.shape)
        mean = out["pred_xstart"] * torch.sqrt(abar_next) + torch.sqrt(1 - abar_next) * eps
        return {"sample": mean, "pred_xstart": out["pred_xstart"]}

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0):
        final = None
        for final in self.ddim_sample_loop_progressive(
            model, shape, noise, clip_denoised, denoised_fn, model_kwargs, device, progress, eta
        ):
            pass
        return final["sample"]

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     model_kwargs=None, device=None, progress=False, eta=0.0):
        device = device or next(model.parameters()).device
        img = noise if noise is not None else torch.randn(*shape, device=device)
        for i in self._progress(range(self.num_timesteps)[::-1], progress):
            t = torch.full((shape[0],), i, device=device, dtype=torch.long)
            with torch.no_grad():
                out = self.ddim_sample(model, img, t, clip_denoised, denoised_fn, model_kwargs, eta)
            yield out
            img = out["sample"]

    @staticmethod
    def _progress(steps, progress: bool):
        if not progress:
            return steps
        from tqdm.auto import tqdm

        return tqdm(steps)

    # ----- losses and the bound ----------------------------------------------------------------
    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None):
        """One term of the bound in bits/dim: KL(q(x_{t-1}|x_t,x_0) || p(x_{t-1}|x_t)) for t > 0,
        the decoder NLL -log p(x_0 | x_1) at t = 0."""
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        return self._vb_terms_bpd_from_p(out, x_start, x_t, t)

    def _vb_terms_bpd_from_p(self, out, x_start, x_t, t):
        true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])) / math.log(2.0)
        decoder_nll = -discretized_gaussian_log_likelihood(
            x_start, means=out["mean"], log_scales=0.5 * out["log_variance"], num_levels=self.num_levels
        )
        decoder_nll = mean_flat(decoder_nll) / math.log(2.0)
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None) -> Dict[str, torch.Tensor]:
        """Per-example training losses at timesteps t: dict with "loss" (and "mse"/"vb" for hybrids)."""
        model_kwargs = model_kwargs or {}
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms: Dict[str, torch.Tensor] = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=False, model_kwargs=model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        if self.loss_type not in (LossType.MSE, LossType.RESCALED_MSE):
            raise NotImplementedError(self.loss_type)
        model_output = model(x_t, self._scale_timesteps(t), **model_kwargs)
        if self.model_var_type in (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE):
            c = x_t.shape[1]
            if model_output.shape != (x_t.shape[0], c * 2, *x_t.shape[2:]):
                raise ValueError(f"learned-variance model output has shape {tuple(model_output.shape)}")
            model_output, var_values = torch.split(model_output, c, dim=1)
            # The VB term trains only the variance: the mean is detached, as in improved DDPM.
            frozen = torch.cat([model_output.detach(), var_values], dim=1)
            out = self._p_mean_variance_from_output(frozen, x_t, t, clip_denoised=False)
            terms["vb"] = self._vb_terms_bpd_from_p(out, x_start, x_t, t)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        target = {
            ModelMeanType.PREVIOUS_X: lambda: self.q_posterior_mean_variance(x_start, x_t, t)[0],
            ModelMeanType.START_X: lambda: x_start,
            ModelMeanType.EPSILON: lambda: noise,
        }[self.model_mean_type]()
        if model_output.shape != target.shape:
            raise ValueError(f"model output {tuple(model_output.shape)} vs target {tuple(target.shape)}")
        terms["mse"] = mean_flat((target - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start: torch.Tensor) -> torch.Tensor:
        """KL(q(x_T | x_0) || N(0, I)) in bits/dim; not learned, but part of the bound."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, device=x_start.device, dtype=torch.long)
        mean, _, log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None, progress=False, noise_fn=None):
        """The full variational bound per image in bits/dim, one fresh noise draw per step.

        Returns total_bpd (B,), prior_bpd (B,), vb (B, T), xstart_mse (B, T), mse (B, T), with the
        time axis ordered from t = T-1 down to 0. `noise_fn(t)` may supply the noise of step t.
        """
        vb, xstart_mse, mse = [], [], []
        batch = x_start.shape[0]
        for step in self._progress(range(self.num_timesteps)[::-1], progress):
            t = torch.full((batch,), step, device=x_start.device, dtype=torch.long)
            noise = noise_fn(step) if noise_fn is not None else torch.randn_like(x_start)
            x_t = self.q_sample(x_start, t, noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))
        vb_t = torch.stack(vb, dim=1)
        prior_bpd = self._prior_bpd(x_start)
        return {
            "total_bpd": vb_t.sum(dim=1) + prior_bpd,
            "prior_bpd": prior_bpd,
            "vb": vb_t,
            "xstart_mse": torch.stack(xstart_mse, dim=1),
            "mse": torch.stack(mse, dim=1),
        }
