"""Bit-Swap codec: exact roundtrips, rate at the VLB, initial bits independent of the step count."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import craystack as cs
from bits_back_diffusion.bitswap import (
    BITSWAP_PRECISIONS,
    BitSwapCodec,
    bins_per_sigma,
    check_bin_precision,
    model_latent_codec,
    peak_deficit_bits,
    sampled_latent_codec,
    slot_key,
)
from bits_back_diffusion.codec import BitsBackCodec
from bits_back_diffusion.coding import Precisions, initial_message, message_bits
from bits_back_diffusion.compiled_codecs import BACKENDS
from bits_back_diffusion.latent_model import DiffusionLatentModel
from bits_back_diffusion.vlb import batch_vlb
from improved_diffusion.script_util import create_gaussian_diffusion


class ConvNet(torch.nn.Module):
    """A cheap stand-in for a UNet: one random 3x3 convolution to (eps, v)."""

    def __init__(self, channels: int = 3, seed: int = 0, scale: float = 0.05):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv = torch.nn.Conv2d(channels, 2 * channels, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=gen) * scale)
            self.conv.bias.zero_()

    def forward(self, x, t):
        return self.conv(x)


class CheatNet(torch.nn.Module):
    """Knows the images: predicts their exact noise and the posterior variance, so that
    p(z_{t-1} | z_t) = q(z_{t-1} | z_t, x) and every KL term vanishes."""

    def __init__(self, x_model: np.ndarray, alphas_cumprod: np.ndarray):
        super().__init__()
        self.x = torch.as_tensor(x_model, dtype=torch.float64)
        self.abar = torch.as_tensor(np.asarray(alphas_cumprod), dtype=torch.float64)

    def forward(self, z, t):
        a = self.abar[t.long()].view(-1, 1, 1, 1)
        eps = (z.double() - a.sqrt() * self.x[: z.shape[0]]) / (1 - a).sqrt()
        return torch.cat([eps.float(), -torch.ones_like(z)], dim=1)


def process(steps: int, respacing: str = "", num_levels: int = 256):
    return create_gaussian_diffusion(steps=steps, noise_schedule="cosine", learn_sigma=True, use_kl=True,
                                     rescale_timesteps=False, timestep_respacing=respacing, num_levels=num_levels)


def edge_images(shape, num_levels=256, seed=0):
    rng = np.random.default_rng(seed)
    zeros = np.zeros(shape, dtype=np.int64)
    top = np.full(shape, num_levels - 1, dtype=np.int64)
    noise = rng.integers(0, num_levels, shape)
    return np.stack([zeros, top, noise])


def roundtrip(codec, x, seed=0):
    """Encode x from the runner's initial message and decode it; returns (start, encoded)."""
    start = initial_message(codec, x.shape, seed)
    encoded = codec.encode(start, x)
    decoded, x_back = codec.decode(encoded, x.shape[0])
    np.testing.assert_array_equal(x_back, x)
    assert cs.message_equal(decoded, start), "decoding must give back the initial message exactly"
    return start, encoded


def rate(start, encoded, x) -> float:
    return (message_bits(encoded) - message_bits(start)) / x.size


# --- building blocks ---------------------------------------------------------------------------

@pytest.mark.parametrize("sampled", [True, False])
def test_latent_codec_roundtrip_for_extreme_gaussians(sampled):
    rng = np.random.default_rng(1)
    shape = (4, 50)
    mean = rng.normal(0, 1, shape) * np.array([1, 5, 1e-3, 30])[:, None]
    std = np.exp(rng.uniform(np.log(1e-6), np.log(5), shape))
    build = sampled_latent_codec if sampled else model_latent_codec
    codec = build(mean, std, bin_prec=20, coding_prec=28)
    start = cs.random_message(10 * mean.size, shape, seed=3)
    message, idx = codec.pop(start)
    assert idx.min() >= 0 and idx.max() < 2 ** 20
    back, = codec.push(message, idx)
    assert cs.message_equal(back, start)
    if not sampled:  # the model's code must take any bin, however improbable
        any_bin = rng.integers(0, 2 ** 20, shape)
        pushed, = codec.push(start, any_bin)
        popped, got = codec.pop(pushed)
        np.testing.assert_array_equal(got, any_bin)
        assert cs.message_equal(popped, start)


def test_sampled_latents_are_distributed_as_q():
    """Pops right after pushes of a mismatched model: keyed slots make the draws follow q
    (without keys they would read the model's quantile of the latent just pushed)."""
    from scipy.special import ndtr

    rng = np.random.default_rng(2)
    shape = (20000,)
    message = cs.random_message(10 * shape[0], shape, seed=0)
    draws = []
    for t in range(6):
        mean, std = rng.normal(0, 0.5, shape), 0.1
        message, idx = sampled_latent_codec(mean, std, 20, 28, salt=t).pop(message)
        z = cs.std_gaussian_centres(20)[idx]
        draws.append(ndtr((z - mean) / std))
        message, = model_latent_codec(z + 0.3, 0.05, 20, 28).push(message, idx)  # a badly wrong model
    u = np.concatenate(draws[1:])
    hist = np.histogram(u, bins=10, range=(0, 1))[0] / u.size
    assert np.abs(hist - 0.1).max() < 0.006, hist


def test_slot_keys_depend_on_step_and_quotient_only():
    quotients = np.arange(1 << 20, (1 << 20) + 4096, dtype=np.uint64)
    a, b = slot_key(3)(quotients), slot_key(4)(quotients)
    np.testing.assert_array_equal(a, slot_key(3)(quotients.copy()))
    assert np.mean(a == b) < 0.01
    hist = np.histogram(a & np.uint64((1 << 28) - 1), bins=8, range=(0, 1 << 28))[0] / a.size
    assert np.abs(hist - 1 / 8).max() < 0.03, hist


def test_sampled_codec_pops_the_information_of_q():
    """Bits popped from q's code equal -log2 of the drawn bins' true masses on average. A floored
    or too coarse code (one level of 2**20 bins at 28 bits) draws tail bins whose mass is far below
    2**-28 at 2**-28 and measured about 3e-4 bits short per pop for a q this broad."""
    from scipy.special import ndtr

    shape = (200000,)
    message = cs.random_message(20 * shape[0], shape, seed=4)
    mean, std = np.zeros(shape), np.full(shape, 0.3)
    popped, idx = sampled_latent_codec(mean, std, 20, 28, salt=1).pop(message)
    edges = cs.std_gaussian_buckets(20)
    mass = ndtr((edges[idx + 1] - mean) / std) - ndtr((edges[idx] - mean) / std)
    excess = (message_bits(message) - message_bits(popped)) / mass.size + np.log2(mass).mean()
    assert abs(excess) < 5e-5, excess


def test_bin_precision_check_names_the_fix():
    full = process(4000)
    check_bin_precision(full.betas, BITSWAP_PRECISIONS.prior_prec)
    assert bins_per_sigma(full.betas, 20).min() >= 32
    with pytest.raises(ValueError, match=r"codec.prior_prec=19"):
        check_bin_precision(full.betas, 16)
    lm = DiffusionLatentModel(ConvNet(), full, torch.device("cpu"))
    with pytest.raises(ValueError, match="prior_prec=10"):
        BitSwapCodec(lm, Precisions())  # the BB-ANS defaults are far too coarse here
    with pytest.raises(ValueError, match="limit of 24"):
        BitSwapCodec(lm, Precisions(prior_prec=25, latent_prec=28))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_batches_are_refused_clearly(backend):
    codec = BitSwapCodec(DiffusionLatentModel(ConvNet(), process(100, "5"), torch.device("cpu")), BITSWAP_PRECISIONS,
                         backend=backend)
    message = cs.random_message(4 * 2 * 48, (2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"does not fit a message head"):
        codec.encode(message, np.zeros((2, 3, 4, 5), np.int64))
    with pytest.raises(ValueError, match=r"does not fit a message head"):
        codec.encode(message, np.zeros((0, 3, 4, 4), np.int64))
    with pytest.raises(ValueError, match=r"levels must lie in \[0, 255\].*256"):
        codec.encode(message, np.full((2, 3, 4, 4), 256))
    with pytest.raises(ValueError, match="integer levels"):
        codec.encode(message, np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="cannot decode a batch of 0"):
        codec.decode(message, 0)


# --- roundtrips --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("respacing,num_levels", [("vlb100", 256), ("7", 17)])
def test_roundtrip_edge_images(respacing, num_levels, backend):
    """All-zero, all-max and noise images, the narrowest steps of 4000 (vlb100) and few levels."""
    diffusion = process(4000, respacing, num_levels)
    lm = DiffusionLatentModel(ConvNet(), diffusion, torch.device("cpu"))
    codec = BitSwapCodec(lm, BITSWAP_PRECISIONS, track=True, backend=backend)
    x = edge_images((3, 6, 5), num_levels)
    roundtrip(codec, x)
    assert lm.model_evals == 2 * diffusion.num_timesteps  # one model call per step each way
    trace = codec.trace.as_arrays()
    assert trace["pop_bits"].shape == trace["push_bits"].shape == (1, diffusion.num_timesteps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batches_of_different_sizes_decode_last_first(backend):
    lm = DiffusionLatentModel(ConvNet(), process(1000, "10"), torch.device("cpu"))
    codec = BitSwapCodec(lm, BITSWAP_PRECISIONS, backend=backend)
    rng = np.random.default_rng(4)
    first, second = rng.integers(0, 256, (3, 3, 4, 4)), rng.integers(0, 256, (2, 3, 4, 4))
    start = initial_message(codec, first.shape, seed=1)
    message = codec.encode(codec.encode(start, first), second)
    message, back2 = codec.decode(message, 2)
    message, back1 = codec.decode(message, 3)
    np.testing.assert_array_equal(back2, second)
    np.testing.assert_array_equal(back1, first)
    assert cs.message_equal(message, start)
    assert cs.empty_pops(message) == 0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("head_images", [1, 2])
def test_batches_share_the_lanes_of_a_smaller_head(head_images, backend):
    """A batch of 3 on lanes for 1 or 2 images (groups coded in turn, the last one short) decodes
    exactly, with one model call per step each way, at the same rate as lanes for every image."""
    diffusion = process(4000, "vlb100")
    x = edge_images((3, 6, 5))
    lm = DiffusionLatentModel(ConvNet(), diffusion, torch.device("cpu"))
    codec = BitSwapCodec(lm, BITSWAP_PRECISIONS, backend=backend)
    start = initial_message(codec, (head_images,) + x.shape[1:], seed=3)
    encoded = codec.encode(start, x)
    assert lm.model_evals == diffusion.num_timesteps
    decoded, back = codec.decode(encoded, 3)
    np.testing.assert_array_equal(back, x)
    assert cs.message_equal(decoded, start)
    assert lm.model_evals == 2 * diffusion.num_timesteps
    wide_start, wide = roundtrip(codec, x, seed=3)
    assert rate(start, encoded, x) == pytest.approx(rate(wide_start, wide, x), rel=0.05)  # one draw each


def test_fixture_model_roundtrip_and_rate_near_vlb(tiny_fixture):
    """The reference model on its two CIFAR images with a 20-step process of its family.

    Tolerance 2%: the net rate of one batch (6144 dimensions) is a Monte Carlo estimate over the
    sampled latents, as is the VLB over its noise; with these images both scatter by about 0.5%
    between seeds, and BB-ANS shows the same scatter."""
    flags, model, _, values = tiny_fixture
    diffusion = create_gaussian_diffusion(**dict(flags["diffusion"], steps=20))
    x = values["x_uint8"].astype(np.int64)
    lm = DiffusionLatentModel(model, diffusion, torch.device("cpu"))
    codec = BitSwapCodec(lm, BITSWAP_PRECISIONS)
    start, encoded = roundtrip(codec, x)
    assert lm.model_evals == 40
    vlb = batch_vlb(diffusion, model, torch.from_numpy(x).float() / 127.5 - 1, [0, 1], seed=0)["total_bpd"].mean()
    assert rate(start, encoded, x) == pytest.approx(vlb, rel=0.02)


def test_fixture_model_roundtrip_edge_images(tiny_fixture):
    """Same weights on 8x8 images (the UNet is resolution-agnostic), kept small for speed."""
    flags, model, _, _ = tiny_fixture
    diffusion = create_gaussian_diffusion(**dict(flags["diffusion"], timestep_respacing="8"))
    codec = BitSwapCodec(DiffusionLatentModel(model, diffusion, torch.device("cpu")), BITSWAP_PRECISIONS)
    roundtrip(codec, edge_images((3, 8, 8)))


# --- rate and initial bits ---------------------------------------------------------------------

def cheat_codec(x, steps, respacing, codec_cls=BitSwapCodec, precisions=BITSWAP_PRECISIONS):
    diffusion = process(steps, respacing)
    model = CheatNet(x * 2 / 255 - 1, process(steps).alphas_cumprod)
    return codec_cls(DiffusionLatentModel(model, diffusion, torch.device("cpu")), precisions, track=True), diffusion, model


def test_cheating_model_costs_almost_nothing_and_returns_every_byte():
    x = edge_images((3, 8, 8))[[2]]  # noise: incompressible for any honest model
    codec, diffusion, model = cheat_codec(x, 1000, "50")
    start, encoded = roundtrip(codec, x)
    vlb = batch_vlb(diffusion, model, torch.from_numpy(x).float() / 127.5 - 1, [0], seed=0)["total_bpd"].mean()
    assert vlb < 1.5  # only p(x | z_0), whose variance is clipped at t = 0, costs anything
    assert rate(start, encoded, x) == pytest.approx(vlb, abs=0.03), (rate(start, encoded, x), vlb)


def test_initial_bits_do_not_grow_with_the_number_of_steps():
    """Peak bits the encoder is behind its start (the initial bits it needs), at 20 and 200
    steps: Bit-Swap stays at about one step (two latents of ~bin_prec bits per lane), the
    initial words of BB-ANS grow with N."""
    x = edge_images((3, 8, 8))
    peaks, bbans, borrowed = {}, {}, {}
    for respacing in ("20", "200"):
        codec, _, _ = cheat_codec(x, 1000, respacing)
        start = initial_message(codec, x.shape, seed=2)
        encoded = codec.encode(start, x)
        borrowed[respacing] = cs.empty_pops(encoded) / x.size  # generator words per lane
        peaks[respacing] = peak_deficit_bits(*(codec.trace.as_arrays()[k][0] for k in ("pop_bits", "push_bits")),
                                             codec.trace.data_bits[0]) / x.size
        reference, _, _ = cheat_codec(x, 1000, respacing, BitsBackCodec, Precisions())
        ref_start = initial_message(reference, x.shape, seed=2)
        used = cs.tail_length(ref_start) - cs.low_water(reference.encode(ref_start, x))
        bbans[respacing] = 32 * used / x.size
    assert all(20 < peak < 2 * (20 + 2) for peak in peaks.values()), peaks  # two latents out at once
    assert max(peaks.values()) / min(peaks.values()) <= 1.2, peaks
    assert bbans["200"] > 5 * bbans["20"], bbans
    assert codec.initial_words_per_lane() == 0  # starts bare: heads at their floor, nothing stored
    # the floor's 32 bits cover part of the peak, borrowed words the rest
    assert all(0 < b <= 2 for b in borrowed.values()), borrowed
    assert max(borrowed.values()) - min(borrowed.values()) <= 0.2, borrowed
