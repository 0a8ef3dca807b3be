"""The process settings of coding runs: strict determinism, the cuBLAS workspace set before CUDA
starts, and the GPU chosen among the visible ones (faked here: CI has no GPU)."""
from __future__ import annotations

import os
import socket

import pytest
import torch
from omegaconf import OmegaConf

from bits_back_diffusion import runtime
from improved_diffusion import dist_util


@pytest.fixture
def restore_determinism():
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_coding_runs_make_nondeterministic_kernels_an_error(tmp_path, monkeypatch, restore_determinism):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    seen = {}
    real_setup = dist_util.setup_dist

    def setup_dist(*args, **kwargs):  # where CUDA would start
        seen["cublas"] = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        return real_setup(*args, **kwargs)

    monkeypatch.setattr(dist_util, "setup_dist", setup_dist)
    torch.use_deterministic_algorithms(False)
    rt = runtime.setup(OmegaConf.create({"seed": 0}), run_dir=str(tmp_path), deterministic=True)
    try:
        assert seen["cublas"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()  # an error, never only a warning
    finally:
        rt.release()
        dist_util.cleanup_dist()


def test_training_keeps_its_own_determinism_setting(tmp_path, restore_determinism):
    torch.use_deterministic_algorithms(False)
    rt = runtime.setup(OmegaConf.create({"seed": 0}), run_dir=str(tmp_path), deterministic=False)
    try:
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        rt.release()
        dist_util.cleanup_dist()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("local_rank, visible, expected", [(3, 1, 0), (3, 2, 1), (1, 8, 1)])
def test_each_rank_takes_a_visible_gpu(monkeypatch, local_rank, visible, expected):
    """A SLURM task bound to one GPU (--gpus-per-task) has local rank 3 but sees only device 0."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: chosen.append(index))
    for var in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_LOCALID", str(local_rank))
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist_util.setup_dist(backend="gloo")
    try:
        assert chosen == [expected]
        assert dist_util.dev() == torch.device(f"cuda:{expected}")
    finally:
        dist_util.cleanup_dist()


@pytest.mark.parametrize("variable, ranks, visible, expected", [
    ("MPI_LOCALNRANKS", "2", 1, "gloo"),  # mpiexec -n 2 on a one-GPU machine: NCCL would refuse the duplicate GPU
    ("OMPI_COMM_WORLD_LOCAL_SIZE", "4", 8, "nccl"),
    ("LOCAL_WORLD_SIZE", "8", 8, "nccl"),
    (None, None, 1, "nccl"),  # the launcher does not say: one GPU per rank is assumed
])
def test_ranks_sharing_a_gpu_use_gloo(monkeypatch, variable, ranks, visible, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    for name in dist_util._LOCAL_SIZE_ENV_VARS:  # whatever launched pytest says nothing here
        monkeypatch.delenv(name, raising=False)
    if variable:
        monkeypatch.setenv(variable, ranks)
    assert dist_util.default_backend() == expected


def test_without_cuda_the_backend_is_gloo(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("MPI_LOCALNRANKS", "1")
    assert dist_util.default_backend() == "gloo"


def test_numba_starting_its_threads_leaves_torchs_count_alone(tmp_path):
    """With OMP_NUM_THREADS=1 torch reads its count from OpenMP, which numba's OpenMP layer sets to
    NUMBA_NUM_THREADS when it starts; after setup the model stays on the one thread it records."""
    code = ("import numba, torch; from omegaconf import OmegaConf; from bits_back_diffusion import runtime\n"
            f"rt = runtime.setup(OmegaConf.create({{'seed': 0}}), run_dir={str(tmp_path)!r})\n"
            "before = torch.get_num_threads(); numba.get_num_threads()  # starts numba's threading layer\n"
            "print(before, torch.get_num_threads(), numba.threading_layer()); rt.release()\n")
    before, after, layer = _thread_counts_in_a_fresh_process(code, omp_threads=1)
    assert (before, after) == ("1", "1"), (before, after, layer)


def _thread_counts_in_a_fresh_process(code: str, omp_threads: int):
    """The last three words `code` prints, run where numba's threads have not started yet."""
    import subprocess
    import sys

    from helpers import REPO_ROOT

    env = {**os.environ, "OMP_NUM_THREADS": str(omp_threads), "NUMBA_NUM_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()[-3:]


def test_a_decode_keeps_the_encoders_thread_count_when_numba_starts():
    """decode.py does not run `runtime.setup`: in a fresh process the codec's first threaded pass,
    under `encoder_threads`, started numba's OpenMP layer, which reset torch's count from the
    encoder's one thread to NUMBA_NUM_THREADS, and the file's decode failed."""
    code = ("import types, numba, torch; from bits_back_diffusion import decode_device\n"
            "from bits_back_diffusion.container import DeviceInfo\n"
            "header = types.SimpleNamespace(device=DeviceInfo(kind='cpu', torch_threads=1))\n"
            "with decode_device.encoder_threads(header, torch.device('cpu'), lambda line: None):\n"
            "    numba.get_num_threads()  # what the codec's first threaded pass does\n"
            "    inside = torch.get_num_threads()\n"
            "print(inside, torch.get_num_threads(), numba.threading_layer())\n")
    inside, after, layer = _thread_counts_in_a_fresh_process(code, omp_threads=2)
    assert (inside, after) == ("1", "2"), (inside, after, layer)
