"""encode.py and compute_vlb.py settings: refused up front, or used with a warning that says so;
time-based codec checkpoints; the VLB's time reported apart from coding time."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from bits_back_diffusion import encoder
from helpers import REPO_ROOT, compose_cfg, make_run_dir
from improved_diffusion import dist_util

if str(REPO_ROOT) not in sys.path:  # the scripts live at the repo root
    sys.path.insert(0, str(REPO_ROOT))

import compute_vlb  # noqa: E402
import encode  # noqa: E402

BASE = ["data=digits", "wandb.mode=disabled", "diffusion.timestep_respacing=3", "compare_classical=false",
        "evaluator.compute_vlb=false"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_run_dir(tmp_path_factory.mktemp("model") / "run", seed=0)


def run(module, overrides, run_dir: Path):
    if module is compute_vlb:  # encode's own keys
        overrides = [o for o in overrides if not o.startswith(("compare_classical=", "check=", "codec="))]
    try:
        return module.run(compose_cfg(module.__name__, overrides), str(run_dir))
    finally:
        dist_util.cleanup_dist()


def encode_args(model_dir, *extra):
    return BASE + [f"evaluator.model_path={model_dir}", *extra]


@pytest.mark.parametrize("module", [encode, compute_vlb], ids=["encode", "compute_vlb"])
@pytest.mark.parametrize("value", [0, -5, "all"])
def test_bad_num_samples_are_refused_before_anything_is_written(module, value, model_dir, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match=f"evaluator.num_samples={value!r} is not a number of images.*-1 for all"):
        run(module, encode_args(model_dir, f"evaluator.num_samples={value}"), run_dir)
    assert not list(run_dir.iterdir())  # no compressed.bbd, no checkpoint, no config, no log


@pytest.fixture(scope="module")
def five_images(tmp_path_factory):
    """Five 8x8 grayscale PNGs with the digits model's 17 levels."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("five")
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 17, (8, 8), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    return ["data=folder", f"data.val.data_dir={folder}", "data.channels=1", "data.num_levels=17", "data.image_size=8"]


@pytest.mark.parametrize("module", [encode, compute_vlb], ids=["encode", "compute_vlb"])
def test_more_samples_than_available_warns_in_the_log_and_results(module, model_dir, five_images, tmp_path):
    results = run(module, encode_args(model_dir, *five_images, "evaluator.num_samples=100000", "data.val.batch_size=5",
                                      "check=false"), tmp_path / "run")
    assert results["samples"] == 5
    assert results["num_samples_requested"] == 100000 and results["num_samples_available"] == 5
    assert json.loads((tmp_path / "run" / "results.json").read_text())["num_samples_available"] == 5
    assert "WARNING: evaluator.num_samples=100000 but the data has only 5 images" in (tmp_path / "run" / "log.txt").read_text()


def test_bbans_lanes_are_sized_to_the_images_not_the_batch(model_dir, five_images, tmp_path):
    """Three images with data.val.batch_size=5000 used to give a 19 MB file of lanes."""
    results = run(encode, encode_args(model_dir, *five_images, "codec=bbans", "evaluator.num_samples=3",
                                      "data.val.batch_size=5000"), tmp_path / "run")
    assert results["roundtrip_ok"] is True
    assert results["batch_size"] == 3 and results["batch_size_requested"] == 5000 and results["lane_images"] == 3
    assert results["compressed_bytes"] < 20_000, results["compressed_bytes"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "WARNING: data.val.batch_size=5000 exceeds the 3 image(s) to code; coding in batches of 3" in log


def test_log_says_how_to_get_the_vlb_when_it_was_not_computed(model_dir, tmp_path):
    results = run(encode, encode_args(model_dir, "evaluator.num_samples=2", "data.val.batch_size=2", "check=false"),
                  tmp_path / "run")
    assert results["vlb"] is None and results["vlb_seconds"] is None
    assert "VLB not computed: add evaluator.compute_vlb=true bits/dim" not in (tmp_path / "run" / "log.txt").read_text()
    assert "VLB not computed: add evaluator.compute_vlb=true" in (tmp_path / "run" / "log.txt").read_text()


class FakeClock:
    """Stands in for the encoder's `time` module: time passes only when a test says so."""

    def __init__(self):
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    monotonic = time


def test_vlb_seconds_are_reported_apart_from_encode_seconds(model_dir, tmp_path, monkeypatch):
    clock, real, calls = FakeClock(), encode.batch_vlb, []

    def slow_vlb(*args, **kwargs):
        clock.now += 100.0  # each VLB pass "takes" 100 s; coding takes no time on this clock
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(encoder, "time", clock)
    monkeypatch.setattr(encode, "batch_vlb", slow_vlb)
    results = run(encode, encode_args(model_dir, "evaluator.num_samples=4", "data.val.batch_size=2", "check=false",
                                      "evaluator.compute_vlb=true"), tmp_path / "run")
    assert results["vlb"] is not None and calls
    assert results["vlb_seconds"] == pytest.approx(100.0 * len(calls))
    assert results["encode_seconds"] == pytest.approx(0.0)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["vlb_seconds"] == results["vlb_seconds"]


def test_checkpoints_every_save_minutes_before_save_interval_images(model_dir, tmp_path, monkeypatch):
    clock = iter(range(0, 10**6, 100))  # every reading of the codec's clock is 100 s later
    monkeypatch.setattr(encoder, "_now", lambda: float(next(clock)))
    run(encode, encode_args(model_dir, "evaluator.num_samples=4", "data.val.batch_size=2", "check=false",
                            "save_interval=1000", "save_minutes=1"), tmp_path / "run")
    saved = sorted(int(p.name[len("encode-ckpt"):-len(".npz")]) for p in (tmp_path / "run").glob("encode-ckpt*.npz"))
    assert saved[-1] == 4 and len(saved) >= 3, saved  # one per batch, not only the final one


@pytest.mark.parametrize("setting, message", [
    ("save_minutes=0", "save_minutes=0 must be a positive number"),
    ("save_interval=0", "save_interval=0 must be a positive number"),
    ("data.val.batch_size=0", "data.val.batch_size=0 must be a positive number"),
])
def test_bad_save_and_batch_settings_are_refused(model_dir, tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        run(encode, encode_args(model_dir, "evaluator.num_samples=2", setting), tmp_path / "run")
    assert not list((tmp_path / "run").iterdir())


def test_the_same_encode_twice_gives_byte_identical_files(model_dir, tmp_path):
    args = encode_args(model_dir, "evaluator.num_samples=3", "data.val.batch_size=2", "check=false")
    run(encode, args, tmp_path / "a")
    run(encode, args, tmp_path / "b")
    first, second = (tmp_path / "a" / "compressed.bbd").read_bytes(), (tmp_path / "b" / "compressed.bbd").read_bytes()
    assert len(first) > 100 and first == second
    np.testing.assert_array_equal(np.load(tmp_path / "a" / "encode-ckpt3.npz")["message"],
                                  np.load(tmp_path / "b" / "encode-ckpt3.npz")["message"])


def test_a_header_the_reader_would_refuse_stops_the_encode_before_coding(model_dir, tmp_path, monkeypatch):
    """The names of a tiled folder's pictures grow the header with the folder; past the reader's
    bound the file could not be read, which once showed only after the whole encode."""
    from PIL import Image

    import bits_back_diffusion.container as container

    folder = tmp_path / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # 8 x 16: tiled into two 8 x 8 tiles each
        Image.fromarray(rng.integers(0, 17, (8, 16), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    args = encode_args(model_dir, "data=folder", f"data.val.data_dir={folder}", "data.channels=1",
                       "data.num_levels=17", "data.image_size=8", "evaluator.num_samples=-1")
    monkeypatch.setattr(container, "_MAX_HEADER", 64)
    monkeypatch.setattr(encoder.DatasetCoder, "encode", lambda self: pytest.fail("coding started"))
    with pytest.raises(ValueError, match=r"header would take .* \(it stores the names of 3 tiled pictures\)"):
        run(encode, args, tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.bbd")) and not list((tmp_path / "run").glob("encode-ckpt*"))


def test_results_of_an_earlier_run_in_the_same_dir_are_kept(model_dir, tmp_path):
    """A rerun with other settings, or another script pointed at the run dir, once replaced its
    results.json (and VLB terms) without a word."""
    run_dir = tmp_path / "run"
    first = run(compute_vlb, encode_args(model_dir, "evaluator.num_samples=4"), run_dir)
    second = run(compute_vlb, encode_args(model_dir, "evaluator.num_samples=6"), run_dir)
    assert (first["samples"], second["samples"]) == (4, 6)
    assert json.loads((run_dir / "results.1.json").read_text())["samples"] == 4
    assert (run_dir / "vlb_terms.1.npz").exists() and (run_dir / "vlb_terms.1.png").exists()
    encoded = run(encode, encode_args(model_dir, "evaluator.num_samples=3"), run_dir)
    assert encoded["samples"] == 3 and json.loads((run_dir / "results.json").read_text())["samples"] == 3
    assert json.loads((run_dir / "results.2.json").read_text())["samples"] == 6
    log = (run_dir / "log.txt").read_text()
    assert "kept them as results.1.json, vlb_terms.1.npz, vlb_terms.1.png" in log
    assert "kept them as results.2.json" in log


@pytest.mark.parametrize("setting", ["check=yes_please", "check_alongside='false'", "codec.track=1",
                                     "evaluator.clip_denoised=maybe"])
def test_a_switch_that_is_not_true_or_false_is_refused(model_dir, tmp_path, setting):
    """check=yes_please once ran the whole job (a non-empty string is truthy)."""
    key = setting.split("=")[0]
    with pytest.raises(ValueError, match=rf"{re.escape(key)}=.* must be true or false"):
        run(encode, encode_args(model_dir, setting), tmp_path / "run")
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").glob("*.json"))
