"""Training resume: bit-exact continuation, and falling back past damaged checkpoint files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import train  # noqa: E402
from helpers import mpiexec_command  # noqa: E402
from improved_diffusion import logger  # noqa: E402
from improved_diffusion.resample import LossSecondMomentResampler, UniformSampler  # noqa: E402
from improved_diffusion.train_util import NoCompleteCheckpointError, TrainLoop  # noqa: E402

from test_train import TINY, _Toy, assert_same_step, load, subprocess_env, tiny_cfg  # noqa: E402


# ---------------------------------------------------------------- bit-exact resume through train.py


def copy_step(src: Path, dst: Path, step: int) -> None:
    """The files of one checkpoint step, as a run stopped right after saving it would have left them."""
    dst.mkdir(parents=True)
    for path in src.glob(f"*{step:06d}.pt"):
        shutil.copy(path, dst / path.name)


def test_stop_and_resume_equals_uninterrupted_run(tmp_path):
    # Uniform timesteps and dropout here; the SIGKILL test in test_train.py runs the loss-second-moment sampler.
    cfg = tiny_cfg("trainer.save_interval=3", "trainer.schedule_sampler=uniform", "model.dropout=0.1",
                   "trainer.max_steps=6")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train.run(cfg, run_dir=str(straight))
    copy_step(straight, resumed, 3)
    train.run(cfg, run_dir=str(resumed))
    assert "RESUMING TRAINING AT STEP 3" in (resumed / "log.txt").read_text()
    assert_same_step(straight, resumed, 6)


def test_train_batches_seek_continues_the_stream_across_epochs():
    from bits_back_diffusion.data import build_dataset, train_batches

    dataset = build_dataset(tiny_cfg().data, "train")
    per_epoch = len(dataset) // 2  # rank 1 of 2
    batch = 7
    stream = train_batches(dataset, batch, rank=1, world_size=2, seed=5)
    first = [next(stream)[0] for _ in range(per_epoch // batch + 3)]  # crosses into the second epoch
    stream.close()
    for k in (1, per_epoch // batch, len(first) - 1):
        again = train_batches(dataset, batch, rank=1, world_size=2, seed=5)
        again.seek(k * batch)
        assert torch.equal(next(again)[0], first[k]) and again.position == (k + 1) * batch
        again.close()


# ---------------------------------------------------------------- the same on a toy, with a warmed-up sampler


class _NoisyToyDiffusion:
    """A loss that draws torch noise and depends on t, so RNG, sampler and data all matter."""

    num_timesteps = 4

    def training_losses(self, model, x, t, model_kwargs=None):
        noisy = x + 0.1 * torch.randn_like(x) * (1 + t[:, None].float())
        loss = ((model(noisy, t) - 1.0) ** 2).mean(dim=1) * (1 + t.float())
        return {"loss": loss}


class _SeekableStream:
    """Batches that depend on their position in the stream, with the TrainBatches resume protocol."""

    def __init__(self, batch_size: int = 6):
        self.batch_size = batch_size
        self.position = 0

    def seek(self, position: int) -> None:
        self.position = position

    def __next__(self):
        x = (torch.arange(self.batch_size * 4.0).reshape(self.batch_size, 4) + self.position) / 50
        self.position += self.batch_size
        return x, {}


def _toy_run(save_dir: Path, max_steps: int, sampler_cls) -> TrainLoop:
    torch.manual_seed(0)
    np.random.seed(0)
    diffusion = _NoisyToyDiffusion()
    logger.configure(str(save_dir), format_strs=["log"])
    try:
        loop = TrainLoop(
            model=_Toy(), diffusion=diffusion, data=_SeekableStream(), batch_size=6, microbatch=4, lr=0.05,
            ema_rate="0.5,0.9", log_interval=5, save_interval=7, resume_checkpoint=None, max_steps=max_steps,
            schedule_sampler=sampler_cls(diffusion), save_dir=str(save_dir), progress=False,
        )
        loop.run_loop()
    finally:
        logger.reset()
    return loop


@pytest.mark.parametrize("sampler_cls", [UniformSampler, LossSecondMomentResampler])
def test_toy_resume_is_bit_exact_with_a_warmed_up_sampler(tmp_path, sampler_cls):
    straight = _toy_run(tmp_path / "a", 20, sampler_cls)
    _toy_run(tmp_path / "b", 7, sampler_cls)
    resumed = _toy_run(tmp_path / "b", 20, sampler_cls)
    if sampler_cls is LossSecondMomentResampler:
        assert resumed.schedule_sampler._warmed_up()  # 4 steps x 10 losses, reached after step 7
    for p, q in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(p, q)
    assert_same_step(tmp_path / "a", tmp_path / "b", 20, rates=("0.5", "0.9"))


def test_old_checkpoint_without_trainer_state_resumes_with_a_warning(tmp_path):
    _toy_run(tmp_path, 7, UniformSampler)
    os.remove(tmp_path / "state000007.pt")
    with pytest.warns(UserWarning, match=r"no trainer state .*not bit-exact"):
        loop = _toy_run(tmp_path, 9, UniformSampler)
    assert loop.step == 9
    assert "trainer state: NOT FOUND" in (tmp_path / "log.txt").read_text()


# ---------------------------------------------------------------- damaged checkpoint files


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory) -> Path:
    """A tiny run with checkpoints at steps 2 and 4."""
    run_dir = tmp_path_factory.mktemp("four") / "run"
    train.run(tiny_cfg("trainer.max_steps=4"), run_dir=str(run_dir))
    return run_dir


@pytest.mark.parametrize("damaged", ["model000004.pt", "opt000004.pt", "ema_0.999_000004.pt", "state000004.pt"])
def test_truncated_newest_file_falls_back_to_the_newest_complete_step(four_steps, tmp_path, damaged, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(four_steps, run_dir)
    _truncate(run_dir / damaged)
    train.run(tiny_cfg("trainer.max_steps=3"), run_dir=str(run_dir))
    out = capsys.readouterr().out
    assert f"checkpoint {run_dir / damaged} is unreadable (truncated?)" in out
    assert "skipping checkpoint step 4" in out
    assert "does not fit this model" not in out
    log = (run_dir / "log.txt").read_text()
    assert "RESUMING TRAINING AT STEP 2" in log and f"SKIPPED step 4: checkpoint {run_dir / damaged}" in log
    assert (run_dir / "model000003.pt").exists()  # training went on from step 2


def test_no_complete_step_is_refused_and_nothing_is_overwritten(four_steps, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(four_steps, run_dir)
    _truncate(run_dir / "model000004.pt")
    _truncate(run_dir / "opt000002.pt")
    before = {p.name: p.read_bytes() for p in run_dir.glob("*.pt")}
    with pytest.raises(NoCompleteCheckpointError, match=r"(?s)No complete checkpoint step.*model000004.pt is unreadable "
                       r"\(truncated\?\).*opt000002.pt is unreadable \(truncated\?\).*new run dir"):
        train.run(tiny_cfg("trainer.max_steps=5"), run_dir=str(run_dir))
    assert {p.name: p.read_bytes() for p in run_dir.glob("*.pt")} == before


def test_truncated_explicit_resume_checkpoint_is_named(four_steps, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(four_steps, source)
    _truncate(source / "opt000002.pt")
    with pytest.raises(ValueError, match=r"opt000002.pt is unreadable \(truncated\?\)"):
        train.run(tiny_cfg(f"trainer.resume_checkpoint={source / 'model000002.pt'}"), run_dir=str(tmp_path / "new"))


@pytest.mark.mpi
def test_two_rank_resume_is_bit_exact(tmp_path):
    """Under mpiexec every rank's RNG state and data position are saved and restored."""

    def run(run_dir: Path, steps: int) -> None:
        args = [*mpiexec_command(2), sys.executable, str(REPO / "train.py"), *TINY, f"hydra.run.dir={run_dir}",
                f"trainer.max_steps={steps}", "trainer.save_interval=2", "model.dropout=0.1"]
        done = subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    run(tmp_path / "straight", 4)
    copy_step(tmp_path / "straight", tmp_path / "resumed", 2)
    run(tmp_path / "resumed", 4)
    assert "RESUMING TRAINING AT STEP 2" in (tmp_path / "resumed" / "log.txt").read_text()
    assert_same_step(tmp_path / "straight", tmp_path / "resumed", 4)
    assert len(load(tmp_path / "resumed" / "state000004.pt")["rng"]) == 2
