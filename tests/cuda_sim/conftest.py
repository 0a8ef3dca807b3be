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


@pytest.fixture(autouse=True)
def host_model_values(monkeypatch):
    """The CUDA coder's drivers take Bit-Swap's model mean and std from torch on the model's device;
    here, on the CPU, they come from the host coder's NumPy code instead, so that both coders see
    identical parameters and must write identical messages (a test that wants torch's own values
    calls monkeypatch.undo())."""
    import torch

    from bits_back_diffusion.cuda_codecs import CudaCoder

    def reverse(self, lm, z, t):
        mean, std = lm.reverse(lm.latent_to_model(z.numpy()), t)
        return torch.from_numpy(mean), torch.from_numpy(std)

    monkeypatch.setattr(CudaCoder, "reverse", reverse)
