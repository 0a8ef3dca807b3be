"""`mpiexec -n 2` for compute_vlb.py and encode.py: the same numbers as one process."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bits_back_diffusion.coding import message_bits
from bits_back_diffusion.codec_checkpoints import CodecState
from bits_back_diffusion.data import build_dataset
from helpers import decode_script, make_run_dir, mpiexec_command, read_pngs, run_script

pytestmark = pytest.mark.mpi



@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("mpi_model") / "run", seed=5)


COMMON = ["data=digits", "wandb.mode=disabled", "evaluator.num_samples=8", "diffusion.timestep_respacing=6"]


def test_compute_vlb_two_ranks_equals_one(model_dir, tmp_path):
    results = {}
    for n in (1, 2):
        run_dir = tmp_path / f"n{n}"
        run_script("compute_vlb.py", COMMON + [f"evaluator.model_path={model_dir}", "data.val.batch_size=3",
                                               f"hydra.run.dir={run_dir}"], launcher=mpiexec_command(n))
        results[n] = json.loads((run_dir / "results.json").read_text())
        assert not list(tmp_path.glob(f"n{n}/.hydra/rank0")), "rank 0 owns .hydra itself"
    assert results[2]["world_size"] == 2 and results[2]["samples"] == results[1]["samples"] == 8
    # noise is keyed by image id, so only float noise of the batch layout separates the two
    assert results[2]["vlb"] == pytest.approx(results[1]["vlb"], rel=1e-5)
    assert (tmp_path / "n2" / ".hydra" / "rank1" / "config.yaml").exists()


def test_encode_two_ranks_roundtrip_and_aggregate(model_dir, tmp_path):
    one = tmp_path / "n1"
    two = tmp_path / "n2"
    run_script("encode.py", COMMON + [f"evaluator.model_path={model_dir}", "data.val.batch_size=2",
                                      "evaluator.compute_vlb=true", f"hydra.run.dir={one}"],
               launcher=mpiexec_command(1))
    run_script("encode.py", COMMON + [f"evaluator.model_path={model_dir}", "data.val.batch_size=2",
                                      "evaluator.compute_vlb=true", f"hydra.run.dir={two}"],
               launcher=mpiexec_command(2))
    r1 = json.loads((one / "results.json").read_text())
    r2 = json.loads((two / "results.json").read_text())
    assert r2["world_size"] == 2 and r2["samples"] == 8 and r2["roundtrip_ok"] is True
    assert sorted(p.name for p in two.glob("encode-ckpt*.npz")) == ["encode-ckpt4.rank0.npz", "encode-ckpt4.rank1.npz"]
    assert r2["vlb"] == pytest.approx(r1["vlb"], rel=1e-5)
    assert r2["initial_bytes"] == 2 * r1["initial_bytes"]
    # the aggregate is exactly the pooled per-rank messages
    states = [CodecState.load(str(two / f"encode-ckpt4.rank{r}.npz")) for r in (0, 1)]
    growth = sum(message_bits(s.message) - s.stats["initial_bits"] for s in states)
    assert r2["rate_effective"] == pytest.approx(growth / (8 * 64), rel=1e-12)
    # the same images in two messages instead of one: equal up to the latents' sampling noise
    # (512 dimensions in all, so a few percent)
    assert r2["rate_effective"] == pytest.approx(r1["rate_effective"], rel=0.15)
    # one .bbd per rank; decode.py interleaves the run dir's files back into dataset order
    assert r2["compressed_files"] == [str(two / f"compressed.rank{r}.bbd") for r in (0, 1)]
    assert r2["decode_input"] == str(two)
    decode = decode_script()
    digits = build_dataset({"name": "digits", "image_size": 8, "channels": 1, "num_levels": 17}, "val")
    assert decode.main([f"input={two}", f"output_dir={tmp_path / 'all'}"]) == 0
    for i, got in enumerate(read_pngs(tmp_path / "all", range(8))):
        np.testing.assert_array_equal(got, digits[i])
    # one rank's file alone gives its own images under their dataset numbers
    assert decode.main([f"input={two / 'compressed.rank1.bbd'}", f"output_dir={tmp_path / 'r1'}"]) == 0
    assert sorted(os.listdir(tmp_path / "r1")) == ["00001.png", "00003.png", "00005.png", "00007.png"]
