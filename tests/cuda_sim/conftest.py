"""Runs only inside numba's CUDA simulator (tests/test_cuda_coder.py starts it with
NUMBA_ENABLE_CUDASIM=1 and a few threads per block).

Two shims make the simulator fit these kernels:
* it hands kernels wrapped arrays, while the per-lane functions they call are CPU-compiled numba
  functions that take plain NumPy arrays: inside simulated kernels the wrapper is replaced by the
  array it wraps (the kernels only index arrays, which behaves the same);
* it points a module's `cuda` at the running kernel's thread API by swapping the module global
  around each device-function call, which races when several simulated threads call device
  functions of another module (one thread's exit restores the real module under another's
  feet): those modules get a `cuda` that always looks the running kernel's API up instead."""
from __future__ import annotations

import os

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    pytest.exit("tests/cuda_sim runs under NUMBA_ENABLE_CUDASIM=1 only (see tests/test_cuda_coder.py)", returncode=4)

from numba import cuda as _cuda  # noqa: E402
from numba.cuda.simulator import kernel as _sim_kernel  # noqa: E402

_sim_kernel.FakeWithinKernelCUDAArray = lambda fake: fake._ary


class _RunningKernelCuda:
    """`numba.cuda` as seen from the running simulated kernel (the module itself outside one)."""

    def __getattr__(self, name):
        return getattr(_sim_kernel._get_kernel_context() or _cuda, name)


from bits_back_diffusion import cuda_codecs  # noqa: E402
from craystack.compiled import cuda_message, cuda_phases  # noqa: E402

for _module in (cuda_message, cuda_phases, cuda_codecs):
    _module.cuda = _RunningKernelCuda()


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
