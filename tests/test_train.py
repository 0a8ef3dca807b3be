"""TrainLoop, train.py and dist_util: checkpoints, resume (also after SIGKILL), mpiexec, bad configs."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # train.py is a script at the repo root, not part of a package
    sys.path.insert(0, str(REPO))

import train  # noqa: E402
from helpers import mpiexec_command  # noqa: E402
from improved_diffusion import dist_util, fp16_util, logger  # noqa: E402
from improved_diffusion.script_util import create_model  # noqa: E402
from improved_diffusion.train_util import TrainLoop, find_resume_checkpoint  # noqa: E402

CONFIG_DIR = str(REPO / "config")

# A tiny UNet and a short process on the digits data: a step takes well under a second on a CPU.
TINY = [
    "+experiment=digits",
    "model.num_res_blocks=1",
    "model.dropout=0.0",
    "diffusion.steps=50",
    "diffusion.timestep_respacing=",
    "trainer.batch_size=8",
    "trainer.log_interval=1",
    "trainer.save_interval=2",
    "trainer.max_steps=3",
    "trainer.lr_anneal_steps=0",
    "wandb.mode=disabled",
]


def tiny_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=TINY + list(overrides))


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["WANDB_MODE"] = "offline"
    env["OMP_NUM_THREADS"] = "1"
    for var in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        env.pop(var, None)
    return env


def load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_identical(a, b, where: str = "") -> None:
    """Nested checkpoint contents equal bit for bit (tensors by value, dtype and shape)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and (a.dtype, a.shape) == (b.dtype, b.shape), where
        equal = torch.equal(a, b)
        assert equal, f"{where}: max abs diff {(a.double() - b.double()).abs().max().item()}"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_identical(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_step(dir_a: Path, dir_b: Path, step: int, rates=("0.999",)) -> None:
    """Model, EMA, optimizer and trainer state of `step` are bit-identical in two run dirs."""
    names = [f"model{step:06d}.pt", *(f"ema_{r}_{step:06d}.pt" for r in rates), f"opt{step:06d}.pt", f"state{step:06d}.pt"]
    for name in names:
        assert_identical(load(dir_a / name), load(dir_b / name), name)


# ---------------------------------------------------------------- train.py in-process


def test_three_steps_write_checkpoints_and_logs(tmp_path):
    run_dir = Path(train.run(tiny_cfg(), run_dir=str(tmp_path)))
    names = set(os.listdir(run_dir))
    for step in (2, 3):
        assert {f"model{step:06d}.pt", f"opt{step:06d}.pt", f"ema_0.999_{step:06d}.pt"} <= names
    assert not any(".tmp-" in n for n in names)

    state = load(run_dir / "model000003.pt")
    reference = create_model(**tiny_cfg().model).state_dict()
    assert list(state) == list(reference)  # unwrapped module: no "module." prefixes
    assert all(state[k].shape == reference[k].shape and state[k].dtype == torch.float32 for k in state)
    ema = load(run_dir / "ema_0.999_000003.pt")
    assert set(ema) == set(state)
    assert any(not torch.equal(ema[k], state[k]) for k in state)  # EMA lags the weights

    with open(run_dir / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(float(r["step"])) for r in rows] == [1, 2, 3]
    for key in ("loss", "grad_norm", "samples", "lr", "samples_per_sec"):
        assert key in rows[0], key
    assert any(k.startswith("loss_q") for k in rows[0])
    assert all(float(r["loss"]) > 0 for r in rows)
    assert "RESUMING" not in (run_dir / "log.txt").read_text()


def test_resume_restores_model_ema_optimizer_and_step(tmp_path):
    cfg = tiny_cfg()
    train.run(cfg, run_dir=str(tmp_path))
    saved_model = load(tmp_path / "model000003.pt")
    saved_ema = load(tmp_path / "ema_0.999_000003.pt")
    saved_opt = load(tmp_path / "opt000003.pt")

    from improved_diffusion.script_util import create_gaussian_diffusion

    logger.configure(str(tmp_path), format_strs=["log"])
    model = create_model(**cfg.model)
    loop = TrainLoop(
        model=model, diffusion=create_gaussian_diffusion(**cfg.diffusion), data=iter(()), batch_size=8,
        microbatch=-1, lr=1e-3, ema_rate=[0.999], log_interval=1, save_interval=10, resume_checkpoint=None,
        max_steps=5, save_dir=str(tmp_path), progress=False,
    )
    assert loop.step == 3
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), saved_model[name]), name
    for name, e in zip(loop.param_names, loop.ema_params[0]):
        assert torch.equal(e, saved_ema[name]), name
    opt_state = loop.opt.state_dict()
    assert opt_state["state"].keys() == saved_opt["state"].keys()
    for idx, st in saved_opt["state"].items():
        assert int(opt_state["state"][idx]["step"]) == int(st["step"]) == 3
        assert torch.equal(opt_state["state"][idx]["exp_avg"], st["exp_avg"])
        assert torch.equal(opt_state["state"][idx]["exp_avg_sq"], st["exp_avg_sq"])
    logger.reset()
    text = (tmp_path / "log.txt").read_text()
    assert "RESUMING TRAINING AT STEP 3" in text and "ema_0.999 <-" in text and "opt <-" in text

    # Continuing through train.py ends at the new limit, with the step count carried on.
    train.run(tiny_cfg("trainer.max_steps=5"), run_dir=str(tmp_path))
    assert (tmp_path / "model000005.pt").exists() and not (tmp_path / "model000006.pt").exists()
    assert find_resume_checkpoint(str(tmp_path)) == 5


def test_incomplete_newest_checkpoint_is_skipped(tmp_path):
    train.run(tiny_cfg(), run_dir=str(tmp_path))
    # What a SIGKILL in the middle of saving step 4 leaves: EMA and optimizer, no model, a temp file.
    shutil.copy(tmp_path / "opt000003.pt", tmp_path / "opt000004.pt")
    shutil.copy(tmp_path / "ema_0.999_000003.pt", tmp_path / "ema_0.999_000004.pt")
    (tmp_path / ".model000004.pt.tmp-123").write_bytes(b"torn")
    assert find_resume_checkpoint(str(tmp_path)) == 3
    train.run(tiny_cfg("trainer.max_steps=4"), run_dir=str(tmp_path))
    assert "RESUMING TRAINING AT STEP 3" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "model000004.pt").exists()
    assert not (tmp_path / ".model000004.pt.tmp-123").exists()


def test_resume_from_explicit_checkpoint_file(tmp_path):
    first = tmp_path / "first"
    train.run(tiny_cfg(), run_dir=str(first))
    second = tmp_path / "second"
    train.run(tiny_cfg(f"trainer.resume_checkpoint={first / 'model000002.pt'}"), run_dir=str(second))
    assert "RESUMING TRAINING AT STEP 2" in (second / "log.txt").read_text()
    assert (second / "model000003.pt").exists() and not (second / "model000002.pt").exists()


def test_resuming_with_another_model_is_a_clear_error(tmp_path):
    train.run(tiny_cfg("trainer.max_steps=1"), run_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"(?s)model000001.pt does not fit this model.*model\.\* settings"):
        train.run(tiny_cfg("trainer.max_steps=2", "model.num_channels=64"), run_dir=str(tmp_path))


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_non_finite_loss_stops_training_clearly(tmp_path):
    # A 20-step linear schedule ends with beta = 1: the loss is not finite.
    with pytest.raises(FloatingPointError, match=r"Training loss is (nan|inf) at step \d+\. Check the diffusion settings"):
        train.run(tiny_cfg("diffusion.steps=20", "diffusion.noise_schedule=linear"), run_dir=str(tmp_path))


def test_cpu_fp16_request_warns_and_trains_in_float32(tmp_path):
    with pytest.warns(UserWarning, match="needs a GPU"):
        train.run(tiny_cfg("trainer.use_fp16=true", "trainer.max_steps=1"), run_dir=str(tmp_path))
    assert all(v.dtype == torch.float32 for v in load(tmp_path / "model000001.pt").values())


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.schedule_sampler=importance", "Unknown trainer.schedule_sampler 'importance'"),
        ("diffusion.noise_schedule=sigmoid", "noise schedule 'sigmoid'"),
        ("trainer.microbatch=0", "trainer.microbatch must be -1"),
        ("trainer.ema_rate=[1.5]", "EMA rates must lie strictly between 0 and 1"),
        ("trainer.batch_size=0", "trainer.batch_size must be a positive integer"),
    ],
)
def test_bad_config_is_a_clear_error(tmp_path, override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        train.run(tiny_cfg(override), run_dir=str(tmp_path))


def test_batch_not_divisible_by_ranks_is_a_clear_error():
    with pytest.raises(ValueError, match=r"batch_size=10 cannot be split evenly over 4 ranks.*multiple of 4"):
        train.check_trainer_config(tiny_cfg("trainer.batch_size=10").trainer, world_size=4)
    assert train.check_trainer_config(tiny_cfg("trainer.batch_size=12").trainer, world_size=4) == 3


# ---------------------------------------------------------------- TrainLoop mechanics on a toy problem


class _Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, t, **kwargs):
        return self.lin(x)


class _ToyDiffusion:
    """Loss that does not depend on t, so microbatch splits must not change the gradient."""

    num_timesteps = 8

    def training_losses(self, model, x, t, model_kwargs=None, noise=None):
        loss = ((model(x, t) - 1.0) ** 2).mean(dim=1)
        return {"loss": loss, "mse": loss}


def _toy_loop(tmp_path, microbatch, **kwargs):
    torch.manual_seed(0)
    model = _Toy()
    batches = iter([(torch.arange(24.0).reshape(6, 4) / 10, {})] * 10)
    logger.configure(str(tmp_path), format_strs=["csv"])
    args = dict(
        model=model, diffusion=_ToyDiffusion(), data=batches, batch_size=6, microbatch=microbatch, lr=0.1,
        ema_rate="0.5,0.9", log_interval=1, save_interval=100, resume_checkpoint=None, max_steps=1,
        save_dir=str(tmp_path), progress=False,
    )
    args.update(kwargs)
    loop = TrainLoop(**args)
    loop.run_loop()
    logger.reset()
    return loop


def test_microbatches_give_the_full_batch_update(tmp_path):
    full = _toy_loop(tmp_path / "a", microbatch=-1)
    micro = _toy_loop(tmp_path / "b", microbatch=4)  # uneven: 4 + 2
    for p, q in zip(full.model.parameters(), micro.model.parameters()):
        torch.testing.assert_close(p, q)
    assert {"model000001.pt", "ema_0.5_000001.pt", "ema_0.9_000001.pt", "opt000001.pt"} <= set(os.listdir(tmp_path / "a"))


def test_lr_anneals_linearly_and_stops_training(tmp_path):
    _toy_loop(tmp_path, microbatch=-1, max_steps=0, lr_anneal_steps=4)
    with open(tmp_path / "progress.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.1, 0.075, 0.05, 0.025])
    assert find_resume_checkpoint(str(tmp_path)) == 4


def test_ema_follows_its_rate(tmp_path):
    torch.manual_seed(0)
    init = [p.detach().clone() for p in _Toy().parameters()]
    loop = _toy_loop(tmp_path, microbatch=-1)
    for rate, ema in zip(loop.ema_rate, loop.ema_params):
        for e, p0, p1 in zip(ema, init, loop.model.parameters()):
            torch.testing.assert_close(e, rate * p0 + (1 - rate) * p1.detach())


class _HalfToy(_Toy):
    """Toy model with improved-diffusion's fp16 switch: float16 weights, float32 output."""

    def convert_to_fp16(self):
        self.lin.half()

    def forward(self, x, t, **kwargs):
        return self.lin(x.to(self.lin.weight.dtype)).float()


class _ScaledDiffusion(_ToyDiffusion):
    """Toy loss times `scale`; a huge scale makes the scaled fp16 gradients overflow."""

    def __init__(self, scale):
        self.scale = scale

    def training_losses(self, model, x, t, model_kwargs=None, noise=None):
        return {"loss": super().training_losses(model, x, t)["loss"] * self.scale}


def test_fp16_loss_scaling_skips_overflowing_steps(tmp_path, monkeypatch):
    """The GPU fp16 path, run on the CPU: float32 masters, loss-scale growth, overflow skipped."""
    import improved_diffusion.train_util as train_util

    monkeypatch.setattr(train_util, "FP16_DEVICE_TYPES", ("cuda", "cpu"))
    torch.manual_seed(0)
    model = _HalfToy()
    data = iter([(torch.ones(4, 4), {})] * 10)
    logger.configure(str(tmp_path), format_strs=["csv"])
    loop = TrainLoop(
        model=model, diffusion=_ScaledDiffusion(1e-6), data=data, batch_size=4, microbatch=-1, lr=0.01,
        ema_rate=0.9, log_interval=1, save_interval=100, resume_checkpoint=None, use_fp16=True,
        fp16_scale_growth=0.5, max_steps=1, save_dir=str(tmp_path), progress=False,
    )
    assert model.lin.weight.dtype == torch.float16
    assert all(m.dtype == torch.float32 for m in loop.master_params)
    loop.run_loop()
    assert loop.step == 1 and loop.lg_loss_scale == train_util.INITIAL_LOG_LOSS_SCALE + 0.5
    torch.testing.assert_close(model.lin.weight.float(), loop.master_params[0].detach(), atol=1e-3, rtol=1e-3)
    assert loop.master_params[0].grad.abs().max() < 1  # unscaled before the update

    before = [m.detach().clone() for m in loop.master_params]
    loop.diffusion = _ScaledDiffusion(1e30)  # scaled gradients overflow float16
    loop.run_step(torch.ones(4, 4), {})
    assert loop.step == 1 and loop.lg_loss_scale == train_util.INITIAL_LOG_LOSS_SCALE - 0.5
    assert all(torch.equal(b, m) for b, m in zip(before, loop.master_params))
    loop.save()
    logger.reset()
    saved = load(tmp_path / "model000001.pt")
    assert saved["lin.weight"].dtype == torch.float32 and torch.equal(saved["lin.weight"], before[0])


# ---------------------------------------------------------------- fp16 helpers and dist_util


def test_master_params_round_trip_in_both_layouts():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 3))
    model[0].apply(fp16_util.convert_module_to_f16)
    assert model[0].weight.dtype == torch.float16 and model[1].weight.dtype == torch.float32
    params = list(model.parameters())
    for p in params:
        p.grad = torch.full_like(p, 0.5)
    for flat in (True, False):
        master = fp16_util.make_master_params(params, flat=flat)
        assert all(m.dtype == torch.float32 for m in master)
        assert len(master) == (1 if flat else len(params))
        fp16_util.model_grads_to_master_grads(params, master)
        assert all(torch.all(m.grad == 0.5) for m in master)
        with torch.no_grad():
            for m in master:
                m.add_(1.0)
        before = [p.detach().float().clone() for p in params]
        fp16_util.master_params_to_model_params(params, master)
        for p, b in zip(params, before):
            torch.testing.assert_close(p.detach().float(), b + 1.0, atol=1e-2, rtol=1e-3)
        shaped = fp16_util.unflatten_master_params(params, master)
        assert [s.shape for s in shaped] == [p.shape for p in params]
    fp16_util.zero_grad(params)
    assert all(torch.all(p.grad == 0) for p in params)
    model[0].apply(fp16_util.convert_module_to_f32)
    assert model[0].weight.dtype == torch.float32


def test_slurm_nodelist_parsing(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol: use the built-in parser
    assert dist_util.expand_slurm_nodelist("node[01-03,07],gpu5") == ["node01", "node02", "node03", "node07", "gpu5"]
    assert dist_util.expand_slurm_nodelist("localhost") == ["localhost"]


def test_helpers_behave_as_one_process_and_missing_checkpoint_is_clear(tmp_path):
    assert dist_util.broadcast_object({"a": 1}) == {"a": 1}
    assert dist_util.all_gather_object(3) == [3] * dist_util.get_world_size()
    assert dist_util.dev().type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        dist_util.load_state_dict(str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="Unknown torch.distributed backend 'bogus'"):
        dist_util.setup_dist("bogus")


SLURM_SCRIPT = """
import json, sys
from improved_diffusion import dist_util
dist_util.setup_dist()
print(json.dumps({"launcher": dist_util.launcher(), "rank": dist_util.get_rank(),
                  "world": dist_util.get_world_size(), "local": dist_util.get_local_rank(),
                  "gathered": dist_util.all_gather_object(dist_util.get_rank() * 10)}))
"""


def _launcher_env(launcher: str, rank: int, job_id: str) -> dict[str, str]:
    if launcher == "slurm":
        return dict(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                    SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID=job_id, PATH="/usr/bin:/bin")
    return dict(SUBMITIT_LOCAL_GLOBALID=str(rank), SUBMITIT_LOCAL_NTASKS="2", SUBMITIT_LOCAL_LOCALID=str(rank),
                SUBMITIT_LOCAL_JOB_ID=job_id)


@pytest.mark.parametrize("launcher", ["slurm", "submitit-local"])
def test_launcher_variables_start_a_two_task_group(tmp_path, launcher):
    """Two processes that only see SLURM's (or submitit's local) task variables find each other."""
    job_id = str(int(time.time() * 1000) % 100000)
    procs = []
    for rank in range(2):
        env = subprocess_env()
        env.update(_launcher_env(launcher, rank, job_id))
        env.pop("MASTER_PORT", None)
        env.pop("MASTER_ADDR", None)
        procs.append(subprocess.Popen([sys.executable, "-c", SLURM_SCRIPT], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=REPO))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    results = sorted((json.loads(out.strip().splitlines()[-1]) for out, _ in outs), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["launcher"] == launcher and r["world"] == 2 and r["gathered"] == [0, 10] for r in results)


# ---------------------------------------------------------------- real processes


def _cli(run_dir: Path, *overrides: str) -> list[str]:
    return [sys.executable, str(REPO / "train.py"), *TINY, f"hydra.run.dir={run_dir}", *overrides]


def test_sigkill_then_rerun_reaches_the_same_final_step(tmp_path):
    run_dir = tmp_path / "run"
    args = _cli(run_dir, "trainer.max_steps=12", "trainer.save_interval=3", "trainer.log_interval=3")
    proc = subprocess.Popen(args, cwd=REPO, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    try:
        while find_resume_checkpoint(str(run_dir)) is None:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "no checkpoint within 180 s"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed_at = find_resume_checkpoint(str(run_dir))
    assert killed_at is not None and killed_at < 12

    done = subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_at = int(done.stdout.split("RESUMING TRAINING AT STEP ")[1].split()[0])
    assert resumed_at >= killed_at
    assert find_resume_checkpoint(str(run_dir)) == 12
    assert not (run_dir / "model000013.pt").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists()

    # The killed and resumed run ends bit-identical to an uninterrupted one (same thread count).
    straight = tmp_path / "straight"
    args[args.index(f"hydra.run.dir={run_dir}")] = f"hydra.run.dir={straight}"
    done = subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_step(straight, run_dir, 12)


MPI_SCRIPT = """
import hashlib, json, os, sys
import torch
import train
from improved_diffusion import dist_util
from improved_diffusion.train_util import TrainLoop

out_dir = sys.argv.pop(1)
original = TrainLoop.run_loop

def run_and_record(self):
    step = original(self)
    h = hashlib.sha256()
    for p in self.model.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    with open(os.path.join(out_dir, f"rank{dist_util.get_rank()}.json"), "w") as f:
        json.dump({"step": step, "hash": h.hexdigest(), "world": dist_util.get_world_size(),
                   "run_dir": self.save_dir, "ddp": type(self.ddp_model).__name__,
                   "sampler": hashlib.sha256(self.schedule_sampler._loss_history.tobytes()).hexdigest(),
                   "sampler_count": int(self.schedule_sampler._loss_counts.sum())}, f)
    return step

TrainLoop.run_loop = run_and_record
# Imported (not run as a script), train.main needs to be told where config/ is.
sys.argv[1:1] = ["--config-path", os.path.join(os.path.dirname(os.path.abspath(train.__file__)), "config")]
train.main()
"""


@pytest.mark.mpi
def test_mpiexec_two_ranks_train_identical_parameters(tmp_path):
    script = tmp_path / "mpi_train.py"
    script.write_text(textwrap.dedent(MPI_SCRIPT))
    run_dir = tmp_path / "run"
    args = [*mpiexec_command(2), sys.executable, str(script), str(tmp_path), *TINY, f"hydra.run.dir={run_dir}",
            "trainer.max_steps=2", "trainer.save_interval=2", "trainer.schedule_sampler=loss-second-moment"]
    done = subprocess.run(args, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 and r["step"] == 2 and r["ddp"] == "DistributedDataParallel" for r in ranks)
    assert ranks[0]["run_dir"] == ranks[1]["run_dir"] == str(run_dir)
    assert ranks[0]["hash"] == ranks[1]["hash"]
    # The loss-second-moment history is gathered from both ranks: identical, 2 steps x 8 losses.
    assert ranks[0]["sampler"] == ranks[1]["sampler"] and ranks[0]["sampler_count"] == 16
    # ... and it is what rank 0 saved (the global batch 8 was split 2 x 4).
    saved = load(run_dir / "model000002.pt")
    h = hashlib.sha256()
    for name, _ in create_model(**tiny_cfg().model).named_parameters():
        h.update(saved[name].numpy().tobytes())
    assert h.hexdigest() == ranks[0]["hash"]
    assert "batch 8 = 2 x 4" in (run_dir / "log.txt").read_text()


# ---------------------------------------------------------------- GPU training options, checked on the CPU


def _old_grad_norm(params) -> float:
    """The per-parameter computation the fused one replaced (one host sync per parameter)."""
    return math.sqrt(sum(float((p.grad.float() ** 2).sum()) for p in params if p.grad is not None))


def test_fused_grad_norm_equals_the_per_parameter_sum():
    torch.manual_seed(0)
    params = [nn.Parameter(torch.zeros(shape)) for shape in [(3, 5), (7,), (2, 2, 3)]]
    for p in params:
        p.grad = torch.randn_like(p) * 100
    assert float(fp16_util.global_grad_norm(params)) == pytest.approx(_old_grad_norm(params), rel=1e-6)
    halves = [nn.Parameter(torch.zeros(4, dtype=torch.float16)) for _ in range(2)]
    halves[0].grad = torch.full((4,), 60000.0, dtype=torch.float16)  # finite, but its square overflows float16
    halves[1].grad = torch.ones(4, dtype=torch.float16)
    assert float(fp16_util.global_grad_norm(halves)) == pytest.approx(_old_grad_norm(halves), rel=1e-6)
    halves[1].grad[2] = float("inf")
    assert not math.isfinite(float(fp16_util.global_grad_norm(halves)))


def test_logged_grad_norm_equals_the_old_computation(tmp_path):
    loop = _toy_loop(tmp_path, microbatch=-1)  # one step; the gradients are still on the parameters
    with open(tmp_path / "progress.csv", newline="") as f:
        logged = float(next(csv.DictReader(f))["grad_norm"])
    assert logged == pytest.approx(_old_grad_norm(loop.master_params), rel=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (("trainer.use_fp16=true", "trainer.bf16_autocast=true"), "use_fp16 and trainer.bf16_autocast are both on"),
        (("trainer.allow_tf32=maybe",), "trainer.allow_tf32 must be true or false, got 'maybe'"),
        (("trainer.bf16_autocast=1",), "trainer.bf16_autocast must be true or false, got 1"),
    ],
)
def test_bad_precision_options_are_refused(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        train.run(tiny_cfg(*overrides), run_dir=str(tmp_path))


def test_precision_options_default_off_and_train_on_the_cpu(tmp_path):
    trainer = tiny_cfg().trainer
    assert trainer.allow_tf32 is False and trainer.bf16_autocast is False
    with pytest.warns(UserWarning) as caught:
        train.run(tiny_cfg("trainer.allow_tf32=true", "trainer.bf16_autocast=true", "trainer.max_steps=1"),
                  run_dir=str(tmp_path))
    messages = " ".join(str(w.message) for w in caught)
    assert "allow_tf32=True has no effect on the CPU" in messages and "bf16_autocast=True on the CPU" in messages
    assert not torch.backends.cuda.matmul.allow_tf32  # never switched on where it does nothing
    with open(tmp_path / "progress.csv", newline="") as f:
        row = next(csv.DictReader(f))
    assert math.isfinite(float(row["loss"])) and math.isfinite(float(row["grad_norm"]))
    assert all(v.dtype == torch.float32 for v in load(tmp_path / "model000001.pt").values())


def test_pinned_batches_need_cuda():
    from bits_back_diffusion.data import build_dataset, train_batches

    ds = build_dataset(tiny_cfg().data, "train")
    if torch.cuda.is_available():
        x, _ = next(train_batches(ds, 4, pin_memory=True))
        assert x.is_pinned()
    else:
        with pytest.raises(ValueError, match="pin_memory=True needs CUDA"):
            train_batches(ds, 4, pin_memory=True)
