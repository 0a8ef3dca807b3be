"""The diffusion training loop: AdamW, EMA, microbatches, fp16 loss scaling, DDP, checkpoints.

Step counting: `step` is the number of optimizer updates done. Checkpoint files, their atomic
writes and the choice of the step to resume from live in `train_checkpoints`. A new TrainLoop in
the same directory resumes from the newest complete step; with the trainer state saved next to
the weights (RNG states of every rank, the data position, the timestep sampler, the fp16 loss
scale) the resumed run is bit-identical to an uninterrupted one on the same hardware and layout.
Training stops when `max_steps` (or `lr_anneal_steps`) updates have been done in total, so an
interrupted and resumed run ends at the same step as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from contextlib import nullcontext
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim import AdamW

from . import dist_util, logger
from .fp16_util import (
    global_grad_norm,
    make_master_params,
    master_params_to_model_params,
    model_grads_to_master_grads,
    zero_grad,
)
from .resample import LossAwareSampler, ScheduleSampler, UniformSampler
from .rng_state import capture_rng_state, restore_rng_state
from .train_checkpoints import (  # noqa: F401 - re-exported: callers import these from train_util
    NoCompleteCheckpointError,
    ResumePoint,
    atomic_save,
    checkpoint_paths,
    find_resume_checkpoint,
    newest_complete_step,
    parse_resume_step_from_filename,
    read_step,
    remove_stale_tmp_files,
)

# Starting log2 loss scale for fp16 (improved-diffusion's value; it adapts from there).
INITIAL_LOG_LOSS_SCALE = 20.0
# Device types on which use_fp16 is honoured (half-precision training is slow or unsupported elsewhere).
FP16_DEVICE_TYPES = ("cuda",)


def parse_ema_rates(ema_rate: Union[float, str, Sequence[float]]) -> list[float]:
    """EMA rates from a float, a comma-separated string or a list; each must lie in (0, 1)."""
    if isinstance(ema_rate, (int, float)):
        rates = [float(ema_rate)]
    elif isinstance(ema_rate, str):
        rates = [float(x) for x in ema_rate.split(",") if x.strip()]
    else:
        rates = [float(x) for x in ema_rate]
    bad = [r for r in rates if not 0.0 < r < 1.0]
    if bad:
        raise ValueError(f"EMA rates must lie strictly between 0 and 1, got {bad} (e.g. trainer.ema_rate=[0.9999]).")
    return rates


class TrainLoop:
    """Trains `model` on `diffusion.training_losses` with batches drawn from `data`.

    batch_size is per rank; microbatch <= 0 means one microbatch per batch. Gradients of
    microbatches are weighted by their share of the batch, so the update equals the full-batch
    mean gradient whatever the microbatch size. A `data` iterator with ``position`` and
    ``seek(position)`` (such as `bits_back_diffusion.data.TrainBatches`) is moved to where the
    resumed checkpoint left off. `allow_tf32` and `bf16_autocast` trade exactness for speed on a
    GPU; they are training-only options (coding needs bit-identical model outputs).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        diffusion: Any,
        data: Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]],
        batch_size: int,
        microbatch: int,
        lr: float,
        ema_rate: Union[float, str, Sequence[float]],
        log_interval: int,
        save_interval: int,
        resume_checkpoint: Optional[str],
        use_fp16: bool = False,
        fp16_scale_growth: float = 1e-3,
        schedule_sampler: Optional[ScheduleSampler] = None,
        weight_decay: float = 0.0,
        lr_anneal_steps: int = 0,
        max_steps: Optional[int] = 0,
        save_dir: Optional[str] = None,
        progress: bool = True,
        allow_tf32: bool = False,
        bf16_autocast: bool = False,
    ):
        _check_positive(batch_size=batch_size, log_interval=log_interval, save_interval=save_interval)
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
        if (lr_anneal_steps or 0) < 0 or (max_steps or 0) < 0:
            raise ValueError("lr_anneal_steps and max_steps must be >= 0 (0 or null means no limit).")
        _check_bool(use_fp16=use_fp16, allow_tf32=allow_tf32, bf16_autocast=bf16_autocast)
        if use_fp16 and bf16_autocast:
            raise ValueError(
                "trainer.use_fp16 and trainer.bf16_autocast are both on; choose one (bf16 autocast needs no loss scaling)."
            )

        self.model = model
        self.diffusion = diffusion
        self.data = data
        self.batch_size = int(batch_size)
        self.microbatch = int(microbatch) if microbatch and microbatch > 0 else self.batch_size
        self.lr = float(lr)
        self.ema_rate = parse_ema_rates(ema_rate)
        self.log_interval = int(log_interval)
        self.save_interval = int(save_interval)
        self.resume_checkpoint = resume_checkpoint or None
        self.fp16_scale_growth = float(fp16_scale_growth)
        self.schedule_sampler = schedule_sampler or UniformSampler(diffusion)
        self.weight_decay = float(weight_decay)
        self.lr_anneal_steps = int(lr_anneal_steps or 0)
        self.max_steps = int(max_steps or 0)
        self.save_dir = save_dir or logger.get_dir()
        if not self.save_dir:
            raise ValueError("TrainLoop needs save_dir (or a logger configured with a directory).")
        self.progress = progress

        self.rank = dist_util.get_rank()
        self.world_size = dist_util.get_world_size()
        self.global_batch = self.batch_size * self.world_size
        self.device = next(model.parameters()).device
        self._setup_precision(bool(use_fp16), bool(allow_tf32), bool(bf16_autocast))
        self.lg_loss_scale = INITIAL_LOG_LOSS_SCALE
        self.batches_drawn = 0

        self.step = 0
        if self.rank == 0:
            os.makedirs(self.save_dir, exist_ok=True)
            remove_stale_tmp_files(self.save_dir)
        dist_util.barrier()

        self.param_names = [name for name, _ in model.named_parameters()]
        self.model_params = list(model.parameters())
        point = self._find_resume_point()
        loaded = self._load_resume_point(point) if point is not None else {}
        dist_util.sync_params(self.model.parameters())
        dist_util.sync_params(self.model.buffers())

        if self.use_fp16:
            self.master_params = make_master_params(self.model_params, flat=False)
            self.model.convert_to_fp16()
        else:
            self.master_params = self.model_params
        self.opt = AdamW(self.master_params, lr=self.lr, weight_decay=self.weight_decay)
        if loaded.get("opt") is not None:
            try:
                self.opt.load_state_dict(loaded["opt"])
            except (ValueError, KeyError) as exc:
                raise ValueError(
                    f"Optimizer state of step {self.step} in {self.save_dir} does not fit this model ({exc}); "
                    "it was written for another model or parameter layout."
                ) from None
        self.ema_params = []
        for rate in self.ema_rate:
            state = loaded.get(f"ema_{rate}")
            if state is not None:
                self.ema_params.append([state[n].to(self.device, torch.float32).clone() for n in self.param_names])
            else:
                self.ema_params.append([p.detach().float().clone() for p in self.master_params])

        if self.world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model: nn.Module = DDP(
                self.model,
                device_ids=ids,
                output_device=ids[0] if ids else None,
                bucket_cap_mb=128,
                find_unused_parameters=False,
            )
        else:
            self.ddp_model = self.model
        self._last_saved = self.step
        self._tic = time.time()
        self._tic_step = self.step
        if point is not None:
            # Last: nothing after this may draw random numbers before the first resumed step.
            self._restore_trainer_state(loaded.get("state"), loaded.get("sampler"), point)

    def _setup_precision(self, use_fp16: bool, allow_tf32: bool, bf16_autocast: bool) -> None:
        """fp16 with loss scaling, bf16 autocast, TF32: speed options, honoured on a GPU only (bf16 also on CPU)."""
        self.use_fp16 = use_fp16
        if self.use_fp16 and self.device.type not in FP16_DEVICE_TYPES:
            _warn("use_fp16=True needs a GPU; training in float32 on the CPU instead.")
            self.use_fp16 = False
        if self.use_fp16 and not hasattr(self.model, "convert_to_fp16"):
            raise ValueError(f"use_fp16=True needs a model with convert_to_fp16(); {type(self.model).__name__} has none.")
        self.bf16_autocast = bf16_autocast
        if self.bf16_autocast and self.device.type != "cuda":
            _warn("bf16_autocast=True on the CPU: supported, but usually slower than float32 there.")
        self.allow_tf32 = allow_tf32
        if self.allow_tf32:
            if self.device.type == "cuda":
                # Process-wide switches: a training process never codes, where TF32 would break decoding.
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True
            else:
                _warn("allow_tf32=True has no effect on the CPU (TF32 is a GPU tensor-core format).")

    # ------------------------------------------------------------------ checkpoints
    def _find_resume_point(self) -> Optional[ResumePoint]:
        """The newest complete step of save_dir, else the resume_checkpoint file's step, else None."""
        point = newest_complete_step(self.save_dir, self.ema_rate)
        if point is not None or not self.resume_checkpoint:
            return point
        if not os.path.isfile(self.resume_checkpoint):
            raise FileNotFoundError(
                f"resume_checkpoint {self.resume_checkpoint} does not exist; give the path of a model<step>.pt file."
            )
        step = parse_resume_step_from_filename(self.resume_checkpoint)
        paths = checkpoint_paths(os.path.dirname(os.path.abspath(self.resume_checkpoint)), step, self.ema_rate)
        paths["model"] = self.resume_checkpoint
        loaded, damaged = read_step(paths, why="trainer.resume_checkpoint")
        if damaged:
            raise ValueError("\n".join(str(exc) for exc in damaged) + "\nGive trainer.resume_checkpoint a complete checkpoint.")
        return ResumePoint(step, paths, loaded)

    def _load_resume_point(self, point: ResumePoint) -> dict[str, Any]:
        """Put the step's weights into the model; returns the other files' contents, checked."""
        try:
            self.model.load_state_dict(_strip_module_prefix(point.loaded["model"]))
        except (RuntimeError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"Checkpoint {point.paths['model']} does not fit this model: {str(exc)[:500]}\n"
                "Resume with the model.* settings of the run that wrote it (see its .hydra/config.yaml), "
                "or train in a new run dir."
            ) from None
        self.step = point.step
        loaded: dict[str, Any] = {}
        report = [f"model <- {point.paths['model']}"]
        for key, path in point.paths.items():
            if key == "model":
                continue
            value = point.loaded.get(key)
            if value is not None:
                if key.startswith("ema_"):
                    value = _strip_module_prefix(value)
                    missing = [n for n in self.param_names if n not in value]
                    if missing:
                        raise ValueError(f"EMA checkpoint {path} lacks parameters {missing[:5]}; it belongs to another model.")
                loaded[key] = value
                report.append(f"{key} <- {path}")
            elif key == "state":
                report.append(f"trainer state: NOT FOUND ({path}); this resume is NOT bit-exact")
            elif key != "sampler":
                report.append(f"{key}: NOT FOUND ({path}), starting it fresh")
        banner = "=" * 72
        logger.log(banner)
        logger.log(f"RESUMING TRAINING AT STEP {point.step} ({point.step * self.global_batch} samples seen)")
        for line in point.skipped:
            logger.log(f"  SKIPPED {line}")
        for line in report:
            logger.log(f"  {line}")
        logger.log(banner)
        return loaded

    def _trainer_state(self) -> dict[str, Any]:
        """What a bit-exact resume needs besides weights and optimizer, as weights-only-loadable values.

        Collective: every rank contributes its RNG states."""
        sampler = None
        if hasattr(self.schedule_sampler, "state_dict"):
            sampler = {k: torch.from_numpy(np.asarray(v)) for k, v in self.schedule_sampler.state_dict().items()}
        position = getattr(self.data, "position", None)
        return {
            "format": 1,
            "step": self.step,
            "world_size": self.world_size,
            "batch_size": self.batch_size,
            "batches_drawn": self.batches_drawn,
            "data_position": int(position) if position is not None else self.batches_drawn * self.batch_size,
            "lg_loss_scale": float(self.lg_loss_scale),
            "sampler": sampler,
            "rng": dist_util.all_gather_object(capture_rng_state(self.device)),
        }

    def _restore_trainer_state(self, state: Optional[dict[str, Any]], legacy_sampler: Any, point: ResumePoint) -> None:
        """Continue the sampler, loss scale, data stream and RNGs where the checkpoint left them."""
        sampler_state = state.get("sampler") if state is not None else legacy_sampler
        if sampler_state is not None and hasattr(self.schedule_sampler, "load_state_dict"):
            self.schedule_sampler.load_state_dict({k: v.numpy() for k, v in sampler_state.items()})
        if state is None:
            _warn(
                f"Checkpoint step {point.step} has no trainer state ({point.paths['state']}; written by an older "
                "version?): RNG states and the data position start afresh, so this resume is not bit-exact."
            )
            return
        if int(state.get("step", -1)) != point.step:
            raise ValueError(f"{point.paths['state']} is the trainer state of step {state.get('step')}, not {point.step}.")
        self.lg_loss_scale = float(state["lg_loss_scale"])
        self.batches_drawn = int(state["batches_drawn"])
        same_layout = int(state["world_size"]) == self.world_size and int(state["batch_size"]) == self.batch_size
        if same_layout:
            position = int(state["data_position"])
        else:
            position = int(state["data_position"]) * int(state["world_size"]) // self.world_size
            _warn(
                f"Resuming with {self.world_size} ranks x batch {self.batch_size} a run saved with "
                f"{state['world_size']} x {state['batch_size']}: the data order and random numbers cannot continue "
                "exactly, so this resume is not bit-exact."
            )
        if hasattr(self.data, "seek"):
            self.data.seek(position)
        elif position:
            _warn("The data iterator has no seek(): the resumed run restarts its data stream, so it is not bit-exact.")
        if same_layout:
            restore_rng_state(state["rng"][self.rank], self.device)

    def _params_to_state_dict(self, params: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        for name, value in zip(self.param_names, params):
            state[name] = value.detach().float().cpu().clone()
        return state

    def save(self) -> None:
        """Write the checkpoint of the current step (rank 0), model file last; all ranks wait."""
        trainer_state = self._trainer_state()
        if self.rank == 0:
            paths = checkpoint_paths(self.save_dir, self.step, self.ema_rate)
            for rate, params in zip(self.ema_rate, self.ema_params):
                atomic_save(self._params_to_state_dict(params), paths[f"ema_{rate}"])
            atomic_save(self.opt.state_dict(), paths["opt"])
            atomic_save(trainer_state, paths["state"])
            atomic_save(self._params_to_state_dict(self.master_params), paths["model"])
            logger.log(f"saved checkpoint at step {self.step} to {self.save_dir}")
        self._last_saved = self.step
        dist_util.barrier()

    # ------------------------------------------------------------------ training
    def _done(self) -> bool:
        limits = [n for n in (self.max_steps, self.lr_anneal_steps) if n]
        return bool(limits) and self.step >= min(limits)

    def run_loop(self) -> int:
        """Train until max_steps / lr_anneal_steps (forever if both are 0); returns the final step."""
        total = min([n for n in (self.max_steps, self.lr_anneal_steps) if n], default=None)
        bar = None
        if self.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        try:
            while not self._done():
                batch, cond = next(self.data)
                self.batches_drawn += 1
                before = self.step
                self.run_step(batch, cond)
                if self.step == before:
                    continue  # fp16 overflow: the update was skipped
                if bar is not None:
                    bar.update(1)
                if self.step % self.log_interval == 0:
                    self._log_throughput()
                    kvs = logger.dumpkvs()
                    if bar is not None and "loss" in kvs:
                        bar.set_postfix(loss=f"{kvs['loss']:.4g}")
                if self.step % self.save_interval == 0:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        if self._last_saved != self.step:
            self.save()
        return self.step

    def run_step(self, batch: torch.Tensor, cond: dict[str, torch.Tensor]) -> None:
        """One optimizer update (skipped, with a smaller loss scale, if fp16 gradients overflow)."""
        self.forward_backward(batch, cond)
        took_step = self.optimize_fp16() if self.use_fp16 else self.optimize_normal()
        if took_step:
            self.step += 1
        self.log_step()

    def forward_backward(self, batch: torch.Tensor, cond: dict[str, torch.Tensor]) -> None:
        zero_grad(self.model_params)
        n = batch.shape[0]
        if n == 0:
            raise ValueError("The data iterator yielded an empty batch.")
        # One asynchronous copy per batch (the loader pins host memory on CUDA); microbatches are views.
        batch = batch.to(self.device, non_blocking=True)
        cond = {k: v.to(self.device, non_blocking=True) for k, v in cond.items()}
        autocast = (
            torch.autocast(device_type=self.device.type, dtype=torch.bfloat16) if self.bf16_autocast else nullcontext()
        )
        for i in range(0, n, self.microbatch):
            micro = batch[i : i + self.microbatch]
            micro_cond = {k: v[i : i + self.microbatch] for k, v in cond.items()}
            last = i + self.microbatch >= n
            t, weights = self.schedule_sampler.sample(micro.shape[0], self.device)

            def compute() -> dict[str, torch.Tensor]:
                with autocast:
                    losses = self.diffusion.training_losses(self.ddp_model, micro, t, model_kwargs=micro_cond)
                return {k: v.float() for k, v in losses.items()}

            if last or self.world_size == 1:
                losses = compute()
            else:
                with self.ddp_model.no_sync():
                    losses = compute()
            if isinstance(self.schedule_sampler, LossAwareSampler):
                self.schedule_sampler.update_with_local_losses(t, losses["loss"].detach())
            loss = (losses["loss"] * weights).mean() * (micro.shape[0] / n)
            if not self.use_fp16 and not torch.isfinite(loss):
                raise FloatingPointError(
                    f"Training loss is {loss.item()} at step {self.step}. Check the diffusion settings (e.g. a "
                    "linear schedule needs steps >= 50 so every beta stays below 1) or lower trainer.lr; "
                    f"the newest checkpoint in {self.save_dir} is unaffected."
                )
            log_loss_dict(self.diffusion, t, {k: v * weights for k, v in losses.items()})
            if self.use_fp16:
                (loss * 2**self.lg_loss_scale).backward()
            else:
                loss.backward()

    def optimize_fp16(self) -> bool:
        # One fused reduction (one host sync) both detects overflow and gives the gradient norm.
        scaled_norm = float(global_grad_norm(self.model_params))
        if not math.isfinite(scaled_norm):
            self.lg_loss_scale -= 1
            logger.log(f"Found NaN/inf gradients, decreased lg_loss_scale to {self.lg_loss_scale}")
            return False
        model_grads_to_master_grads(self.model_params, self.master_params)
        for p in self.master_params:
            p.grad.mul_(1.0 / 2**self.lg_loss_scale)
        self._step_optimizer(scaled_norm / 2**self.lg_loss_scale)
        master_params_to_model_params(self.model_params, self.master_params)
        self.lg_loss_scale += self.fp16_scale_growth
        return True

    def optimize_normal(self) -> bool:
        self._step_optimizer(float(global_grad_norm(self.master_params)))
        return True

    def _step_optimizer(self, grad_norm: float) -> None:
        logger.logkv_mean("grad_norm", grad_norm)
        self._anneal_lr()
        self.opt.step()
        with torch.no_grad():
            for rate, params in zip(self.ema_rate, self.ema_params):
                update_ema(params, self.master_params, rate)

    def _anneal_lr(self) -> None:
        if not self.lr_anneal_steps:
            return
        lr = self.lr * max(0.0, 1.0 - self.step / self.lr_anneal_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr

    def log_step(self) -> None:
        logger.logkv("step", self.step)
        logger.logkv("samples", self.step * self.global_batch)
        logger.logkv("lr", self.opt.param_groups[0]["lr"])
        if self.use_fp16:
            logger.logkv("lg_loss_scale", self.lg_loss_scale)

    def _log_throughput(self) -> None:
        now = time.time()
        steps = self.step - self._tic_step
        if steps > 0 and now > self._tic:
            logger.logkv("samples_per_sec", steps * self.global_batch / (now - self._tic))
        self._tic, self._tic_step = now, self.step


def _strip_module_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Accept checkpoints saved from a DDP-wrapped model ('module.' key prefixes)."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def _warn(message: str) -> None:
    """A UserWarning and the same line in the run's log."""
    warnings.warn(message, stacklevel=3)
    logger.warn(f"WARNING: {message}")


def _check_bool(**values: Any) -> None:
    for name, value in values.items():
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"trainer.{name} must be true or false, got {value!r}.")


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, np.integer)) or value <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")


def update_ema(target: Sequence[torch.Tensor], source: Sequence[torch.Tensor], rate: float) -> None:
    """target <- rate * target + (1 - rate) * source, in place."""
    for t, s in zip(target, source):
        t.mul_(rate).add_(s.detach().to(t.dtype), alpha=1.0 - rate)


def log_loss_dict(diffusion: Any, ts: torch.Tensor, losses: dict[str, torch.Tensor]) -> None:
    """Log each loss term's batch mean and its mean within each quarter of the timesteps (key_q0..q3)."""
    quartile = (4 * ts.detach().cpu().numpy() // diffusion.num_timesteps).astype(int)
    for key, values in losses.items():
        vals = values.detach().float().cpu().numpy().reshape(-1)
        logger.logkv_mean(key, float(vals.mean()), count=len(vals))
        for q in np.unique(quartile):
            sel = vals[quartile == q]
            logger.logkv_mean(f"{key}_q{q}", float(sel.mean()), count=len(sel))
