"""The CUDA coder without a GPU: which coder a codec gets, how files record it and refuse to be
decoded without it, and (in a subprocess, in numba's CUDA simulator) that its kernels write the
CPU kernels' messages (tests/cuda_sim)."""
from __future__ import annotations

import dataclasses

import cuda_sim_run
import pytest
import torch
from helpers import REPO_ROOT
from test_bitswap import ConvNet, process

from bits_back_diffusion import decoder
from bits_back_diffusion.bbd_wire import header_from_bytes, header_to_bytes
from bits_back_diffusion.bitswap import BITSWAP_PRECISIONS, BitSwapCodec
from bits_back_diffusion.codec import BitsBackCodec
from bits_back_diffusion.coders import choose_coder
from bits_back_diffusion.container import DeviceInfo, read_bbd, write_bbd
from bits_back_diffusion.latent_model import DiffusionLatentModel

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "digits3_v3.bbd"


def test_cuda_kernels_in_the_simulator():
    """tests/cuda_sim under NUMBA_ENABLE_CUDASIM=1 with 4 threads per block, run in the background
    since the suite was collected (tests/cuda_sim_run.py)."""
    returncode, output, seconds = cuda_sim_run.result(timeout=1200)
    print(f"tests/cuda_sim: {seconds:.0f} s since its start")
    assert returncode == 0, output[-9000:]
    assert " passed" in output and "failed" not in output


def test_codecs_code_on_the_host_unless_the_model_is_on_cuda():
    lm = DiffusionLatentModel(ConvNet(), process(20, "2"), torch.device("cpu"))
    assert BitSwapCodec(lm, BITSWAP_PRECISIONS).coder == "host"
    assert BitsBackCodec(lm, BitsBackCodec.default_precisions).coder == "host"
    assert choose_coder("bitswap", "cuda", "numpy") == "host"  # the NumPy reference codes on the host
    with pytest.raises(ValueError, match=r"CUDA coder runs the compiled path \(codec.backend=numba\), not "
                                         r"codec.backend=numpy \(codec=bbans\)"):
        BitsBackCodec(lm, BitsBackCodec.default_precisions, backend="numpy", coder="cuda")
    with pytest.raises(ValueError, match="unknown coder 'gpu'; choose one of host, cuda"):
        BitSwapCodec(lm, BITSWAP_PRECISIONS, coder="gpu")


def test_the_coder_is_written_to_files_and_older_files_were_coded_on_the_host(tmp_path):
    header, message = read_bbd(str(FIXTURE))  # format version 3: no coder field
    assert header.device.coder == "host"
    gpu = DeviceInfo(kind="cuda", name="NVIDIA H200", torch_version="2.5.1", torch_threads=1, coder="cuda")
    assert header_from_bytes(header_to_bytes(dataclasses.replace(header, device=gpu))).device == gpu
    assert "cuda coder" in gpu.describe()
    with pytest.raises(ValueError, match="device coder must be host or cuda, got 'tpu'"):
        DeviceInfo(kind="cuda", coder="tpu")
    path = tmp_path / "gpu.bbd"
    write_bbd(str(path), dataclasses.replace(header, device=gpu), message)
    assert read_bbd(str(path))[0].device.coder == "cuda"


def test_a_cuda_coder_file_is_refused_on_the_cpu_before_the_model(tmp_path, monkeypatch):
    """Even with allow_device_mismatch: the CUDA coder's CDFs exist on a GPU only."""
    header, message = read_bbd(str(FIXTURE))
    path = tmp_path / "gpu.bbd"
    write_bbd(str(path), dataclasses.replace(header, device=dataclasses.replace(header.device, coder="cuda")), message)
    monkeypatch.setattr(decoder, "find_checkpoint", lambda *a, **k: pytest.fail("the checkpoint was looked for"))
    with pytest.raises(decoder.DecodeError, match=r"coded by the CUDA coder .* but this decode runs on the CPU; decode "
                                                  r"on a CUDA GPU .*pip install numba-cuda"):
        decoder.decode_input(str(path), device="cpu", allow_device_mismatch=True)


def test_a_cuda_model_without_numba_cuda_codes_on_the_host_and_says_so(monkeypatch):
    from bits_back_diffusion import coders

    monkeypatch.setattr(coders, "cuda_problem", lambda: "numba finds no usable CUDA device")
    with pytest.warns(RuntimeWarning, match="coding on the CPU, not the GPU: numba finds no usable CUDA device"):
        assert choose_coder("bitswap", "cuda", "numba") == "host"
    with pytest.raises(ValueError, match="the CUDA coder cannot run here: numba finds no usable CUDA device"):
        choose_coder("bbans", "cuda", "numba", requested="cuda")
    monkeypatch.setattr(coders, "cuda_problem", lambda: "")
    assert choose_coder("bbans", "cuda:1", "numba") == "cuda"  # both codecs default to it on a GPU
