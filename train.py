"""Train an improved-DDPM model: ``python train.py [data=...] [model=...] [trainer.key=value ...]``.

Run under ``mpiexec -n N`` (or SLURM) for data-parallel training; rerun with
``hydra.run.dir=<run dir>`` to resume from the newest checkpoint there.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from bits_back_diffusion import runtime
from bits_back_diffusion.data import build_dataset, train_batches
from bits_back_diffusion.session import script_session
from improved_diffusion import logger
from improved_diffusion.resample import SAMPLER_NAMES, create_named_schedule_sampler
from improved_diffusion.script_util import create_gaussian_diffusion, create_model
from improved_diffusion.train_util import TrainLoop, parse_ema_rates

# ${fresh_run_dir:} in config/train.yaml: one new run dir for all mpiexec ranks.
runtime.register_resolvers()


def check_trainer_config(t: Any, world_size: int) -> int:
    """Validate the trainer section; returns the per-rank batch size."""
    batch = t.batch_size
    if not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"trainer.batch_size must be a positive integer (the global batch), got {batch!r}.")
    if batch % world_size:
        raise ValueError(
            f"trainer.batch_size={batch} cannot be split evenly over {world_size} ranks; "
            f"use a multiple of {world_size} (e.g. trainer.batch_size={max(world_size, batch // world_size * world_size)})."
        )
    if t.schedule_sampler not in SAMPLER_NAMES:
        raise ValueError(
            f"Unknown trainer.schedule_sampler {t.schedule_sampler!r}; choose one of {', '.join(SAMPLER_NAMES)}."
        )
    micro = t.microbatch
    if not isinstance(micro, int) or micro == 0 or micro < -1:
        raise ValueError(f"trainer.microbatch must be -1 (off) or a positive integer, got {micro!r}.")
    parse_ema_rates(list(t.ema_rate) if not isinstance(t.ema_rate, (int, float, str)) else t.ema_rate)
    return batch // world_size


def run(cfg: DictConfig, run_dir: Optional[str] = None) -> str:
    """Train per `cfg`; returns the run dir holding the checkpoints.

    The run dir is locked while training runs; a resume that is refused (another model, a
    damaged checkpoint) leaves it untouched: the launch's config and logs are written only once
    the TrainLoop has accepted the run dir's checkpoints."""
    with script_session(cfg, run_dir=run_dir, deterministic=False, average_over_ranks=True) as session:
        rt = session.rt
        with session.checks():
            t = cfg.trainer
            per_rank = check_trainer_config(t, rt.world_size)
            seed = int(t.seed) + rt.rank
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
            logger.log(f"rank {rt.rank}/{rt.world_size} on {rt.device}; run dir {rt.run_dir}")
            loop = _build_loop(cfg, rt, per_rank, seed)
        step = loop.run_loop()
        logger.log(f"training finished at step {step}; checkpoints in {rt.run_dir}")
    return rt.run_dir


def _build_loop(cfg: DictConfig, rt: runtime.Runtime, per_rank: int, seed: int) -> TrainLoop:
    """Model, diffusion, data and the TrainLoop (which loads the run dir's checkpoints to resume)."""
    t = cfg.trainer
    diffusion = create_gaussian_diffusion(**cfg.diffusion)
    torch.manual_seed(int(t.seed))  # identical initial weights everywhere (rank 0's are broadcast anyway)
    model = create_model(**cfg.model).to(rt.device)
    torch.manual_seed(seed)
    logger.log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters; "
               f"diffusion: {diffusion.num_timesteps} steps; batch {t.batch_size} = {rt.world_size} x {per_rank}")
    sampler = create_named_schedule_sampler(t.schedule_sampler, diffusion)
    dataset = build_dataset(cfg.data, "train")
    data = train_batches(dataset, per_rank, rank=rt.rank, world_size=rt.world_size, seed=int(t.seed),
                         pin_memory=rt.device.type == "cuda")
    return TrainLoop(
        model=model,
        diffusion=diffusion,
        data=data,
        batch_size=per_rank,
        microbatch=t.microbatch,
        lr=t.lr,
        ema_rate=list(t.ema_rate) if not isinstance(t.ema_rate, (int, float, str)) else t.ema_rate,
        log_interval=t.log_interval,
        save_interval=t.save_interval,
        resume_checkpoint=t.resume_checkpoint or None,
        use_fp16=t.use_fp16,
        fp16_scale_growth=t.fp16_scale_growth,
        schedule_sampler=sampler,
        weight_decay=t.weight_decay,
        lr_anneal_steps=t.lr_anneal_steps,
        max_steps=t.max_steps,
        save_dir=rt.run_dir,
        allow_tf32=t.get("allow_tf32", False),
        bf16_autocast=t.get("bf16_autocast", False),
    )


@hydra.main(config_path="config", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
