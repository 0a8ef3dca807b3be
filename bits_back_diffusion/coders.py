"""Which coder runs a codec's compiled path: "host" (threaded CPU kernels, scipy's CDFs; every
device) or "cuda" (CUDA kernels on the model's GPU, libdevice's CDFs).

The two give different messages for the same input (their CDF values differ in the last bits),
so the choice is recorded in a file (`DeviceInfo.coder`) and a decoder uses the one that wrote
it. By default a codec on a CUDA model with the compiled backend uses the CUDA coder when
numba-cuda can run, and says so when it falls back to the host.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch

__all__ = ["CODERS", "choose_coder", "cuda_problem", "coder_impl"]

CODERS = ("host", "cuda")


def cuda_problem() -> str:
    """Why the CUDA coder cannot run in this process ('' when it can)."""
    try:
        from numba import cuda
    except Exception as exc:  # numba without its CUDA target
        return f"numba's CUDA target does not load ({exc}); pip install numba-cuda"
    try:
        if not cuda.is_available():
            return "numba finds no usable CUDA device; pip install numba-cuda matching the CUDA driver"
    except Exception as exc:
        return f"numba-cuda cannot start ({exc})"
    return ""


def choose_coder(codec_name: str, device, backend: str, requested: Optional[str] = None) -> str:
    """The coder for codec `codec_name` on `device`: `requested` if it can run (else ValueError
    naming the fix), or the default described in the module doc."""
    if requested is not None:
        if requested not in CODERS:
            raise ValueError(f"unknown coder {requested!r}; choose one of {', '.join(CODERS)}")
        if requested == "cuda":
            if backend != "numba":
                raise ValueError(f"the CUDA coder runs the compiled path (codec.backend=numba), not "
                                 f"codec.backend={backend} (codec={codec_name})")
            problem = cuda_problem()
            if problem:
                raise ValueError(f"the CUDA coder cannot run here: {problem}")
        return requested
    if torch.device(device).type != "cuda" or backend != "numba":
        return "host"
    problem = cuda_problem()
    if problem:
        warnings.warn(f"coding on the CPU, not the GPU: {problem}", RuntimeWarning, stacklevel=3)
        return "host"
    return "cuda"


def coder_impl(name: str, device):
    """The drivers' array-and-kernel set of coder `name` (compiled_codecs.HostCoder's interface)."""
    if name == "host":
        from .compiled_codecs import HOST

        return HOST
    from .cuda_codecs import CudaCoder

    return CudaCoder(device)
