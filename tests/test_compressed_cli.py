"""encode.py -> compressed.bbd -> decode.py through the CLIs, for both codecs and for tiled pictures.

The only proof that the file is complete is restoring the exact source pixels from it with a
fresh process that knows nothing but the file and the checkpoint.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from PIL import Image

from bits_back_diffusion.compressed import tiling_of
import craystack as cs
from bits_back_diffusion.container import framing_bytes, read_bbd
from bits_back_diffusion.data import DataError, build_dataset
from helpers import REPO_ROOT, decode_script, make_run_dir, read_pngs, run_script

FAST = ["wandb.mode=disabled", "diffusion.timestep_respacing=4", "evaluator.compute_vlb=false"]
DIGITS = ["data=digits", "evaluator.num_samples=5", "data.val.batch_size=2"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("model") / "run", seed=3)


def encode(model_dir: Path, run_dir: Path, *extra: str, check: bool = True):
    classical = [] if any(a.startswith("compare_classical=") for a in extra) else ["compare_classical=false"]
    return run_script("encode.py", FAST + classical + [f"evaluator.model_path={model_dir}", f"hydra.run.dir={run_dir}",
                                                        *extra], check=check)


def digits(count: int) -> List[np.ndarray]:
    data = build_dataset({"name": "digits", "image_size": 8, "channels": 1, "num_levels": 17}, "val")
    return [data[i] for i in range(count)]


def decode_via_encode_alias(args: List[str]) -> None:
    """`python encode.py mode=decode …` (the old spelling, which collided with the `mode` launcher
    group) is refused naming decode.py's; then decode.py decodes, in this process."""
    spec = importlib.util.spec_from_file_location("encode_script", REPO_ROOT / "encode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    err = io.StringIO()  # not capsys: the library logger would keep its stream past this test
    with contextlib.redirect_stderr(err):
        assert module._decode_alias(["mode=decode", *args]) == 2
    assert f"decode with: python decode.py {' '.join(args)}" in err.getvalue()
    assert decode_script().main(args) == 0


@pytest.mark.parametrize("codec", ["bitswap", "bbans"])
def test_encode_then_decode_restores_the_images(model_dir, tmp_path, codec):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    encode(model_dir, run_dir, *DIGITS, f"codec={codec}", "compare_classical=true")
    results = json.loads((run_dir / "results.json").read_text())
    bbd = run_dir / "compressed.bbd"
    blob = bbd.read_bytes()
    assert str(model_dir).encode() not in blob and str(tmp_path).encode() not in blob  # nothing about this machine
    # the last log line: the file's bytes, header included, next to the classical codecs' files
    last = (run_dir / "log.txt").read_text().strip().splitlines()[-1]
    assert f"rate_file {results['rate_file']:.4f} bits/dim ({bbd.stat().st_size:,} B, header included)" in last
    png = results["classical_bytes"]["png_mosaic"]
    assert f"PNG {8 * png / (5 * 64):.4f} ({png:,} B as one mosaic" in last
    assert results["classical"]["png_mosaic"] == pytest.approx(8 * png / (5 * 64))
    assert results["roundtrip_ok"] is True and results["codec"] == codec
    assert results["compressed_files"] == [str(bbd)] and results["decode_input"] == str(bbd)
    assert results["compressed_bytes"] == bbd.stat().st_size
    assert results["rate_file"] == pytest.approx(8 * bbd.stat().st_size / (5 * 64))
    header, _ = read_bbd(str(bbd), expected_model_sha256=results["model_sha256"])
    lanes = int(np.prod(header.head_shape))
    assert 0 < results["initial_bytes_per_lane"] <= results["initial_bytes"] / lanes
    # bitswap: one image's lanes, batches growing from 1; bbans: lanes for a whole batch of 2
    assert header.head_shape == ((1 if codec == "bitswap" else 2), 1, 8, 8)
    assert sum(header.batch_sizes()) == 5 and header.batch_sizes()[0] == (1 if codec == "bitswap" else 2)
    assert header.batches == results["batch_schedule"][0]
    prior, latent, obs = {"bitswap": (20, 28, 24), "bbans": (10, 18, 24)}[codec]
    assert header.codec == codec
    assert header.precisions == {"prior_prec": prior, "latent_prec": latent, "obs_prec": obs}
    assert (header.num_images, header.batch_size, header.num_steps, header.respacing) == (5, 2, 4, "4")
    assert header.tiling is None and (header.rank, header.world_size) == (0, 1)
    assert header.checkpoint_name == "ema_0.9999_000000.pt" and header.data_name == "digits"
    assert header.device.kind == "cpu" and header.device.torch_threads >= 1 and header.device.torch_version
    assert len(blob) == framing_bytes(header) + 4 * len(cs.flatten(read_bbd(str(bbd))[1]))

    if codec == "bitswap":  # a fresh process, as a user runs it
        run_script("decode.py", [f"input={bbd}", f"output_dir={out}"])
    else:
        decode_via_encode_alias([f"input={bbd}", f"output_dir={out}"])
    assert sorted(p.name for p in out.iterdir()) == [f"{i:05d}.png" for i in range(5)]
    for got, want in zip(read_pngs(out, range(5)), digits(5)):
        np.testing.assert_array_equal(got, want)


def test_a_file_checked_alongside_decodes_in_a_fresh_process(model_dir, tmp_path):
    """Two torch threads: the encoder and the check run side by side on one each (batch_check), the
    header records one, and decode.py, knowing only the file, restores the pictures."""
    run_dir, out = tmp_path / "run", tmp_path / "out"
    run_script("encode.py", FAST + DIGITS + ["compare_classical=false", f"evaluator.model_path={model_dir}",
                                             f"hydra.run.dir={run_dir}"], env={"OMP_NUM_THREADS": "2"})
    results = json.loads((run_dir / "results.json").read_text())
    assert results["check_alongside"] is True and results["roundtrip_ok"] is True
    assert not list(run_dir.glob("decode-ckpt*"))  # nothing was left to decode after the encode
    header, _ = read_bbd(str(run_dir / "compressed.bbd"), expected_model_sha256=results["model_sha256"])
    assert header.device.torch_threads == 1
    run_script("decode.py", [f"input={run_dir / 'compressed.bbd'}", f"output_dir={out}"])
    for got, want in zip(read_pngs(out, range(5)), digits(5)):
        np.testing.assert_array_equal(got, want)


def test_a_cifar_sized_file_decodes_in_a_fresh_process(fixtures_dir, tmp_path):
    """32 x 32 RGB pictures give lane groups of 3072, so the codec's passes start numba's threads;
    numba's OpenMP start once reset torch's count under decode.py, whose model then ran on two
    threads where the encoder (two threads, split with the check alongside) ran on one, and the file
    failed to decode although encode.py had checked it."""
    folder, run_dir, out = tmp_path / "pictures", tmp_path / "run", tmp_path / "out"
    folder.mkdir()
    rng = np.random.default_rng(4)
    pictures = [rng.integers(0, 256, (32, 32, 3)).astype(np.uint8) for _ in range(2)]
    for i, pixels in enumerate(pictures):
        Image.fromarray(pixels, mode="RGB").save(folder / f"{i}.png")
    two = {"OMP_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2"}
    run_script("encode.py", ["wandb.mode=disabled", "evaluator.compute_vlb=false", "compare_classical=false",
                             "model=tiny", "evaluator=fixture", f"evaluator.model_path={fixtures_dir / 'tiny_cifar_vlb.pt'}",
                             "evaluator.num_samples=-1", "data=folder", f"data.val.data_dir={folder}",
                             f"hydra.run.dir={run_dir}"], env=two)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["check_alongside"] is True and results["roundtrip_ok"] is True
    header, _ = read_bbd(str(run_dir / "compressed.bbd"), expected_model_sha256=results["model_sha256"])
    assert header.device.torch_threads == 1
    run_script("decode.py", [f"input={run_dir / 'compressed.bbd'}", f"output_dir={out}"], env=two)
    for got, want in zip(read_pngs(out, range(2)), pictures):
        np.testing.assert_array_equal(got, want.transpose(2, 0, 1))


@pytest.fixture
def odd_pictures(tmp_path) -> Path:
    """An 11 x 13 picture (larger than the 8 x 8 model, odd sizes: 4 tiles with padding) and an 8 x 8 one."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 17, (11, 13)).astype(np.uint8), mode="L").save(folder / "a.png")
    Image.fromarray(rng.integers(0, 17, (8, 8)).astype(np.uint8), mode="L").save(folder / "b.png")
    return folder


def folder_args(folder: Path) -> List[str]:
    return ["data=folder", f"data.val.data_dir={folder}", "data.channels=1", "data.num_levels=17",
            "data.image_size=8", "data.val.batch_size=2"]


def test_odd_sized_picture_is_tiled_and_restored(model_dir, odd_pictures, tmp_path):
    run_dir, out = tmp_path / "run", tmp_path / "out"
    encode(model_dir, run_dir, *folder_args(odd_pictures), "codec=bitswap")  # with OMP_NUM_THREADS=1
    results = json.loads((run_dir / "results.json").read_text())
    assert results["tiling"] == {"pictures": 2, "tiles": 5, "tile_size": 8} and results["samples"] == 5

    # In this process, with another torch thread count: decode.py must switch to the encoder's
    # (CPU sums depend on it, and the codec needs bit-identical model outputs), then switch back.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert decode_script().main([f"input={run_dir}", f"output_dir={out}"]) == 0  # a run dir as input
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    for name, got in zip(["a.png", "b.png"], read_pngs(out, range(2))):
        np.testing.assert_array_equal(got[0], np.asarray(Image.open(odd_pictures / name)))


def test_coding_part_of_a_picture_is_refused(odd_pictures):
    dataset = build_dataset({"name": "folder", "image_size": 8, "channels": 1, "num_levels": 17,
                             "val": {"data_dir": str(odd_pictures)}}, "val")
    with pytest.raises(DataError, match="2 tiles end inside a picture"):
        tiling_of(dataset, 2)
    assert tiling_of(dataset, 4).num_tiles == 4 and tiling_of(dataset, -1).num_tiles == 5


def test_bitswap_bins_too_coarse_for_the_process_are_refused(model_dir, tmp_path):
    proc = encode(model_dir, tmp_path / "run", *DIGITS, "codec=bitswap", "codec.prior_prec=8", check=False)
    assert proc.returncode != 0
    assert "codec=bitswap: prior_prec=8" in proc.stderr
    assert not list((tmp_path / "run").glob("encode-ckpt*"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gpu_file_decodes_on_its_device_and_is_refused_on_the_cpu(model_dir, odd_pictures, tmp_path):
    """The runtime codes on the GPU when there is one; the file records it, decode.py defaults to
    it, and decoding on the CPU is refused before the checkpoint is loaded, naming both devices.
    (Pictures from a folder: the device machine needs no scikit-learn.)"""
    run_dir = tmp_path / "run"
    encode(model_dir, run_dir, *folder_args(odd_pictures))
    header, _ = read_bbd(str(run_dir / "compressed.bbd"))
    assert header.device.kind == "cuda" and header.device.name == torch.cuda.get_device_name()
    assert header.device.cuda_version and header.device.deterministic and not header.device.tf32
    assert header.device.coder == "cuda", "Bit-Swap on a CUDA model codes with the CUDA coder (numba-cuda)"
    refused = run_script("decode.py", [f"input={run_dir}", f"output_dir={tmp_path / 'cpu'}", "device=cpu"], check=False)
    assert refused.returncode == 2 and not (tmp_path / "cpu").exists()
    assert f"encoded on cuda ({header.device.name}" in refused.stderr and "would run on cpu" in refused.stderr
    assert "loading checkpoint" not in refused.stdout
    run_script("decode.py", [f"input={run_dir}", f"output_dir={tmp_path / 'gpu'}"])
    for name, got in zip(["a.png", "b.png"], read_pngs(tmp_path / "gpu", range(2))):
        np.testing.assert_array_equal(got[0], np.asarray(Image.open(odd_pictures / name)))
