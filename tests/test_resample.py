"""Timestep samplers: uniform, and loss-second-moment warm-up then importance sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from improved_diffusion.resample import (
    LossSecondMomentResampler,
    UniformSampler,
    create_named_schedule_sampler,
)


class _Diffusion:
    num_timesteps = 8


def test_names_and_unknown_name():
    assert isinstance(create_named_schedule_sampler("uniform", _Diffusion()), UniformSampler)
    assert isinstance(create_named_schedule_sampler("loss-second-moment", _Diffusion()), LossSecondMomentResampler)
    with pytest.raises(ValueError, match=r"Unknown schedule sampler 'lossy'.*'uniform', 'loss-second-moment'"):
        create_named_schedule_sampler("lossy", _Diffusion())


def test_uniform_sampler_has_unit_weights():
    np.random.seed(0)
    t, w = UniformSampler(_Diffusion()).sample(1000, "cpu")
    assert t.dtype == torch.int64 and w.dtype == torch.float32
    assert t.min() >= 0 and t.max() <= 7 and len(set(t.tolist())) == 8
    assert torch.all(w == 1.0)


def _feed(sampler: LossSecondMomentResampler, rounds: int, scale: np.ndarray) -> None:
    for _ in range(rounds):
        ts = torch.arange(8)
        sampler.update_with_local_losses(ts, torch.tensor(scale, dtype=torch.float32))


def test_loss_second_moment_warms_up_then_importance_samples():
    np.random.seed(0)
    sampler = LossSecondMomentResampler(_Diffusion(), history_per_term=10, uniform_prob=0.001)
    scale = np.array([8.0, 4.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0])

    _feed(sampler, 9, scale)
    assert not sampler._warmed_up()
    np.testing.assert_array_equal(sampler.weights(), np.ones(8))  # still uniform
    _, w = sampler.sample(64, "cpu")
    assert torch.all(w == 1.0)

    _feed(sampler, 1, scale)  # every timestep now has 10 losses
    assert sampler._warmed_up()
    p = sampler.weights() / sampler.weights().sum()
    expected = scale / scale.sum() * (1 - 0.001) + 0.001 / 8
    np.testing.assert_allclose(p, expected, rtol=1e-12)

    t, w = sampler.sample(200_000, "cpu")
    freq = np.bincount(t.numpy(), minlength=8) / len(t)
    np.testing.assert_allclose(freq, expected, rtol=0.05)
    np.testing.assert_allclose(w.numpy(), 1.0 / (8 * expected[t.numpy()]), rtol=1e-6)
    # Unbiased: the weighted mean of sampled losses estimates the plain mean over timesteps,
    # with less variance than uniform sampling.
    weighted = (w.numpy() * scale[t.numpy()]).mean()
    assert weighted == pytest.approx(scale.mean(), rel=0.01)
    assert np.var(w.numpy() * scale[t.numpy()]) < np.var(scale)


def test_history_keeps_only_recent_losses():
    sampler = LossSecondMomentResampler(_Diffusion(), history_per_term=2)
    sampler.update_with_all_losses([3, 3, 3], [1.0, 2.0, 5.0])
    np.testing.assert_array_equal(sampler._loss_history[3], [2.0, 5.0])
    assert sampler._loss_counts[3] == 2
    with pytest.raises(ValueError, match="outside the diffusion's range 0..7"):
        sampler.update_with_all_losses([8], [1.0])


def test_state_round_trip_and_mismatch():
    a = LossSecondMomentResampler(_Diffusion())
    _feed(a, 10, np.arange(1.0, 9.0))
    b = LossSecondMomentResampler(_Diffusion())
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(a.weights(), b.weights())

    class _Other:
        num_timesteps = 4

    with pytest.raises(ValueError, match="another number of steps"):
        LossSecondMomentResampler(_Other()).load_state_dict(a.state_dict())


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="history_per_term must be >= 1"):
        LossSecondMomentResampler(_Diffusion(), history_per_term=0)
    with pytest.raises(ValueError, match="uniform_prob must be in"):
        LossSecondMomentResampler(_Diffusion(), uniform_prob=2.0)
    with pytest.raises(ValueError, match="one loss per timestep"):
        LossSecondMomentResampler(_Diffusion()).update_with_local_losses(torch.arange(3), torch.ones(2))
