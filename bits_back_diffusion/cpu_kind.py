"""The CPU's kernel family: which SIMD code torch and NumPy run here, as one comparable string.

Why: on a CPU, the model's last bits and the codec's float64 `exp` depend on the kernels the
libraries pick at run time from the processor's features, not only on the device kind and the
thread count. torch's vectorized reductions (GroupNorm, softmax) split sums by vector width, MKL
chooses its GEMM code by vendor and instruction set, and NumPy has its own AVX-512 `exp`/`log`.
Measured: the demo (`python encode.py data=digits`, same commit, same settings) wrote 5,508 bytes
on an AVX-512 machine and 5,530 on an AVX2 one, so a file from one does not decode on the other,
and a decode would only fail at its end-of-message check, hours later on a big set. The encoder
records this string (`DeviceInfo.cpu`, `.bbd` version 5; the resume checks of `codec_checkpoints`)
and a decoder or a resumed run on a different family is refused before the first model call.

What it holds: the vendor (MKL dispatches on it), the architecture, torch's CPU capability
(`torch.backends.cpu.get_cpu_capability`, which `ATEN_CPU_CAPABILITY` can lower) and the highest
NumPy dispatch target this CPU supports. Machines equal in all four run the same kernels; that is
conservative (two families may happen to agree), and `allow_device_mismatch=true` lets an expert
try anyway, the end-of-message check still refusing a wrong decode.
"""
from __future__ import annotations

import functools
import platform

__all__ = ["cpu_kind"]


def _vendor() -> str:
    """'GenuineIntel', 'AuthenticAMD', ... from /proc/cpuinfo; the platform's word elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("vendor_id", "CPU implementer"):
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown vendor"


def _numpy_target() -> str:
    """The last (widest) of NumPy's dispatch targets that this CPU supports, or its baseline."""
    try:
        from numpy._core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__
    except ImportError:  # NumPy 1.x keeps them under numpy.core
        from numpy.core._multiarray_umath import __cpu_baseline__, __cpu_dispatch__, __cpu_features__
    supported = [target for target in __cpu_dispatch__ if __cpu_features__.get(target)]
    return (supported or list(__cpu_baseline__) or ["baseline"])[-1]


@functools.lru_cache(maxsize=1)
def cpu_kind() -> str:
    """'AuthenticAMD x86_64 torch:AVX2 numpy:X86_V3' for this process (fixed once torch and NumPy
    have chosen their kernels, so computed once; short, as every file stores it)."""
    import torch

    capability = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "unknown")()  # torch >= 2.1
    return f"{_vendor()} {platform.machine() or 'unknown'} torch:{capability} numpy:{_numpy_target()}"
