"""Behaviour of GaussianDiffusion beyond the reference fixture: every mean/variance/loss type."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from improved_diffusion import gaussian_diffusion as gd
from improved_diffusion.losses import discretized_gaussian_log_likelihood, normal_kl
from improved_diffusion.script_util import create_gaussian_diffusion


class ConstModel(torch.nn.Module):
    """Returns a fixed tensor: lets tests reason about the maths without a network."""

    def __init__(self, channels_out: int, value: float = 0.1):
        super().__init__()
        self.channels_out = channels_out
        self.value = value
        self.param = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, t):
        b, _, h, w = x.shape
        return torch.full((b, self.channels_out, h, w), self.value) + 0 * self.param


def make(mean_type, var_type, loss_type, steps=100):
    return gd.GaussianDiffusion(
        betas=gd.get_named_beta_schedule("linear", steps), model_mean_type=mean_type,
        model_var_type=var_type, loss_type=loss_type,
    )


@pytest.mark.parametrize("mean_type", list(gd.ModelMeanType))
@pytest.mark.parametrize("var_type", list(gd.ModelVarType))
@pytest.mark.parametrize("loss_type", list(gd.LossType))
def test_training_losses_finite_for_every_combination(mean_type, var_type, loss_type):
    diffusion = make(mean_type, var_type, loss_type)
    learned = var_type in (gd.ModelVarType.LEARNED, gd.ModelVarType.LEARNED_RANGE)
    model = ConstModel(6 if learned else 3, 0.05)
    x = torch.rand(3, 3, 4, 4) * 2 - 1
    t = torch.tensor([0, 5, 99])
    terms = diffusion.training_losses(model, x, t)
    assert terms["loss"].shape == (3,)
    assert torch.isfinite(terms["loss"]).all()
    if loss_type in (gd.LossType.MSE, gd.LossType.RESCALED_MSE):
        assert ("vb" in terms) == learned


def test_wrong_output_channels_is_a_clear_error():
    diffusion = make(gd.ModelMeanType.EPSILON, gd.ModelVarType.LEARNED_RANGE, gd.LossType.MSE)
    with pytest.raises(ValueError, match="learn_sigma"):
        diffusion.p_mean_variance(ConstModel(3), torch.zeros(1, 3, 4, 4), torch.tensor([1]))


def test_unknown_schedule_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown noise schedule 'quadratic'"):
        gd.get_named_beta_schedule("quadratic", 10)


def test_posterior_of_perfect_model_has_zero_kl():
    """With the true x0 predicted and the posterior variance, the KL term vanishes."""
    diffusion = make(gd.ModelMeanType.START_X, gd.ModelVarType.FIXED_SMALL, gd.LossType.KL)
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    t = torch.tensor([3, 7])
    x_t = diffusion.q_sample(x0, t)
    out = diffusion._vb_terms_bpd(lambda x, s: x0, x0, x_t, t, clip_denoised=False)
    assert torch.allclose(out["output"], torch.zeros(2), atol=1e-6)


def test_discretized_likelihood_sums_to_one_over_levels():
    for levels in (2, 17, 256):
        values = torch.linspace(-1, 1, levels)
        means = torch.full((levels,), 0.3)
        log_scales = torch.full((levels,), math.log(0.4))
        logp = discretized_gaussian_log_likelihood(values, means=means, log_scales=log_scales, num_levels=levels)
        assert abs(float(torch.exp(logp).sum()) - 1.0) < 2e-3  # tanh approximation of Phi


def test_normal_kl_closed_form():
    kl = normal_kl(torch.tensor(1.0), torch.tensor(0.0), 0.0, 0.0)
    assert float(kl) == pytest.approx(0.5)


def test_sampling_loops_shapes_and_determinism():
    diffusion = create_gaussian_diffusion(steps=10, learn_sigma=True, noise_schedule="cosine", use_kl=True)
    model = ConstModel(6, 0.0)
    torch.manual_seed(0)
    a = diffusion.p_sample_loop(model, (2, 3, 4, 4))
    torch.manual_seed(0)
    b = diffusion.p_sample_loop(model, (2, 3, 4, 4))
    assert a.shape == (2, 3, 4, 4) and torch.equal(a, b)
    noise = torch.randn(2, 3, 4, 4)
    c = diffusion.ddim_sample_loop(model, (2, 3, 4, 4), noise=noise)
    d = diffusion.ddim_sample_loop(model, (2, 3, 4, 4), noise=noise)
    assert torch.equal(c, d) and c.abs().max() <= 1.5


def test_calc_bpd_loop_total_is_sum_of_terms():
    diffusion = create_gaussian_diffusion(steps=8, learn_sigma=True, noise_schedule="cosine", use_kl=True, num_levels=17)
    x0 = (torch.randint(0, 17, (2, 1, 4, 4)).float() / 8) - 1
    result = diffusion.calc_bpd_loop(ConstModel(2, 0.0), x0)
    assert result["vb"].shape == (2, 8)
    assert torch.allclose(result["total_bpd"], result["vb"].sum(1) + result["prior_bpd"])
    assert np.isfinite(result["total_bpd"].numpy()).all()
