"""BB-ANS decode keeps 10 bytes per dimension per step between its passes (issue 14, item 8),
recomputes the float64 priors bit for bit, and still restores images and message exactly."""
from __future__ import annotations

import tracemalloc

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given, settings

import craystack as cs
from bits_back_diffusion.bbans_tape import PriorTape, index_dtype
from bits_back_diffusion.codec import BitsBackCodec
from bits_back_diffusion.coding import Precisions, initial_message
from bits_back_diffusion.compiled_codecs import BACKENDS
from bits_back_diffusion.latent_model import DiffusionLatentModel, _host
from improved_diffusion.script_util import create_gaussian_diffusion

OLD_BYTES_PER_DIM = 8 + 8 + 8 + 4  # float64 prior mean and std, int64 index, float32 latent


class SmallConv(torch.nn.Module):
    """A cheap CIFAR-shaped model: one convolution to mean and variance channels."""

    def __init__(self, channels: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(channels, 2 * channels, 3, padding=1)

    def forward(self, x, t):
        return torch.tanh(self.conv(x))


def latent_model(steps: int, channels: int = 3) -> DiffusionLatentModel:
    diffusion = create_gaussian_diffusion(steps=steps, learn_sigma=True, noise_schedule="cosine", use_kl=True,
                                          rescale_timesteps=True, num_levels=256)
    return DiffusionLatentModel(SmallConv(channels).eval(), diffusion, torch.device("cpu"))


def encoded(lm, x, backend="numba", prior_prec=10):
    codec = BitsBackCodec(lm, Precisions(prior_prec=prior_prec), backend=backend)
    start = initial_message(codec, x.shape, seed=0)
    return codec, start, codec.encode(start, x)


@pytest.fixture
def tapes(monkeypatch):
    """Every PriorTape a decode fills (peak_nbytes: its size when the prior pass ended)."""
    seen = []
    record = PriorTape.record

    def spy(self, idx, raw):
        if not any(t is self for t in seen):
            seen.append(self)
        record(self, idx, raw)

    monkeypatch.setattr(PriorTape, "record", spy)
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_keeps_ten_bytes_per_dim_per_step_and_roundtrips(backend, tapes):
    steps, x = 12, np.random.default_rng(0).integers(0, 256, (3, 3, 8, 8))
    lm = latent_model(steps)
    codec, start, message = encoded(lm, x, backend)
    back, decoded = codec.decode(message, len(x))
    np.testing.assert_array_equal(decoded, x)
    assert cs.message_equal(back, start)
    (tape,) = tapes
    dims = x.size
    # Indices of 2**10 bins in 2 bytes every step; float32 mean + log-variance below the top step.
    assert tape.peak_nbytes == steps * dims * 2 + (steps - 1) * dims * 8
    assert tape.peak_nbytes < steps * dims * OLD_BYTES_PER_DIM * 0.36
    assert tape.nbytes == 0, "every step is dropped once its posterior is pushed"


def test_both_backends_write_the_same_message_and_decode_it_to_the_start():
    x = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 4))
    lm = latent_model(9)
    results = []
    for backend in BACKENDS:
        codec, start, message = encoded(lm, x, backend)
        back, decoded = codec.decode(message, len(x))
        np.testing.assert_array_equal(decoded, x)
        assert cs.message_equal(back, start)
        results.append(cs.flatten(message))
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("prior_prec,dtype", [(1, np.uint8), (8, np.uint8), (10, np.uint16), (16, np.uint16),
                                              (17, np.uint32), (31, np.uint32)])
def test_indices_take_the_smallest_unsigned_type(prior_prec, dtype):
    assert index_dtype(prior_prec) == np.dtype(dtype)


def test_wide_bins_roundtrip_with_uint32_indices(tapes):
    x = np.random.default_rng(2).integers(0, 256, (2, 3, 4, 4))
    codec, start, message = encoded(latent_model(5), x, "numpy", prior_prec=17)
    back, decoded = codec.decode(message, len(x))
    np.testing.assert_array_equal(decoded, x)
    assert cs.message_equal(back, start)
    assert tapes[0].peak_nbytes == 5 * x.size * 4 + 4 * x.size * 8


def test_only_the_top_step_goes_without_a_raw_prior():
    lm = latent_model(3)
    codec = BitsBackCodec(lm, Precisions())
    idx = np.zeros((1, 3, 2, 2), np.int64)
    raw = lm.reverse_raw(torch.zeros(1, 3, 2, 2), 2)
    with pytest.raises(ValueError, match="top step"):
        PriorTape(codec, idx.shape, 2).record(idx, raw)
    tape = PriorTape(codec, idx.shape, 2)
    tape.record(idx, None)
    with pytest.raises(ValueError, match="top step"):
        tape.record(idx, None)
    tape.record(idx, raw)
    with pytest.raises(ValueError, match="holds 2 steps"):
        tape.record(idx, raw)


@pytest.mark.parametrize("t", [0, 1, 6])
def test_recomputed_prior_is_bit_identical_to_the_float64_one(t):
    """gaussian_from_raw gives the bits of the former float64 path (torch widening, then exp), every call."""
    lm = latent_model(7)
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(t)) * 3
    raw = lm.reverse_raw(z, t)
    assert raw[0].dtype == np.float32 and raw[1].dtype == np.float32
    with torch.inference_mode():
        out = lm.diffusion.p_mean_variance(lm.model, z, torch.full((2,), t), clip_denoised=True)
    old_mean = out["mean"].to(torch.float64).numpy()
    low = max(lm.std_range[0], lm.likelihood_std_min if t == 0 else 0.0)
    old_std = np.clip(np.exp(0.5 * out["log_variance"].to(torch.float64).numpy()), low, lm.std_range[1])
    for mean, std in (lm.gaussian_from_raw(raw, t), lm.gaussian_from_raw(raw, t), lm.reverse(z, t)):
        assert mean.dtype == std.dtype == np.float64
        np.testing.assert_array_equal(mean.view(np.uint64), old_mean.view(np.uint64))
        np.testing.assert_array_equal(std.view(np.uint64), old_std.view(np.uint64))


def test_host_copies_widen_exactly_and_own_their_memory():
    big = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    view = _host(big[1:, ::2])
    assert view.flags.c_contiguous and view.flags.owndata and view.dtype == np.float32
    np.testing.assert_array_equal(view, big[1:, ::2].numpy())
    bf = torch.tensor([1.5, -3.25, 1e-3], dtype=torch.bfloat16)
    np.testing.assert_array_equal(_host(bf), bf.to(torch.float64).numpy())


@pytest.mark.parametrize("backend", BACKENDS)
def test_prior_pass_retains_at_most_the_tape(backend, monkeypatch):
    """Traced memory gained by the time the posterior pass starts: the tape's 10 bytes per dim per
    step plus the coder's own buffers, 12-14 here; the former lists (before PriorTape) made it 22-24."""
    steps, x = 80, np.random.default_rng(3).integers(0, 256, (2, 3, 32, 32))
    lm = latent_model(steps)
    codec, start, message = encoded(lm, x, backend)
    held = {}
    top = lm.posterior_top

    def at_peak(x_model):
        held["bytes"] = tracemalloc.get_traced_memory()[0] - held["start"]
        return top(x_model)

    monkeypatch.setattr(lm, "posterior_top", at_peak)
    tracemalloc.start()
    try:
        held["start"] = tracemalloc.get_traced_memory()[0]
        back, decoded = codec.decode(message, len(x))
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(decoded, x)
    assert cs.message_equal(back, start)
    per_dim_step = held["bytes"] / (steps * x.size)
    assert per_dim_step < 16, f"{per_dim_step:.2f} traced bytes per dim per step held by the prior pass"


def test_encode_keeps_indices_in_the_smallest_type_and_pushes_them_bottom_up():
    """BB-ANS encode pops every step's bin index before it can push them with the uniform prior:
    2 bytes per dimension per step at prior_prec 10, handed back as int64, last recorded first."""
    from bits_back_diffusion.bbans_tape import IndexTape

    tape = IndexTape(10, (2, 3), 3)
    assert tape._indices.dtype == np.uint16 and tape._indices.nbytes == 3 * 6 * 2
    steps = [np.full((2, 3), v, dtype=np.int64) for v in (0, 1023, 7)]
    for idx in steps:
        tape.record(idx)
    back = list(tape.bottom_up())
    assert all(b.dtype == np.int64 for b in back)
    assert [int(b[0, 0]) for b in back] == [7, 1023, 0]


@settings(max_examples=200, deadline=None)
@given(log_var=hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32, allow_nan=True,
                                                                              allow_infinity=True)),
       t=st.integers(0, 2))
def test_in_place_std_gives_the_bits_of_clip_of_exp(log_var, t):
    """gaussian_from_raw reuses one array for 0.5 * v, exp and the clamp; hostile log-variances
    (NaN, infinities, values whose exp over- or underflows) give np.clip(np.exp(...))'s bits."""
    lm = latent_model(3)
    with np.errstate(over="ignore"):  # exp(0.5 * 3e38) overflows to inf, which the clamp bounds
        mean, std = lm.gaussian_from_raw((log_var, log_var), t)
        low = max(lm.std_range[0], lm.likelihood_std_min if t == 0 else 0.0)
        want = np.clip(np.exp(0.5 * log_var.astype(np.float64)), low, lm.std_range[1])
    finite = np.isfinite(want)
    assert np.array_equal(np.isnan(std), np.isnan(want))
    np.testing.assert_array_equal(std[finite].view(np.uint64), want[finite].view(np.uint64))
    np.testing.assert_array_equal(mean, log_var.astype(np.float64))
