"""Compile every kernel of the CUDA coder to PTX without a GPU: numba-cuda's typing and lowering and
NVVM run, no driver is needed.

    pip install numba-cuda nvidia-cuda-nvcc-cu12 nvidia-cuda-nvrtc-cu12   # numba's CUDA target, NVVM, NVRTC
    python bench/cuda_ptx_check.py [--cc 9.0]

Why: the CUDA simulator (tests/cuda_sim) runs the kernels' Python, so it cannot see what only the
CUDA compiler refuses (an operation numba-cuda lacks, types that do not unify); this check finds
that before device time is spent. Prints each kernel's PTX size and its fused multiply-adds (NVVM
contracts a * b + c by default; deterministic on one GPU model, which is all the coder needs).
"""
from __future__ import annotations

import argparse
import inspect
import sys
import types as pytypes
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from numba import types  # noqa: E402

_ARRAYS = {
    types.uint64: ("head", "words", "words2"),
    types.uint32: ("buf",),
    types.int64: ("meta", "offsets", "lanes", "symbols", "out", "coarse", "guess", "stat", "sums", "result"),
    types.float64: ("mu", "sd", "a", "b", "edges", "edges_c", "edges_f", "bounds", "s_ref", "s_mass"),
    types.boolean: ("flags", "flags2", "s_upper", "s_flat"),
}
_SCALARS = {"kind": types.int64, "n": types.int64, "prec": types.int64, "fine_bits": types.int64,
            "rounds": types.int64, "keyed": types.boolean, "salt_c": types.uint64, "salt_f": types.uint64}


def signature(fn):
    """The argument types the drivers pass, by argument name."""
    out = []
    for name in inspect.signature(fn).parameters:
        if name in _SCALARS:
            out.append(_SCALARS[name])
            continue
        dtype = next((t for t, names in _ARRAYS.items() if name in names), None)
        if dtype is None:
            raise SystemExit(f"{fn.__name__}: no type for argument {name!r}; add it to bench/cuda_ptx_check.py")
        out.append(dtype[::1])
    return tuple(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cc", default="9.0", help="compute capability to compile for (H100/H200: 9.0)")
    args = parser.parse_args()
    cc = tuple(int(v) for v in args.cc.split("."))
    import numba.cuda.dispatcher as dispatcher
    from numba import cuda

    # device functions compile for "the current device"; without a GPU, name the target instead
    dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
    from bits_back_diffusion import cuda_codecs
    from craystack.compiled import cuda_phases

    kernels = [getattr(module, name) for module in (cuda_phases, cuda_codecs) for name in dir(module)
               if name.startswith("_") and hasattr(getattr(module, name), "py_func")
               and not getattr(getattr(module, name), "_device", getattr(getattr(module, name), "device", False))]
    failed = 0
    for kernel in kernels:
        fn = kernel.py_func
        try:
            ptx, _ = cuda.compile_ptx(fn, signature(fn), cc=cc)
        except Exception as exc:  # report every kernel, then fail
            failed += 1
            print(f"FAILED {fn.__module__}.{fn.__name__}: {type(exc).__name__}: {str(exc)[:3000]}")
            continue
        print(f"ok {fn.__module__}.{fn.__name__}: {len(ptx)} bytes of PTX, {ptx.count('fma.rn.f64')} fma.f64")
    print(f"{len(kernels) - failed} of {len(kernels)} kernels compiled for sm_{cc[0]}{cc[1]}")
    sys.exit(1 if failed or not kernels else 0)


if __name__ == "__main__":
    main()
