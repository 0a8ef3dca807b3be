"""`mpiexec -n 2 python decode.py`: two ranks restore a 2-rank encode into exactly the folder one
rank writes (same files, same bytes, dataset order), for plain and for tiled pictures whose tiles
lie in both ranks' files, and the pictures are the originals."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch
from PIL import Image

from bits_back_diffusion.data import build_dataset
from helpers import decode_script, make_run_dir, mpiexec_command, read_pngs, run_script

pytestmark = pytest.mark.mpi

FAST = ["wandb.mode=disabled", "diffusion.timestep_respacing=4", "evaluator.compute_vlb=false",
        "compare_classical=false", "check=false", "data.val.batch_size=2"]



def tiled_folder(folder: Path) -> List[Path]:
    """A 9 x 17 picture (6 tiles of 8 x 8, padded), an 8 x 8 one and a 16 x 8 one (2 tiles): with
    two encode ranks taking tiles 0, 2, 4, … and 1, 3, 5, …, every picture but the small one has
    tiles in both rank files."""
    rng = np.random.default_rng(4)
    folder.mkdir(parents=True)
    paths = []
    for name, shape in (("a.png", (9, 17)), ("b.png", (8, 8)), ("c.png", (16, 8))):
        Image.fromarray(rng.integers(0, 17, shape).astype(np.uint8), mode="L").save(folder / name)
        paths.append(folder / name)
    return paths


def encode(model: Path, run_dir: Path, data: List[str], ranks: int, env: Dict[str, str] = None) -> None:
    run_script("encode.py", FAST + data + [f"evaluator.model_path={model}", f"hydra.run.dir={run_dir}"],
               launcher=mpiexec_command(ranks), env=env)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two 2-rank encodes of one tiny model: 7 digits (ranks hold 4 and 3), and tiled pictures."""
    root = tmp_path_factory.mktemp("decode_mpi")
    model = make_run_dir(root / "model", seed=11)
    encode(model, root / "digits", ["data=digits", "evaluator.num_samples=7"], 2)
    originals = tiled_folder(root / "pictures")
    encode(model, root / "tiled", ["data=folder", f"data.val.data_dir={root / 'pictures'}", "data.channels=1",
                                   "data.num_levels=17", "data.image_size=8"], 2)
    return root, originals


def folder_bytes(folder: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("kind", ["digits", "tiled"])
def test_two_ranks_write_what_one_rank_writes(runs, tmp_path, kind):
    root, originals = runs
    run_dir = root / kind
    assert sorted(p.name for p in run_dir.glob("compressed*.bbd")) == ["compressed.rank0.bbd", "compressed.rank1.bbd"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert decode_script().main([f"input={run_dir}", f"output_dir={one}"]) == 0
    proc = run_script("decode.py", [f"input={run_dir}", f"output_dir={two}"], launcher=mpiexec_command(2))
    assert "decode rank 1 of 2: files compressed.rank1.bbd" in proc.stdout
    assert "all 2 decode ranks finished" in proc.stdout
    assert folder_bytes(two) == folder_bytes(one)  # same names, same bytes; nothing else (no exchange folder)
    if kind == "digits":
        digits = build_dataset({"name": "digits", "image_size": 8, "channels": 1, "num_levels": 17}, "val")
        assert sorted(os.listdir(two)) == [f"{i:05d}.png" for i in range(7)]
        for i, got in enumerate(read_pngs(two, range(7))):
            np.testing.assert_array_equal(got, digits[i])
    else:
        assert sorted(os.listdir(two)) == [f"{i:05d}.png" for i in range(3)]
        for i, original in enumerate(originals):
            with Image.open(original) as want, Image.open(two / f"{i:05d}.png") as got:
                assert got.mode == want.mode == "L"
                np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_three_ranks_for_two_files_are_refused_before_anything_is_read(runs, tmp_path):
    root, _ = runs
    out = tmp_path / "out"
    proc = run_script("decode.py", [f"input={root / 'digits'}", f"output_dir={out}"], launcher=mpiexec_command(3),
                      check=False)
    assert proc.returncode != 0
    assert "3 decode ranks cannot share the 2 compressed file(s)" in proc.stderr
    assert "run with mpiexec -n 1 or 2" in proc.stderr
    assert "loading checkpoint" not in proc.stdout and not out.exists()


@pytest.mark.gpu
def test_two_ranks_decode_on_the_gpu(tmp_path):
    """The same on the accelerator: a 2-rank encode on CUDA, decoded by 2 ranks on CUDA (the
    encoder's device kind, the default), equals the 1-rank decode and the pictures (a folder, so
    the device machine needs no scikit-learn; the tiles lie in both rank files).
    BBD_TEST_DEVICE=cpu runs it on the CPU (CUDA hidden)."""
    device = os.environ.get("BBD_TEST_DEVICE", "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("needs CUDA (set BBD_TEST_DEVICE=cpu to run this check on the CPU)")
    env = {"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {}
    model = make_run_dir(tmp_path / "model", seed=12)
    originals = tiled_folder(tmp_path / "pictures")
    encode(model, tmp_path / "run", ["data=folder", f"data.val.data_dir={tmp_path / 'pictures'}", "data.channels=1",
                                     "data.num_levels=17", "data.image_size=8"], 2, env)
    from bits_back_diffusion.container import read_bbd

    header, _ = read_bbd(str(tmp_path / "run" / "compressed.rank1.bbd"))
    assert header.device.kind == device.split(":")[0]
    outs = {}
    for ranks in (1, 2):
        outs[ranks] = tmp_path / f"out{ranks}"
        run_script("decode.py", [f"input={tmp_path / 'run'}", f"output_dir={outs[ranks]}"],
                   launcher=mpiexec_command(ranks), env=env)
    assert folder_bytes(outs[2]) == folder_bytes(outs[1])
    for i, original in enumerate(originals):
        with Image.open(original) as want, Image.open(outs[2] / f"{i:05d}.png") as got:
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_rank_that_fails_while_decoding_stops_rank_0_with_its_reason(runs, tmp_path):
    """Rank 0 waits for the other ranks' tiles through files, without a deadline; a rank that
    failed leaves its reason there instead, and rank 0 stops with it (here rank 1's report is
    planted, and rank 0 runs in this process)."""
    from bits_back_diffusion import parallel_decode
    from bits_back_diffusion.decoder import DecodeError

    root, _ = runs
    out = tmp_path / "out"
    parallel_decode._report(str(out), 1, {"failed": "RuntimeError: CUDA out of memory"})
    request = parallel_decode.DecodeRequest(str(root / "tiled"), str(out))
    with pytest.raises(DecodeError, match=r"decode rank 1 of 2 failed: RuntimeError: CUDA out of memory"):
        parallel_decode.decode_to_dir(request, rank=0, world=2, log=lambda *_: None)
    assert not list(out.glob("*.png"))  # the pictures were not written from half the tiles


def test_a_rank_refused_before_decoding_tells_rank_0(runs, tmp_path, monkeypatch):
    """A check that fails on one node only (its GPU model differs from the encoder's, say) happens
    after the ranks split up: the refused rank must leave its reason for rank 0, which would
    otherwise wait for it forever."""
    from bits_back_diffusion import parallel_decode
    from bits_back_diffusion.decoder import DecodeError

    root, _ = runs
    out = tmp_path / "out"

    def refuse(*args, **kwargs):
        raise DecodeError("encoded on cuda (NVIDIA H200), but this decode would run on cuda (NVIDIA A100)")

    monkeypatch.setattr(parallel_decode, "prepare_decoder", refuse)
    request = parallel_decode.DecodeRequest(str(root / "digits"), str(out))
    with pytest.raises(DecodeError, match="NVIDIA A100"):
        parallel_decode.decode_to_dir(request, rank=1, world=2, log=lambda *_: None)
    monkeypatch.undo()
    with pytest.raises(DecodeError, match=r"decode rank 1 of 2 failed: DecodeError: .*NVIDIA A100"):
        parallel_decode.decode_to_dir(request, rank=0, world=2, log=lambda *_: None)


def test_two_submitit_tasks_write_what_one_rank_writes(runs, tmp_path):
    """`decode.py -m +mode=submitit_local` with 2 tasks (as a SLURM job of 2 tasks would run it,
    through Hydra's submitit launcher): each task decodes its rank file, and the output dir is the
    1-rank decode's."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    root, _ = runs
    one, two = tmp_path / "one", tmp_path / "two"
    assert decode_script().main([f"input={root / 'digits'}", f"output_dir={one}"]) == 0
    run_script("decode.py", ["-m", "+mode=submitit_local", "hydra.launcher.gpus_per_node=0",
                             "hydra.launcher.tasks_per_node=2", "hydra.launcher.cpus_per_task=1",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}", f"input={root / 'digits'}",
                             f"output_dir={two}"], timeout=600)
    assert folder_bytes(two) == folder_bytes(one)
    logs = "".join(p.read_text() for p in (tmp_path / "sweep").rglob("*_log.out"))
    assert "decode rank 1 of 2: files compressed.rank1.bbd" in logs
