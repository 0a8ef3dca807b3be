"""craystack.compiled.prefetch: a cache hint that compiled code emits as a prefetch instruction and
that changes no value (the Bit-Swap kernels use it on their fine bin table)."""
from __future__ import annotations

import platform

import numba
import numpy as np

from craystack.compiled.prefetch import prefetch


@numba.njit(cache=False)
def _gather_with_hints(table, idx, ahead):
    total = 0.0
    for k in range(idx.size):
        if k + ahead < idx.size:
            prefetch(table, idx[k + ahead])
        total += table[idx[k]]
    return total


def test_compiled_prefetch_changes_no_value_and_is_a_prefetch_instruction():
    rng = np.random.default_rng(0)
    table = rng.normal(size=1 << 16)
    idx = rng.integers(0, table.size, 5000)
    plain = _gather_with_hints.py_func(table, idx, 0)  # the same loop as Python, where the hint does nothing
    assert _gather_with_hints(table, idx, 8) == plain
    assert plain == _gather_with_hints(table, idx, 0)
    if platform.machine() in ("x86_64", "AMD64"):
        assembly = _gather_with_hints.inspect_asm(_gather_with_hints.signatures[0])
        assert "prefetch" in assembly


def test_prefetch_in_plain_python_does_nothing():
    table = np.arange(4.0)
    assert prefetch(table, 2) is None
    assert np.array_equal(table, np.arange(4.0))
