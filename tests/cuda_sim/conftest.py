"""Runs only inside numba's CUDA simulator (tests/test_cuda_coder.py starts it with
NUMBA_ENABLE_CUDASIM=1 and a few threads per block).

The simulator runs kernels as Python threads and hands them wrapped arrays; the per-lane
functions the kernels call are CPU-compiled numba functions, which take plain NumPy arrays. So
inside simulated kernels the wrapper is replaced by the array it wraps (the kernels index arrays
only, which behaves the same)."""
from __future__ import annotations

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.exit("tests/cuda_sim runs under NUMBA_ENABLE_CUDASIM=1 only (see tests/test_cuda_coder.py)", returncode=4)

from numba.cuda.simulator import kernel as _sim_kernel  # noqa: E402

_sim_kernel.FakeWithinKernelCUDAArray = lambda fake: fake._ary
