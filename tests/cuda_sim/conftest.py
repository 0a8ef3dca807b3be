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

import numpy as np
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
    """The CUDA coder's drivers take the model's means and standard deviations from torch on the
    model's device; here, on the CPU, they come from the host coder's NumPy code instead (torch's
    and NumPy's exp may differ in the last bit), so that both coders see identical parameters and
    must write identical messages. A test that wants torch's own values calls monkeypatch.undo()."""
    import torch

    from bits_back_diffusion.compiled_codecs import HOST

    def as_tensors(pair):
        return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in pair)

    def reverse(self, lm, z, t):
        return as_tensors(lm.reverse(lm.latent_to_model(z.numpy()), t))

    def posterior(self, lm, x, z_next, t):
        return as_tensors(HOST.posterior(lm, x, z_next, t))

    def prior_from_raw(self, lm, raw, t):
        return as_tensors(lm.gaussian_from_raw(tuple(np.asarray(r) for r in raw), t))

    for name, fn in (("reverse", reverse), ("posterior", posterior), ("prior_from_raw", prior_from_raw)):
        monkeypatch.setattr(cuda_codecs.CudaCoder, name, fn)
