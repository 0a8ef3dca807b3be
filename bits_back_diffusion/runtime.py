"""Process setup shared by the scripts: distributed init, device, one run dir for all ranks,
seeding and determinism switches."""
from __future__ import annotations

import datetime
import functools
import os
import random
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import OmegaConf

from improved_diffusion import dist_util

_RANK_ENV_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    run_dir: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launch_rank() -> int:
    """This process's rank as told by the launcher's environment (before torch.distributed)."""
    for var in _RANK_ENV_VARS + ("SLURM_PROCID",):
        if var in os.environ:
            return int(os.environ[var])
    return 0


@functools.lru_cache(maxsize=None)
def run_stamp() -> str:
    """`<date>/<time>` of the run, decided by rank 0 under mpiexec so every rank's Hydra run dir
    is the same folder (each rank composes its own config, and `${now:}` would differ)."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")
    if dist_util.under_mpi():
        from mpi4py import MPI

        stamp = MPI.COMM_WORLD.bcast(stamp, root=0)
    return stamp


def hydra_output_subdir() -> str:
    """`.hydra` on rank 0; other ranks keep their (identical) config copies out of its way."""
    rank = launch_rank()
    return ".hydra" if rank == 0 else f".hydra/rank{rank}"


def register_resolvers() -> None:
    """Resolvers the YAML files use; call before `@hydra.main` runs.

    `run_stamp` is cached in the config (like Hydra's `${now:}`), so a config pickled by a launcher
    carries its value: a SLURM job started (or requeued) later by the submitit launcher gets the
    launcher's sweep dir, not a new timestamp -- otherwise a requeued run would start over from
    step 0 in a fresh folder. `hydra_subdir` depends on the process's rank and must not be cached.
    """
    for name, fn, cache in (("run_stamp", run_stamp, True), ("hydra_subdir", hydra_output_subdir, False)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


def set_determinism(deterministic: bool = True) -> None:
    """Bit-identical model outputs between encode and decode need fixed kernels and no TF32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def hydra_run_dir() -> Optional[str]:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except Exception:  # not running under @hydra.main (e.g. a library call)
        return None


def setup(cfg: Any, run_dir: Optional[str] = None, deterministic: bool = True) -> Runtime:
    """Initialise distribution, pick the device, agree on rank 0's run dir, seed and fix kernels."""
    dist_util.setup_dist()
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    chosen = run_dir or hydra_run_dir() or os.getcwd()
    chosen = os.path.abspath(dist_util.broadcast_object(chosen if rank == 0 else None))
    os.makedirs(chosen, exist_ok=True)
    set_determinism(deterministic)
    if dist_util.dev().type == "cpu" and world > 1 and "OMP_NUM_THREADS" not in os.environ:
        # ranks sharing a machine would oversubscribe its cores (and spin-wait on each other)
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    seed = int(cfg.get("seed", 0) or 0) if hasattr(cfg, "get") else 0
    seed_everything(seed + rank)
    return Runtime(rank, world, dist_util.get_local_rank(), dist_util.dev(), chosen)
