"""Where a decode runs: the encoder's device kind and CPU thread count, or a refusal.

Bits-back decoding needs model outputs bit-identical to the encoder's. Another device kind,
another GPU model, another torch thread count on the CPU or another CPU kernel family
(`cpu_kind`) changes their last bits, and the decode would only fail late (or at the
end-of-message check), so the mismatch is refused before the first model call unless the user
asks to try anyway (allow_device_mismatch=true).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator

from .decode_errors import DecodeError

Log = Callable[[str], None]


def choose_device(header, requested: str, allow_mismatch: bool, source: str, log: Log = print):
    """The encoder's device kind unless `requested`; a different kind or GPU model is refused here,
    before any model call. A bare "cuda" is this rank's GPU (the local rank among the visible ones)."""
    import torch

    from improved_diffusion import dist_util

    encoded = header.device
    device = torch.device(requested or (encoded.kind if encoded is not None else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DecodeError(f"{source} is to be decoded on cuda, but this machine has no CUDA GPU"
                          + (f" (the encoder ran on {encoded.describe()})" if encoded is not None else ""))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", dist_util.local_device_index())
    if encoded is None:
        log(f"{source} does not record the encoder's device (format version 1/2); decoding on {device.type}")
        return device
    here = type(encoded).of(device)
    differs = here.kind != encoded.kind or (here.kind == "cuda" and encoded.name and here.name != encoded.name)
    if differs and not allow_mismatch:
        raise DecodeError(
            f"{source} was encoded on {encoded.describe()}, but this decode would run on {here.describe()}; model "
            f"outputs differ between devices in the last bits, which bits-back decoding cannot absorb. Decode on "
            f"{encoded.kind}" + (f" ({encoded.name})" if encoded.name else "")
            + ", or pass allow_device_mismatch=true to try anyway (a wrong decode is still refused at the end)")
    if differs:
        log(f"WARNING: decoding on {here.describe()} a file encoded on {encoded.describe()} (allow_device_mismatch)")
    elif encoded.cpu and encoded.cpu_matters and here.cpu != encoded.cpu:
        if not allow_mismatch:
            raise DecodeError(
                f"{source} was encoded on a CPU with {encoded.cpu!r}, and this machine has {here.cpu!r}; torch and "
                f"NumPy choose their SIMD kernels from the processor, which changes the model's last bits (and the "
                f"host coder's exp), so this decode would fail at its end. Decode on a machine of the encoder's CPU "
                f"family, or pass allow_device_mismatch=true to try anyway (a wrong decode is still refused at the end)")
        log(f"WARNING: decoding on a CPU with {here.cpu!r} a file encoded on one with {encoded.cpu!r} "
            "(allow_device_mismatch)")
    elif encoded.torch_version and encoded.torch_version != here.torch_version:
        log(f"WARNING: the encoder used torch {encoded.torch_version}, this is {here.torch_version}; if the decode "
            "fails, use the encoder's version")
    return device


def file_coder(header) -> str:
    """The coder that wrote the file's messages (files before format version 4: the host's)."""
    return header.device.coder if header.device is not None else "host"


def check_coder(header, device, source: str) -> None:
    """A file of the CUDA coder decodes with the CUDA coder only (its CDF values are the GPU's),
    which needs a CUDA device and numba-cuda: refused here otherwise, whatever allow_device_mismatch."""
    if file_coder(header) != "cuda":
        return
    from .coders import cuda_problem

    problem = "this decode runs on the CPU" if device.type != "cuda" else cuda_problem()
    if problem:
        raise DecodeError(f"{source} was coded by the CUDA coder (codec.coder=cuda), which only it can undo, but "
                          f"{problem}; decode on a CUDA GPU of the encoder's model with numba-cuda installed "
                          "(pip install numba-cuda)")


def check_threads(header, device, allow_mismatch: bool, source: str) -> None:
    """On CPU the decoder must use the encoder's torch thread count (`encoder_threads`); more
    threads than this machine has cores would make the decode many times slower (and a forged
    count of hundreds exhausts memory on thread stacks), so that is refused up front too."""
    wanted = header.device.torch_threads if header.device is not None else 0
    cores = os.cpu_count() or 1
    if device.type == "cpu" and wanted > cores and not allow_mismatch:
        raise DecodeError(
            f"{source} was encoded with {wanted} torch threads, and this machine has {cores} cores; decoding on CPU "
            f"needs the encoder's thread count for bit-identical model outputs. Decode on a machine with at least "
            f"{wanted} cores, or pass allow_device_mismatch=true to decode with {wanted} threads here anyway (slow)")


@contextmanager
def encoder_threads(header, device, log: Log = print) -> Iterator[None]:
    """On CPU, torch's intra-op thread count changes how sums are split and so the last bits of the
    model's outputs; decoding needs them bit-identical, so use the encoder's count (then restore).

    numba's threading layer starts first (`runtime.pin_torch_threads`): it would otherwise start at
    the codec's first threaded pass (lane groups of 2048+, e.g. CIFAR) and reset torch's count to
    NUMBA_NUM_THREADS under the decode, which then fails on a file encoded with fewer threads."""
    import torch

    from .runtime import pin_torch_threads

    if device.type == "cpu":
        pin_torch_threads()
    wanted = header.device.torch_threads if header.device is not None else 0
    before = torch.get_num_threads()
    if device.type != "cpu" or not wanted or int(wanted) == before:
        yield
        return
    cores = os.cpu_count() or 1
    if wanted > cores:
        log(f"WARNING: the encoder used {wanted} torch threads and this machine has {cores} cores; decoding needs "
            f"the same count for bit-identical outputs, so it will be slower here (allow_device_mismatch)")
    log(f"using {wanted} torch threads, as the encoder did (bit-identical model outputs on CPU)")
    torch.set_num_threads(int(wanted))
    try:
        yield
    finally:
        torch.set_num_threads(before)
