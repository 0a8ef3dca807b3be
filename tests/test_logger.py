"""improved-diffusion logger outputs (table, csv, json), rank handling, and the W&B setup."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from bits_back_diffusion.wandb_logging import WandbWriter, finish_logging, log_image, setup_logging
from improved_diffusion import logger


@pytest.fixture(autouse=True)
def _reset_logger():
    yield
    logger.reset()


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_log_csv_json_outputs(tmp_path, capsys):
    logger.configure(str(tmp_path), format_strs="stdout,log,csv,json")
    assert logger.get_dir() == str(tmp_path)
    logger.log("hello", 42)
    logger.logkv("step", 1)
    logger.logkv_mean("loss", 1.0)
    logger.logkv_mean("loss", 3.0)
    logger.logkv_mean("q", np.float32(2.0), count=3)
    logger.logkv_mean("q", 6.0)
    assert logger.dumpkvs() == {"step": 1, "loss": 2.0, "q": 3.0}
    logger.logkvs({"step": 2, "loss": 5.0, "new_key": 7})  # a key appears later: csv header grows
    logger.dumpkvs()
    assert logger.dumpkvs() == {}  # nothing accumulated: nothing written

    rows = _rows(tmp_path / "progress.csv")
    assert [r["step"] for r in rows] == ["1", "2"]
    assert rows[0]["new_key"] == "" and rows[1]["new_key"] == "7"
    assert float(rows[0]["loss"]) == 2.0
    lines = [json.loads(line) for line in (tmp_path / "progress.json").read_text().splitlines()]
    assert lines[1] == {"step": 2, "loss": 5.0, "new_key": 7}
    text = (tmp_path / "log.txt").read_text()
    assert "hello 42" in text and "| loss" in text and "| new_key" in text
    assert "hello 42" in capsys.readouterr().out


def test_csv_continues_a_resumed_run(tmp_path):
    logger.configure(str(tmp_path), format_strs=["csv"])
    logger.logkvs({"step": 1, "loss": 1.0})
    logger.dumpkvs()
    logger.configure(str(tmp_path), format_strs=["csv"])
    logger.logkvs({"step": 2, "loss": 0.5})
    logger.dumpkvs()
    assert [(r["step"], r["loss"]) for r in _rows(tmp_path / "progress.csv")] == [("1", "1.0"), ("2", "0.5")]


def test_level_filters_text(tmp_path):
    logger.configure(str(tmp_path), format_strs=["log"])
    logger.set_level(logger.WARN)
    logger.info("quiet")
    logger.warn("loud")
    text = (tmp_path / "log.txt").read_text()
    assert "loud" in text and "quiet" not in text


class _FakeComm:
    """Two ranks seen from `rank`; the other rank logged `other`."""

    def __init__(self, rank, other):
        self.rank, self.other = rank, other

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return 2

    def gather(self, obj, root=0):
        return [obj, self.other] if self.rank == root else None


def test_values_are_averaged_over_ranks_and_only_rank0_writes(tmp_path):
    other = {"loss": (4.0, 3.0), "step": (5, 1.0)}  # rank 1: mean 4.0 over 3 samples
    logger.configure(str(tmp_path / "r0"), comm=_FakeComm(0, other), format_strs=["csv"])
    logger.logkv_mean("loss", 0.0)  # rank 0: one sample of 0.0
    logger.logkv("step", 5)
    assert logger.dumpkvs() == {"loss": 3.0, "step": 5.0}

    logger.configure(str(tmp_path / "r1"), comm=_FakeComm(1, other))  # default formats: none on rank 1
    logger.logkv("loss", 1.0)
    assert logger.dumpkvs() == {}
    assert list((tmp_path / "r1").iterdir()) == []


def test_unknown_format_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown log format\(s\) \['tensorboard'\]"):
        logger.configure(str(tmp_path), format_strs="stdout,tensorboard")


def _cfg(mode):
    return OmegaConf.create(
        {"wandb": {"mode": mode, "project": "bbd-test", "entity": None, "name": "t", "tags": ["test"]}, "lr": 1e-4}
    )


def test_wandb_offline_run_dir_and_resume(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = setup_logging(str(tmp_path), _cfg("offline"), rank=0)
    assert run is not None and run.config["lr"] == 1e-4
    logger.logkvs({"step": 1, "loss": 2.0})
    logger.dumpkvs()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.figure()
    plt.plot([0, 1])
    plt.savefig(tmp_path / "curve.png")
    plt.close()
    log_image("curve", str(tmp_path / "curve.png"))
    first_id = run.id
    finish_logging()

    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{first_id}"))
    assert runs and (runs[0] / f"run-{first_id}.wandb").exists()
    assert list(runs[0].glob("files/media/images/curve_*.png"))
    assert (tmp_path / "progress.csv").exists() and (tmp_path / "log.txt").exists()
    assert (tmp_path / "wandb_run_id.txt").read_text() == first_id

    again = setup_logging(str(tmp_path), _cfg("offline"), rank=0)  # resumed run: same W&B run
    assert again.id == first_id
    finish_logging()


def test_wandb_disabled_and_other_ranks_log_nothing(tmp_path):
    assert setup_logging(str(tmp_path / "a"), _cfg("disabled"), rank=0) is None
    assert not (tmp_path / "a" / "wandb").exists()
    assert setup_logging(str(tmp_path / "b"), _cfg("offline"), rank=1) is None
    logger.logkv("x", 1)
    logger.dumpkvs()
    assert list((tmp_path / "b").iterdir()) == []
    with pytest.raises(ValueError, match=r"Unknown wandb.mode 'cloud'.*online, offline, disabled"):
        setup_logging(str(tmp_path / "c"), _cfg("cloud"), rank=0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        log_image("x", str(tmp_path / "missing.png"))


def test_wandb_writer_sends_numbers_at_their_step():
    class _Run:
        def __init__(self):
            self.calls = []

        def log(self, data, step=None):
            self.calls.append((data, step))

    run = _Run()
    WandbWriter(run).writekvs({"step": 7, "loss": np.float32(0.5), "name": "text", "flag": True})
    WandbWriter(run).writekvs({"loss": 1.0})
    assert run.calls == [({"step": 7, "loss": 0.5}, 7), ({"loss": 1.0}, None)]
