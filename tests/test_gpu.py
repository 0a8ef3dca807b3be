"""Coding on the accelerator (marked `gpu`; skipped without CUDA).

`BBD_TEST_DEVICE=cpu python -m pytest -m gpu` runs the same checks on the CPU, which is how
`bench/device_check.sh` is proven end to end before it meets a GPU. `BBD_GPU_IMAGES` sets how many
CIFAR-shaped images the roundtrip codes (default 64). On CUDA, Bit-Swap codes with the CUDA coder
(its kernels on the GPU) unless a test asks for the host coder.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import craystack as cs
from bits_back_diffusion.batch_schedule import BatchSchedule, encode_batch
from bits_back_diffusion.bitswap import BITSWAP_PRECISIONS, BitSwapCodec
from bits_back_diffusion.codec import BitsBackCodec
from bits_back_diffusion.coding import initial_message, message_bits
from bits_back_diffusion.latent_model import DiffusionLatentModel
from bits_back_diffusion.runtime import set_determinism
from improved_diffusion.script_util import create_gaussian_diffusion

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def coding_device() -> torch.device:
    name = os.environ.get("BBD_TEST_DEVICE", "cuda")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("needs CUDA (set BBD_TEST_DEVICE=cpu to run these checks on the CPU)")
    set_determinism()
    return torch.device(name)


@pytest.fixture(scope="module")
def cifar_images(shared_cifar_npz) -> np.ndarray:
    count = int(os.environ.get("BBD_GPU_IMAGES", "64"))
    with np.load(shared_cifar_npz) as data:
        return data["images"][:count].transpose(0, 3, 1, 2).astype(np.int64)


def _codec(tiny_fixture, device: torch.device, coder=None) -> BitSwapCodec:
    flags, model, _, _ = tiny_fixture
    diffusion = create_gaussian_diffusion(**dict(flags["diffusion"], num_levels=256), timestep_respacing="vlb100")
    model = model.to(device)
    return BitSwapCodec(DiffusionLatentModel(model, diffusion, device), BITSWAP_PRECISIONS, coder=coder)


def _decode_all(codec: BitSwapCodec, message, sizes) -> tuple:
    decoded = []
    for size in reversed(sizes):
        message, x = codec.decode(message, size)
        decoded.append(x)
    return message, np.concatenate(decoded[::-1])


def _encode(codec: BitSwapCodec, images: np.ndarray):
    message = initial_message(codec, (1,) + images.shape[1:], seed=0)
    schedule = BatchSchedule(16, grow=True)
    done = 0
    while done < len(images):
        size = schedule.next_size(len(images) - done, message)
        message, _ = encode_batch(codec, message, images[done:done + size], schedule)
        done += size
    return message, schedule.sizes


def test_cifar_shaped_roundtrip_on_the_device_is_exact_and_repeatable(tiny_fixture, coding_device, cifar_images):
    codec = _codec(tiny_fixture, coding_device)
    assert codec.coder == ("cuda" if coding_device.type == "cuda" else "host")
    message, sizes = _encode(codec, cifar_images)
    again, sizes_again = _encode(_codec(tiny_fixture, coding_device), cifar_images)
    assert sizes == sizes_again
    assert np.array_equal(cs.flatten(message), cs.flatten(again)), "two encodes on one device differ"
    message, restored = _decode_all(codec, message, sizes)
    assert np.array_equal(restored, cifar_images)
    start = initial_message(codec, (1,) + cifar_images.shape[1:], seed=0)
    assert cs.message_equal(message, start), "the message did not return to its initial bits"



def test_the_cuda_coder_matches_the_host_coder_in_rate(tiny_fixture, coding_device, cifar_images):
    """Same model on the GPU, both coders: each decodes its own message exactly, and their rates
    agree (their CDFs differ in the last bits only, so only the sampled latents' noise separates them)."""
    if coding_device.type != "cuda":
        pytest.skip("the CUDA coder runs on CUDA only (tests/cuda_sim checks its kernels on the CPU)")
    images = cifar_images[:8]
    start = initial_message(_codec(tiny_fixture, coding_device, "host"), (1,) + images.shape[1:], seed=0)
    bits = {}
    for coder in ("host", "cuda"):
        codec = _codec(tiny_fixture, coding_device, coder)
        message, sizes = _encode(codec, images)
        bits[coder] = message_bits(message) - message_bits(start)
        back, restored = _decode_all(codec, message, sizes)
        assert np.array_equal(restored, images) and cs.message_equal(back, start), f"{coder} coder roundtrip"
    assert abs(bits["cuda"] / bits["host"] - 1) < 0.03, bits


def test_bbans_roundtrip_on_the_device_is_exact(tiny_fixture, coding_device, cifar_images):
    flags, model, _, _ = tiny_fixture
    diffusion = create_gaussian_diffusion(**dict(flags["diffusion"], num_levels=256), timestep_respacing="10")
    codec = BitsBackCodec(DiffusionLatentModel(model.to(coding_device), diffusion, coding_device),
                          BitsBackCodec.default_precisions)
    assert codec.coder == ("cuda" if coding_device.type == "cuda" else "host")
    images = cifar_images[:4]
    start = initial_message(codec, images.shape, seed=0)
    decoded, back = codec.decode(codec.encode(start, images), len(images))
    assert np.array_equal(back, images) and cs.message_equal(decoded, start)
