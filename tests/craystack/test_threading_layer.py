"""The compiled codec's threads: numba's OpenMP layer with a bounded spin by default (a region
starts in microseconds, and idle threads soon leave the cores to the model), and whatever the
user chose otherwise (craystack/compiled/kernels.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os
import numpy as np
import numba
from craystack.compiled import kernels
@numba.njit(parallel=True)
def double(x):
    for i in numba.prange(x.size):
        x[i] *= 2.0
x = np.ones(4096)
numba.set_num_threads(2)
double(x)
assert x.sum() == 8192.0
print(numba.threading_layer(), os.environ.get("GOMP_SPINCOUNT"))
"""


def _probe(**env) -> list:
    clean = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "GOMP_SPINCOUNT")}
    clean.update(env, NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", PROBE], env=clean, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_openmp_with_a_bounded_spin_by_default():
    from craystack.compiled.kernels import CODEC_SPIN_COUNT

    layer, spin = _probe()
    if layer != "omp":  # numba falls back when its OpenMP pool cannot load (no libgomp)
        pytest.fail(f"numba picked {layer!r}: is libgomp missing on this machine?")
    assert spin == CODEC_SPIN_COUNT


@pytest.mark.parametrize("env, expected", [({"NUMBA_THREADING_LAYER": "workqueue"}, ["workqueue", "None"]),
                                           ({"GOMP_SPINCOUNT": "300000"}, ["omp", "300000"])])
def test_the_users_choice_is_kept(env, expected):
    assert _probe(**env) == expected
