"""craystack.compiled.kernels.LaneKernel: the arrays a kernel only reads reach numba read-only
whatever the caller passes, so a kernel is compiled once, not once per mix of shared read-only
tables and fresh writable arrays."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import craystack as cs
from craystack.compiled import KIND_GAUSSIAN_BINS, kernels
from craystack.compiled.phases import quantized_pop_groups, quantized_push_groups


def _heads(lanes: int) -> np.ndarray:
    """States well above the refill threshold: a 16-bit pop needs no word from the tail."""
    return np.random.default_rng(lanes).integers(1 << 50, 1 << 60, lanes).astype(np.uint64)


def _pop(edges, mu, sd):
    lanes = mu.size
    head = _heads(lanes)
    buf, meta = np.zeros(64, dtype=np.uint32), np.zeros(4, dtype=np.int64)
    out = np.zeros(lanes, dtype=np.int64)
    status = quantized_pop_groups(head, buf, meta, np.zeros(1, np.int64), np.full(1, lanes, np.int64),
                                  KIND_GAUSSIAN_BINS, edges, mu, sd, mu, sd, 256, 16, 1, out,
                                  np.zeros(lanes, np.bool_), np.zeros(lanes, np.int64))
    return status, head, out


def test_writable_and_read_only_inputs_run_one_compiled_version():
    rng = np.random.default_rng(0)
    mu, sd = rng.normal(size=40), rng.uniform(0.1, 2.0, 40)
    shared = cs.std_gaussian_buckets(8)  # a cached table, read-only
    assert not shared.flags.writeable
    first = _pop(shared, mu, sd)
    versions = len(quantized_pop_groups.serial.signatures)
    second = _pop(np.array(shared), kernels._read_only(mu), sd)  # the other writability of each input
    assert len(quantized_pop_groups.serial.signatures) == versions
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert mu.flags.writeable  # the caller's arrays are left as they were
    names = list(inspect.signature(quantized_pop_groups.serial.py_func).parameters)
    for signature in quantized_pop_groups.serial.signatures:
        for name in ("edges", "mu", "sd", "a", "b", "offsets", "lanes"):
            assert not signature[names.index(name)].mutable, name
        assert signature[names.index("out")].mutable


def test_outputs_stay_writable_and_are_written():
    rng = np.random.default_rng(1)
    mu, sd = rng.normal(size=8), np.ones(8)
    status, head, out = _pop(cs.std_gaussian_buckets(8), mu, sd)
    assert tuple(status) == (0, -1)
    assert ((out >= 0) & (out < 256)).all() and out.any()
    words, flags, stat = np.zeros(8, np.uint64), np.zeros(8, np.bool_), np.zeros(8, np.int64)
    buf, meta = np.zeros(64, dtype=np.uint32), np.zeros(4, dtype=np.int64)
    pushed = quantized_push_groups(head, buf, meta, np.zeros(1, np.int64), np.full(1, 8, np.int64),
                                   KIND_GAUSSIAN_BINS, cs.std_gaussian_buckets(8), mu, sd, mu, sd, 256, 16, out,
                                   words, flags, stat)
    assert tuple(pushed) == (0, -1)
    np.testing.assert_array_equal(head, _heads(8))  # pushing the popped symbols back restores the heads


def test_a_misspelt_read_only_argument_is_refused_at_definition():
    def kernel(head, buf, meta, offsets, lanes, values):
        return 0

    with pytest.raises(TypeError, match=r"kernel has no parameters \['valeus'\]"):
        kernels.lane_kernel(reads=("valeus",))(kernel)
