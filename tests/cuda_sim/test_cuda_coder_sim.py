"""The CUDA coder in numba's CUDA simulator: its kernels and block scans give the same symbols,
the same messages and the same traces as the CPU kernels on the same inputs (the simulator
computes the CDFs with scipy, as the CPU does), and its own drivers round-trip exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_bitswap import CheatNet, ConvNet, edge_images, process

import craystack as cs
from bits_back_diffusion.bitswap import BitSwapCodec
from bits_back_diffusion.codec import BitsBackCodec
from bits_back_diffusion.coding import Precisions, initial_message
from bits_back_diffusion.latent_model import DiffusionLatentModel
from craystack.compiled.cuda_message import THREADS

PREC = Precisions(prior_prec=14, latent_prec=24, obs_prec=16)


def _codecs(net, diffusion, track=True):
    lm = DiffusionLatentModel(net, diffusion, torch.device("cpu"))
    return (BitSwapCodec(lm, PREC, track=track, coder="host"), BitSwapCodec(lm, PREC, track=track, coder="cuda"))


def _same_run(host, device, x, head_images, start_words=0, seed=0):
    shape = (head_images,) + x.shape[1:]
    start = (initial_message(host, shape, seed) if start_words == 0
             else cs.random_message(start_words, shape, seed=seed))
    enc_h, enc_d = host.encode(start, x), device.encode(start, x)
    assert cs.message_equal(enc_h, enc_d), "the CUDA kernels must write the CPU kernels' message"
    for a, b in zip((host.trace.pop_bits, host.trace.push_bits, host.trace.data_bits),
                    (device.trace.pop_bits, device.trace.push_bits, device.trace.data_bits)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    dec_d, x_d = device.decode(enc_d, x.shape[0])
    np.testing.assert_array_equal(x_d, x)
    assert cs.message_equal(dec_d, start)
    return enc_d


def test_threads_are_few_in_the_simulator():
    assert THREADS <= 8  # many lanes per thread: the runs and strides of the block scans are exercised


@pytest.mark.parametrize("batch,head_images", [(3, 1), (4, 2), (2, 2)])
def test_cuda_kernels_write_the_cpu_message(batch, head_images):
    diffusion = process(40, "4")
    x = np.random.default_rng(batch).integers(0, 256, (batch, 3, 4, 4))
    host, device = _codecs(ConvNet(seed=batch), diffusion)
    _same_run(host, device, x, head_images)


def test_edge_images_and_an_empty_tail_borrowing():
    """Levels 0 and 255 (the likelihood's edge bins) from the bare message: the first pops borrow
    generator words and the pushes give them back."""
    diffusion = process(40, "3")
    x = edge_images((3, 4, 4))
    host, device = _codecs(ConvNet(seed=5), diffusion)
    _same_run(host, device, x, 1)


def test_a_long_message_below_is_fetched_as_on_the_cpu():
    diffusion = process(40, "3")
    x = np.random.default_rng(2).integers(0, 256, (2, 3, 4, 4))
    host, device = _codecs(ConvNet(seed=2), diffusion)
    _same_run(host, device, x, 1, start_words=3000)


def test_hostile_model_outputs_are_coded_alike():
    """A model that knows the data (tiny, exact variances) next to one with huge outputs."""
    diffusion = process(40, "4")
    x = np.random.default_rng(7).integers(0, 256, (2, 3, 4, 4))
    x_model = x / 127.5 - 1.0
    host, device = _codecs(CheatNet(x_model, process(40).alphas_cumprod), diffusion)
    _same_run(host, device, x, 1)
    host, device = _codecs(ConvNet(seed=3, scale=40.0), diffusion)
    _same_run(host, device, x, 2)


def test_a_message_from_another_model_is_refused_like_on_the_cpu():
    diffusion = process(40, "3")
    x = np.random.default_rng(4).integers(0, 256, (2, 3, 4, 4))
    host, device = _codecs(ConvNet(seed=4), diffusion, track=False)
    encoded = device.encode(initial_message(device, (1, 3, 4, 4), 0), x)
    _, other = _codecs(ConvNet(seed=9, scale=3.0), diffusion, track=False)
    errors = []
    for codec in (host, other):
        try:
            _, got = codec.decode(encoded, 2)
            errors.append(None if not np.array_equal(got, x) else "same")
        except (ValueError, RuntimeError) as exc:
            errors.append(type(exc).__name__)
    assert errors[0] == "same"  # the host coder decodes the simulator's file (same CDFs here)
    assert errors[1] != "same"  # another model never gives the images back


def test_device_drivers_round_trip_with_their_own_model_values(monkeypatch):
    monkeypatch.undo()  # torch's own mean and std, as on a GPU
    diffusion = process(40, "4")
    x = np.random.default_rng(11).integers(0, 256, (3, 3, 4, 4))
    _, device = _codecs(ConvNet(seed=11), diffusion)
    start = initial_message(device, (1, 3, 4, 4), 0)
    encoded = device.encode(start, x)
    decoded, back = device.decode(encoded, 3)
    np.testing.assert_array_equal(back, x)
    assert cs.message_equal(decoded, start)


@pytest.mark.parametrize("batch", [1, 3])
def test_bbans_on_the_cuda_coder_writes_the_cpu_message(batch):
    lm = DiffusionLatentModel(ConvNet(seed=batch), process(40, "3"), torch.device("cpu"))
    prec = BitsBackCodec.default_precisions
    host = BitsBackCodec(lm, prec, track=True, coder="host")
    device = BitsBackCodec(lm, prec, track=True, coder="cuda")
    x = edge_images((3, 4, 4))[:batch] if batch == 3 else np.random.default_rng(1).integers(0, 256, (1, 3, 4, 4))
    _same_run(host, device, x, batch)


def test_bbans_device_drivers_round_trip_with_their_own_model_values(monkeypatch):
    monkeypatch.undo()  # torch's own means and standard deviations, as on a GPU
    lm = DiffusionLatentModel(ConvNet(seed=6), process(40, "3"), torch.device("cpu"))
    device = BitsBackCodec(lm, BitsBackCodec.default_precisions, coder="cuda")
    x = np.random.default_rng(6).integers(0, 256, (2, 3, 4, 4))
    start = initial_message(device, x.shape, 0)
    decoded, back = device.decode(device.encode(start, x), 2)
    np.testing.assert_array_equal(back, x)
    assert cs.message_equal(decoded, start)
