"""The CUDA coder's one-level phases and whole codecs in numba's CUDA simulator against the NumPy
reference, with the hypothesis strategies of tests/test_compiled_codec.py: hostile parameters,
short and empty tails (borrowing, giving back), any lane groups, keyed slots; the same symbols and
the same messages (the simulator computes the CDFs with scipy, as the reference does)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import cuda
from test_bitswap import ConvNet, process
from test_compiled_codec import DISTRIBUTIONS, FixedModel, distribution, lane_setups, reference, same_message

import craystack as cs
from bits_back_diffusion.bitswap import BITSWAP_PRECISIONS, BitSwapCodec
from bits_back_diffusion.coding import initial_message
from bits_back_diffusion.latent_model import DiffusionLatentModel
from craystack.compiled import cuda_phases
from craystack.compiled.cuda_message import DeviceMessage

FEW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def on_device(message, batch, dims, phase, reverse=False):
    """`test_compiled_codec.compiled` with a DeviceMessage and the CUDA launchers."""
    head = message.head.shape[0]
    starts = list(range(0, batch, head))[::-1 if reverse else 1]
    offsets = cuda.to_device(np.array([s * dims for s in starts], dtype=np.int64))
    lanes = cuda.to_device(np.array([min(head, batch - s) * dims for s in starts], dtype=np.int64))
    state = DeviceMessage(message)
    state.reserve(batch * dims, batch * dims)
    width = head * dims
    scratch = {"words": cuda.to_device(np.zeros(width, np.uint64)), "flags": cuda.to_device(np.zeros(width, np.bool_)),
               "stat": cuda.to_device(np.zeros(width, np.int64))}
    out = cuda.to_device(np.zeros(batch * dims, dtype=np.int64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", cs.EmptyTailWarning)
        status = phase(state, offsets, lanes, out, scratch)
        state.check("test")
    assert status in (None, 0, (0, -1)), status
    return state.to_message(), out.copy_to_host()


def device_quantized_phase(kind, edges, mean, std, a, b, n, prec, symbols=None, rounds=1):
    params = [cuda.to_device(np.ascontiguousarray(v)) for v in (edges, mean, std, a, b)]

    def run(state, offsets, lanes, out, scratch):
        args = (state.d_head, state.d_buf, state.d_meta, offsets, lanes, kind, *params, n, prec)
        if symbols is None:
            return cuda_phases.quantized_pop_groups(*args, rounds, out, scratch["flags"], scratch["stat"])
        return cuda_phases.quantized_push_groups(*args, cuda.to_device(np.ascontiguousarray(symbols)),
                                                 scratch["words"], scratch["flags"], scratch["stat"])
    return run


@pytest.mark.parametrize("name", DISTRIBUTIONS)
@FEW
@given(setup=lane_setups(), reverse=st.booleans())
def test_device_pops_and_pushes_equal_the_reference(name, setup, reverse):
    message, batch, dims, mean, std, rng = setup
    make, (kind, edges, mu, sd, a, b, n, prec, rounds), n = distribution(name, mean, std, rng)
    numpy_codec = lambda sl: make(sl, dims)  # noqa: E731
    want, popped = reference(message, batch, numpy_codec, reverse=reverse)
    got, symbols = on_device(message, batch, dims, device_quantized_phase(kind, edges, mu, sd, a, b, n, prec,
                                                                           rounds=rounds), reverse=reverse)
    np.testing.assert_array_equal(symbols, popped)
    same_message(got, want)
    for pushed in (popped, rng.integers(0, n, popped.size)):
        want2, _ = reference(want, batch, numpy_codec, symbols=pushed, reverse=not reverse)
        got2, _ = on_device(got, batch, dims, device_quantized_phase(kind, edges, mu, sd, a, b, n, prec,
                                                                      symbols=pushed), reverse=not reverse)
        same_message(got2, want2)


@FEW
@given(setup=lane_setups(), prec=st.sampled_from([1, 8, 20, 24]))
def test_device_uniform_equals_the_reference(setup, prec):
    message, batch, dims, _, _, rng = setup

    def pop(state, offsets, lanes, out, scratch):
        return cuda_phases.uniform_pop_groups(state.d_head, state.d_buf, state.d_meta, offsets, lanes, prec, out,
                                              scratch["flags"])

    want, popped = reference(message, batch, lambda sl: cs.Uniform(prec))
    got, symbols = on_device(message, batch, dims, pop)
    np.testing.assert_array_equal(symbols, popped)
    same_message(got, want)
    pushed = cuda.to_device(rng.integers(0, 1 << prec, popped.size))

    def push(state, offsets, lanes, out, scratch):
        return cuda_phases.uniform_push_groups(state.d_head, state.d_buf, state.d_meta, offsets, lanes, prec, pushed,
                                               scratch["words"], scratch["flags"])

    want2, _ = reference(message, batch, lambda sl: cs.Uniform(prec), symbols=pushed.copy_to_host())
    got2, _ = on_device(message, batch, dims, push)
    same_message(got2, want2)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.integers(1, 4), head_images=st.integers(1, 3), model=st.sampled_from(["conv", 0.0, 3.0, -1e4]),
       keyed=st.booleans(), seed=st.integers(0, 100))
def test_bitswap_on_the_cuda_coder_equals_the_reference(batch, head_images, model, keyed, seed):
    """The whole codec (the NumPy reference and the CUDA coder given the same model values)."""
    net = ConvNet(seed=seed) if model == "conv" else FixedModel(model)
    lm = DiffusionLatentModel(net, process(100, "4"), torch.device("cpu"))
    x = np.random.default_rng(seed).integers(0, 256, (batch, 3, 2, 3))
    start = initial_message(BitSwapCodec(lm, BITSWAP_PRECISIONS), (head_images, 3, 2, 3), seed)
    results = []
    for backend, coder in (("numpy", "host"), ("numba", "cuda")):
        codec = BitSwapCodec(lm, BITSWAP_PRECISIONS, track=True, keyed_slots=keyed, backend=backend, coder=coder)
        encoded = codec.encode(start, x)
        decoded, back = codec.decode(encoded, batch)
        np.testing.assert_array_equal(back, x)
        assert cs.message_equal(decoded, start)
        results.append((encoded, codec.trace.as_arrays()))
    same_message(results[1][0], results[0][0])
    for key, value in results[0][1].items():
        np.testing.assert_array_equal(results[1][1][key], value)
