"""Resuming an encode is refused when the machine settings its model outputs depend on changed."""
from __future__ import annotations

import pytest
import torch

import craystack as cs
from bits_back_diffusion.codec_checkpoints import CheckpointError, CodecState, device_meta


def saved_state(tmp_path, meta):
    path = str(tmp_path / "encode-ckpt4.npz")
    CodecState("encode", 1, 4, cs.random_message(40, (4,), seed=0), meta).save(path)
    return path, CodecState.load(path)


def test_device_threads_and_std_min_are_part_of_the_resume_check(tmp_path):
    meta = {"codec": "bitswap", **device_meta(torch.device("cpu")), "likelihood_std_min": 1e-6}
    assert meta["device"] == "cpu" and meta["torch_threads"] == torch.get_num_threads()
    path, state = saved_state(tmp_path, meta)
    state.check_meta(dict(meta), path)  # same machine settings: resumes
    with pytest.raises(CheckpointError, match=r"encoded with torch_threads=\d+ but this run has torch_threads=999.*"
                                              r"OMP_NUM_THREADS"):
        state.check_meta({**meta, "torch_threads": 999}, path)
    with pytest.raises(CheckpointError, match=r"encoded with device='cpu' but this run has device='cuda NVIDIA H200'"):
        state.check_meta({**meta, "device": "cuda NVIDIA H200"}, path)
    with pytest.raises(CheckpointError, match=r"likelihood_std_min=1e-06 but this run has likelihood_std_min=1e-05"):
        state.check_meta({**meta, "likelihood_std_min": 1e-5}, path)


def test_checkpoints_that_do_not_record_the_device_are_not_resumed(tmp_path):
    path, state = saved_state(tmp_path, {"codec": "bitswap"})
    with pytest.raises(CheckpointError, match="does not record device .written by an older version."):
        state.check_meta({"codec": "bitswap", "device": "cpu"}, path)


def test_the_coder_is_part_of_the_resume_check_and_older_checkpoints_were_host(tmp_path):
    old = {"codec": "bitswap", "device": "cuda NVIDIA H200"}  # before the coder was recorded
    path, state = saved_state(tmp_path, old)
    state.check_meta({**old, "coder": "host"}, path)  # earlier versions always coded on the host: resumes
    with pytest.raises(CheckpointError, match=r"encoded with coder='host' but this run has coder='cuda'.*codec.coder"):
        state.check_meta({**old, "coder": "cuda"}, path)
    path, state = saved_state(tmp_path, {**old, "coder": "cuda"})
    with pytest.raises(CheckpointError, match=r"encoded with coder='cuda' but this run has coder='host'"):
        state.check_meta({**old, "coder": "host"}, path)


def test_the_cpu_family_is_part_of_the_resume_check_and_older_checkpoints_resume(tmp_path):
    """A CPU run resumed on a processor of another kernel family would mix model outputs the
    decoder cannot reproduce; checkpoints written before the family was recorded still resume."""
    from bits_back_diffusion.cpu_kind import cpu_kind

    meta = {"codec": "bitswap", **device_meta(torch.device("cpu"))}
    assert meta["cpu"] == cpu_kind()
    path, state = saved_state(tmp_path, meta)
    state.check_meta(dict(meta), path)
    other = "GenuineIntel x86_64 torch:AVX512 numpy:X86_V4"
    with pytest.raises(CheckpointError, match=rf"encoded with cpu='.*' but this run has cpu='{other}'.*same CPU family"):
        state.check_meta({**meta, "cpu": other}, path)
    older = {key: value for key, value in meta.items() if key != "cpu"}
    path, state = saved_state(tmp_path, older)
    state.check_meta(dict(meta), path)  # unrecorded: resumes
    assert device_meta(torch.device("cpu"), coder="host")["cpu"] and not device_meta("cuda", coder="cuda")["cpu"]
