"""Timestep respacing: section counts, ddimN and the results table's vlbN."""
from __future__ import annotations

import numpy as np
import pytest

from improved_diffusion.gaussian_diffusion import get_named_beta_schedule
from improved_diffusion.respace import SpacedDiffusion, space_timesteps
from improved_diffusion.script_util import create_gaussian_diffusion


def test_vlb100_of_4000_matches_reference(fixtures_dir):
    ref = np.load(fixtures_dir / "tiny_cifar_vlb.npz")["timesteps"]
    np.testing.assert_array_equal(sorted(space_timesteps(4000, "vlb100")), ref)


@pytest.mark.parametrize("count", [100, 200, 500, 1000, 2000, 4000])
def test_vlb_counts_from_4000(count):
    steps = sorted(space_timesteps(4000, f"vlb{count}"))
    assert len(steps) == count
    dense = 4000 // count
    assert steps[:dense] == list(range(dense))
    assert steps[0] == 0 and steps[-1] == 3999


def test_vlb_needs_more_steps_than_the_dense_part():
    with pytest.raises(ValueError, match="more steps"):
        space_timesteps(4000, "vlb50")  # 4000 // 50 = 80 >= 50


def test_section_counts_and_ddim():
    assert space_timesteps(100, "10") == set(range(0, 100, 11)) | {99}
    steps = space_timesteps(300, "10,15,20")
    assert len(steps) == 45 and min(steps) == 0 and max(steps) == 299
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(10, "") == set(range(10))


@pytest.mark.parametrize("bad", ["ddim7x", "vlb", "10,abc", "ddim999"])
def test_bad_respacing_strings(bad):
    with pytest.raises(ValueError):
        space_timesteps(100, bad)


def test_section_too_small():
    with pytest.raises(ValueError, match="cannot take"):
        space_timesteps(10, "5,20")


def test_respaced_process_keeps_alpha_bar_at_kept_steps():
    base_betas = get_named_beta_schedule("cosine", 4000)
    base_abar = np.cumprod(1 - base_betas)
    diffusion = create_gaussian_diffusion(
        steps=4000, learn_sigma=True, noise_schedule="cosine", use_kl=True,
        rescale_timesteps=True, timestep_respacing="vlb100",
    )
    assert isinstance(diffusion, SpacedDiffusion) and diffusion.num_timesteps == 100
    np.testing.assert_allclose(diffusion.alphas_cumprod, base_abar[diffusion.timestep_map], rtol=1e-8)
