"""The compiled codec (codec.backend=numba) against the NumPy reference: the same symbols and
bit-identical messages (head, tail words in order, borrowed words, low-water mark) on hostile
parameters, empty tails, keyed slots and any lane groups; the same traces and errors; the
same results with 1 and 2 threads."""
from __future__ import annotations

import warnings

import numba
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import ndtr, ndtri

import craystack as cs
from bits_back_diffusion.bitswap import BITSWAP_PRECISIONS, BitSwapCodec, lane_groups
from bits_back_diffusion.codec import BitsBackCodec
from bits_back_diffusion.codec_registry import build_codec
from bits_back_diffusion.coding import Precisions, initial_message
from bits_back_diffusion.compiled_codecs import BACKENDS
from bits_back_diffusion.latent_model import DiffusionLatentModel
from craystack.compiled import KIND_DISCRETIZED, KIND_GAUSSIAN_BINS, KIND_STD, CompiledMessage, kernels
from craystack.compiled.special import ndtr as c_ndtr
from craystack.compiled.special import ndtri as c_ndtri
from craystack.compiled.phases import (quantized_pop_groups, quantized_push_groups, uniform_pop_groups,
                                       uniform_push_groups)
from improved_diffusion.script_util import create_gaussian_diffusion

from test_bitswap import ConvNet, edge_images, process

HOSTILE = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same_message(a: cs.Message, b: cs.Message) -> None:
    np.testing.assert_array_equal(cs.flatten(a), cs.flatten(b))
    assert a.head.shape == b.head.shape
    assert (cs.tail_length(a), cs.low_water(a), cs.empty_pops(a)) == (cs.tail_length(b), cs.low_water(b),
                                                                        cs.empty_pops(b))


# --- scipy's special functions, called from compiled code ---------------------------------------------

@numba.njit
def _compiled_special(x, u):
    a, b = np.empty_like(x), np.empty_like(u)
    for i in range(x.size):
        a[i] = c_ndtr(x[i])
    for i in range(u.size):
        b[i] = c_ndtri(u[i])
    return a, b


def test_compiled_ndtr_and_ndtri_are_scipys_bit_for_bit():
    rng = np.random.default_rng(0)
    special = [np.inf, -np.inf, np.nan, 0.0, -0.0, 5e-324, -5e-324, 1e-300, 1e308, -1e308, 38.4, -38.4, 8.29, -37.5]
    powers = np.ldexp(1.0, np.arange(-1074, 1024))
    x = np.concatenate([special, rng.normal(0, 3, 20000), rng.normal(0, 40, 5000), powers, -powers])
    u = np.concatenate([[0.0, 1.0, -0.5, 1.5, np.nan, 5e-324, 2.0 ** -60, 1 - 2.0 ** -53, 0.5],
                        rng.uniform(0, 1, 20000), np.ldexp(1.0, np.arange(-1074, 0))])
    a, b = _compiled_special(x, u)
    np.testing.assert_array_equal(a.view(np.uint64), ndtr(x).view(np.uint64))
    np.testing.assert_array_equal(b.view(np.uint64), ndtri(u).view(np.uint64))


# --- one-level codecs on lane groups --------------------------------------------------------------------

def log_uniform(lo: float, hi: float):
    return st.floats(np.log(lo), np.log(hi)).map(np.exp)


@st.composite
def lane_setups(draw):
    """A batch of b images on a head of K images' lanes, a message with a short (often empty)
    tail, and per-lane Gaussian parameters from tame to absurd."""
    dims = draw(st.integers(1, 5))
    head_images = draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2 * head_images + 1))
    seed = draw(st.integers(0, 2 ** 16))
    rng = np.random.default_rng(seed)
    size = batch * dims
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0, 1e6]))
    mean = rng.normal(0, 1, size) * scale
    std = np.exp(rng.uniform(np.log(draw(log_uniform(1e-30, 1.0))), np.log(draw(log_uniform(1.0, 1e30))), size))
    tail_words = draw(st.sampled_from([0, 0, 1, 3, 40]))
    shape = (head_images, dims)
    if tail_words == 0:
        message = cs.base_message(shape, randomize=draw(st.booleans()), seed=seed)
    else:
        message = cs.random_message(1 + 2 * head_images * dims + tail_words, shape, seed=seed)
    return message, batch, dims, mean, std, rng


def reference(message, batch, make_codec, symbols=None, reverse=False):
    """The NumPy path: each group's codec on its lanes, group by group (bitswap.lane_groups)."""
    groups = lane_groups(batch, message.head.shape[0])
    out = np.zeros(batch * message.head.shape[1], dtype=np.int64).reshape(batch, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cs.EmptyTailWarning)
        for sl, lanes in groups[::-1] if reverse else groups:
            codec = lanes(make_codec(sl))
            if symbols is None:
                message, out[sl] = codec.pop(message)
            else:
                message, = codec.push(message, symbols.reshape(batch, -1)[sl])
    return message, out.reshape(-1)


def compiled(message, batch, dims, phase, reverse=False, **kwargs):
    head = message.head.shape[0]
    starts = list(range(0, batch, head))[::-1 if reverse else 1]
    offsets = np.array([s * dims for s in starts], dtype=np.int64)
    lanes = np.array([min(head, batch - s) * dims for s in starts], dtype=np.int64)
    state = CompiledMessage(message)
    state.reserve(batch * dims, batch * dims)
    width = head * dims
    scratch = dict(words=np.zeros(width, np.uint64), flags=np.zeros(width, np.bool_), stat=np.zeros(width, np.int64))
    out = np.zeros(batch * dims, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cs.EmptyTailWarning)
        status = phase(state, offsets, lanes, out, scratch, **kwargs)
        state.check("test")
    assert status in (None, 0, (0, -1)), status
    return state.to_message(), out


def quantized_phase(kind, edges, mean, std, a, b, n, prec, symbols=None, rounds=1):
    def run(state, offsets, lanes, out, scratch):
        args = (state.head, state.buf, state.meta, offsets, lanes, kind, edges, mean, std, a, b, n, prec)
        if symbols is None:
            return quantized_pop_groups(*args, rounds, out, scratch["flags"], scratch["stat"])
        return quantized_push_groups(*args, symbols, scratch["words"], scratch["flags"], scratch["stat"])
    return run


DISTRIBUTIONS = ["discretized", "gaussian_bins", "std_bins"]


def distribution(name, mean, std, rng):
    """(NumPy codec for images sl, compiled phase arguments, number of symbols)."""
    size = mean.size
    if name == "discretized":
        k = int(rng.choice([2, 17, 256]))
        step = 2.0 / (k - 1)
        return (lambda sl, d: cs.DiscretizedGaussian(mean.reshape(-1, d)[sl], std.reshape(-1, d)[sl], k, 24),
                (KIND_DISCRETIZED, np.zeros(1), mean, std, np.full(size, -1.0), np.full(size, step), k, 24, 1), k)
    bin_prec = int(rng.choice([2, 6, 10]))
    edges = np.ascontiguousarray(cs.std_gaussian_buckets(bin_prec))
    n = 1 << bin_prec
    if name == "gaussian_bins":
        bin_mean = rng.normal(0, 1, size) * rng.choice([1e-3, 1.0, 1e5])
        bin_std = np.exp(rng.uniform(np.log(1e-20), np.log(1e20), size))
        return (lambda sl, d: cs.DiagGaussian_GaussianBins(mean.reshape(-1, d)[sl], std.reshape(-1, d)[sl],
                                                           bin_mean.reshape(-1, d)[sl], bin_std.reshape(-1, d)[sl],
                                                           18, bin_prec),
                (KIND_GAUSSIAN_BINS, edges, mean, std, bin_mean, bin_std, n, 18, 1), n)
    return (lambda sl, d: cs.DiagGaussian_StdBins(mean.reshape(-1, d)[sl], std.reshape(-1, d)[sl], 28, bin_prec),
            (KIND_STD, edges, mean, std, mean, std, n, 28, 2), n)


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@HOSTILE
@given(setup=lane_setups(), reverse=st.booleans())
def test_pops_and_pushes_equal_the_reference(name, setup, reverse):
    message, batch, dims, mean, std, rng = setup
    make, (kind, edges, mu, sd, a, b, n, prec, rounds), n = distribution(name, mean, std, rng)
    numpy_codec = lambda sl: make(sl, dims)  # noqa: E731
    want, popped = reference(message, batch, numpy_codec, reverse=reverse)
    got, symbols = compiled(message, batch, dims, quantized_phase(kind, edges, mu, sd, a, b, n, prec, rounds=rounds),
                            reverse=reverse)
    np.testing.assert_array_equal(symbols, popped)
    same_message(got, want)
    # push them back (onto the popped message: gives borrowed words back), and any symbols
    for pushed in (popped, rng.integers(0, n, popped.size)):
        want2, _ = reference(want, batch, numpy_codec, symbols=pushed, reverse=not reverse)
        got2, _ = compiled(got, batch, dims, quantized_phase(kind, edges, mu, sd, a, b, n, prec, symbols=pushed),
                           reverse=not reverse)
        same_message(got2, want2)


@HOSTILE
@given(setup=lane_setups(), prec=st.sampled_from([1, 8, 20, 24]))
def test_uniform_equals_the_reference(setup, prec):
    message, batch, dims, _, _, rng = setup

    def pop(state, offsets, lanes, out, scratch):
        return uniform_pop_groups(state.head, state.buf, state.meta, offsets, lanes, prec, out, scratch["flags"])

    want, popped = reference(message, batch, lambda sl: cs.Uniform(prec))
    got, symbols = compiled(message, batch, dims, pop)
    np.testing.assert_array_equal(symbols, popped)
    same_message(got, want)
    pushed = rng.integers(0, 1 << prec, popped.size)

    def push(state, offsets, lanes, out, scratch):
        return uniform_push_groups(state.head, state.buf, state.meta, offsets, lanes, prec, pushed,
                                   scratch["words"], scratch["flags"])

    want2, _ = reference(message, batch, lambda sl: cs.Uniform(prec), symbols=pushed)
    got2, _ = compiled(message, batch, dims, push)
    same_message(got2, want2)


def test_popping_across_tail_chunks_and_giving_borrowed_words_back():
    """A tail of many chunks (only the popped words are fetched), popped past its bottom into
    the generator's words, then pushed back: equal to the reference at every stage."""
    shape = (7,)
    message = cs.base_message(shape, randomize=True, seed=1)
    for seed in range(6):  # several pushes: a tail of several chunks
        message, = cs.Uniform(24).push(message, np.random.default_rng(seed).integers(0, 1 << 24, shape))
    state = CompiledMessage(message)
    numpy_message = message
    symbols = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            state.reserve(7, 0)
            out = np.zeros(7, np.int64)
            uniform_pop_groups(state.head, state.buf, state.meta, np.array([0]), np.array([7]), 30, out,
                               np.zeros(7, np.bool_))
            state.check("test")
            numpy_message, want = cs.Uniform(30).pop(numpy_message)
            np.testing.assert_array_equal(out, want)
            same_message(state.to_message(), numpy_message)
            symbols.append(out)
    borrow_warnings = [w for w in caught if issubclass(w.category, cs.EmptyTailWarning)]
    assert len(borrow_warnings) == 2  # once per line of messages: the reference's and the compiled one
    assert cs.empty_pops(numpy_message) > 0
    for out in reversed(symbols):
        state.reserve(0, 7)
        uniform_push_groups(state.head, state.buf, state.meta, np.array([0]), np.array([7]), 30, out,
                            np.zeros(7, np.uint64), np.zeros(7, np.bool_))
    back = state.to_message()
    assert cs.message_equal(back, message) and cs.empty_pops(back) == 0


# --- whole codecs ---------------------------------------------------------------------------------------

class FixedModel(torch.nn.Module):
    """Outputs a fixed value everywhere (far means, variances at and beyond the learned range)."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x, t):
        return torch.full((x.shape[0], 2 * x.shape[1], *x.shape[2:]), self.value)


def run_both(make_codec, start, x, batch=None):
    """Encode (with traces) and decode on both backends; returns {backend: (encoded, trace)}."""
    out = {}
    for backend in BACKENDS:
        codec = make_codec(backend)
        encoded = codec.encode(start, x)
        decoded, back = codec.decode(encoded, x.shape[0])
        np.testing.assert_array_equal(back, x)
        assert cs.message_equal(decoded, start)
        out[backend] = encoded, codec.trace.as_arrays()
    same_message(out["numba"][0], out["numpy"][0])
    for key, value in out["numpy"][1].items():
        np.testing.assert_array_equal(out["numba"][1][key], value)
    return out


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 4), head_images=st.integers(1, 3), model=st.sampled_from(["conv", 0.0, 3.0, -1e4]),
       respacing=st.sampled_from(["4", "vlb100"]), keyed=st.booleans(), seed=st.integers(0, 100))
def test_bitswap_messages_and_traces_equal_the_reference(batch, head_images, model, respacing, keyed, seed):
    net = ConvNet(seed=seed) if model == "conv" else FixedModel(model)
    lm = DiffusionLatentModel(net, process(4000 if respacing == "vlb100" else 100, respacing), torch.device("cpu"))
    x = np.random.default_rng(seed).integers(0, 256, (batch, 3, 2, 3))
    start = initial_message(BitSwapCodec(lm, BITSWAP_PRECISIONS), (head_images, 3, 2, 3), seed)
    run_both(lambda b: BitSwapCodec(lm, BITSWAP_PRECISIONS, track=True, keyed_slots=keyed, backend=b), start, x)


@pytest.mark.parametrize("model", ["conv", 50.0, -1e4])
def test_bbans_messages_and_traces_equal_the_reference(model):
    diffusion = create_gaussian_diffusion(steps=5, learn_sigma=True, noise_schedule="cosine", use_kl=True,
                                          rescale_timesteps=True, num_levels=256)
    net = ConvNet() if model == "conv" else FixedModel(model)
    lm = DiffusionLatentModel(net, diffusion, torch.device("cpu"))
    x = np.random.default_rng(2).integers(0, 256, (2, 3, 4, 4))
    x[0] = 0
    start = initial_message(BitsBackCodec(lm, Precisions()), (3, 3, 4, 4), 1)  # a batch on part of the head
    run_both(lambda b: BitsBackCodec(lm, Precisions(), track=True, backend=b), start, x)


def test_one_and_two_threads_give_the_same_message(monkeypatch):
    """Threads over lanes change nothing (both builds of every kernel: threaded for any group)."""
    monkeypatch.setattr(kernels, "PARALLEL_MIN_LANES", 1)
    lm = DiffusionLatentModel(ConvNet(), process(100, "3"), torch.device("cpu"))
    x = edge_images((3, 4, 4))
    start = initial_message(BitSwapCodec(lm, BITSWAP_PRECISIONS), (2, 3, 4, 4), 0)
    bb_start = initial_message(BitsBackCodec(lm, Precisions()), x.shape, 0)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            bitswap = BitSwapCodec(lm, BITSWAP_PRECISIONS)
            bbans = BitsBackCodec(lm, Precisions())
            encoded, bb_encoded = bitswap.encode(start, x), bbans.encode(bb_start, x)
            assert cs.message_equal(bitswap.decode(encoded, 3)[0], start)
            assert cs.message_equal(bbans.decode(bb_encoded, 3)[0], bb_start)
            results.append((cs.flatten(encoded), cs.flatten(bb_encoded)))
    finally:
        numba.set_num_threads(before)
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# --- errors ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_bad_model_outputs_give_the_reference_errors(value):
    lm = DiffusionLatentModel(FixedModel(value), process(100, "3"), torch.device("cpu"))
    x = edge_images((3, 2, 2))
    for cls, precisions, head in ((BitSwapCodec, BITSWAP_PRECISIONS, 1), (BitsBackCodec, Precisions(), 3)):
        start = initial_message(cls(lm, precisions), (head, 3, 2, 2), 0)
        snapshot = cs.flatten(start).copy()
        errors = []
        for backend in BACKENDS:
            with pytest.raises(ValueError) as info:
                cls(lm, precisions, backend=backend).encode(start, x)
            errors.append(str(info.value))
        assert errors[0] == errors[1] and ("nan" in errors[0] or "inf" in errors[0]), errors
        np.testing.assert_array_equal(cs.flatten(start), snapshot)


def test_decoding_with_another_model_fails_or_differs_alike():
    """A message decoded with the wrong model: both paths refuse it with the same error, or both
    return the same (wrong) images and message."""
    diffusion = process(4000, "vlb100")
    x = edge_images((3, 2, 2))
    right = DiffusionLatentModel(ConvNet(seed=0), diffusion, torch.device("cpu"))
    wrong = DiffusionLatentModel(ConvNet(seed=1, scale=0.5), diffusion, torch.device("cpu"))
    start = initial_message(BitSwapCodec(right, BITSWAP_PRECISIONS), (1, 3, 2, 2), 0)
    encoded = BitSwapCodec(right, BITSWAP_PRECISIONS).encode(start, x)
    outcomes = []
    for backend in BACKENDS:
        codec = BitSwapCodec(wrong, BITSWAP_PRECISIONS, backend=backend)
        try:
            message, images = codec.decode(encoded, 3)
            outcomes.append(("decoded", cs.flatten(message).tolist(), images.tolist()))
        except ValueError as exc:
            outcomes.append(("refused", str(exc)))
    assert outcomes[0] == outcomes[1]


def test_unknown_backend_is_refused_naming_the_choices():
    lm = DiffusionLatentModel(ConvNet(), process(100, "3"), torch.device("cpu"))
    with pytest.raises(ValueError, match="numba, numpy"):
        build_codec("bitswap", lm, BITSWAP_PRECISIONS, backend="cuda")
    with pytest.raises(ValueError, match="codec.backend"):
        BitsBackCodec(lm, Precisions(), backend="fast")
