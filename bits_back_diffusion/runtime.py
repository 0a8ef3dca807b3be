"""Process setup shared by the scripts: distributed init, device, one locked run dir for all
ranks, seeding and determinism switches."""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from improved_diffusion import dist_util

from . import run_dir as run_dirs

_RANK_ENV_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    run_dir: str
    lock: Optional[run_dirs.RunDirLock] = None  # rank 0's hold on the run dir

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def release(self) -> None:
        """Unlock the run dir (the end of a run; a dying process loses the lock anyway)."""
        if self.lock is not None:
            self.lock.release()


def launch_rank() -> int:
    """This process's rank as told by the launcher's environment (before torch.distributed)."""
    for var in _RANK_ENV_VARS + ("SLURM_PROCID",):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def fresh_run_dir(prefix: str) -> str:
    """`<prefix>/<date>/<time>` made unique (`-1`, `-2`, ... when taken) and created at once, so
    two runs (or two `-m` sweeps: the sweep dir is one too) started in the same second never
    share a folder. Under mpiexec rank 0 picks the
    name and broadcasts it; other launch ranks without MPI leave the choice to rank 0's broadcast
    in `setup`."""
    if dist_util.under_mpi():
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        chosen = run_dirs.fresh_run_dir(prefix, run_dirs.default_stamp) if comm.Get_rank() == 0 else None
        return comm.bcast(chosen, root=0)
    return run_dirs.fresh_run_dir(prefix, run_dirs.default_stamp, reserve=launch_rank() == 0)


def hydra_output_subdir() -> str:
    """`.hydra` on rank 0; other ranks keep their (identical) config copies out of its way."""
    rank = launch_rank()
    return ".hydra" if rank == 0 else f".hydra/rank{rank}"


def check_flags(cfg: DictConfig, keys: Sequence[str]) -> None:
    """Refuse a switch that is not true or false: `check=yes_please` (or a quoted "false") was
    truthy and ran a whole job with a setting the user did not mean."""
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is not None and not isinstance(value, bool):
            raise ValueError(f"{key}={value!r} must be true or false")


def register_resolvers() -> None:
    """Resolvers the YAML files use; call before `@hydra.main` runs.

    `fresh_run_dir` is cached in the config (like Hydra's `${now:}`), so a config pickled by a
    launcher carries its value, and Hydra copies that cache into each sweep job's config: every
    job of a sweep, and a SLURM job started (or requeued) later by the submitit launcher, gets the
    launcher's dir, not a new one -- otherwise a requeued run would start over from step 0 in a
    fresh folder. `hydra_subdir` depends on the process's rank
    and must not be cached.
    """
    for name, fn, cache in (("fresh_run_dir", fresh_run_dir, True), ("hydra_subdir", hydra_output_subdir, False)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=cache)


CUBLAS_WORKSPACE = ":4096:8"


def prepare_determinism_env(deterministic: bool) -> None:
    """cuBLAS needs a fixed workspace for reproducible results; it reads the variable when CUDA
    starts, so this runs before `setup_dist` touches the GPU. A user's own setting is kept."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


def set_determinism(deterministic: bool = True) -> None:
    """Bit-identical model outputs between encode and decode need fixed kernels and no TF32.

    Coding paths (deterministic=True) make a nondeterministic kernel an error, not a warning: a
    warning would leave an undecodable file. Training (False) keeps torch's setting."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if deterministic:
        prepare_determinism_env(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)


def pin_torch_threads() -> None:
    """Start numba's threading layer now and keep torch's CPU thread count what it was before.

    Why: torch's count is the OpenMP runtime's, which numba's OpenMP layer shares and sets to
    NUMBA_NUM_THREADS when it starts, i.e. at the codec's first threaded pass. With
    OMP_NUM_THREADS=1 the model then ran on every core from the second batch on, while the
    checkpoints and the file recorded one thread, and a model's last bits can depend on its thread
    count: encode.py's own check passed, decode.py (one thread) would not have."""
    wanted = torch.get_num_threads()
    import numba

    from craystack.compiled import kernels  # noqa: F401 - its threading-layer choice comes first

    numba.get_num_threads()  # starts the layer
    torch.set_num_threads(wanted)


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


def lock_run_dir(path: str, rank: int) -> Optional[run_dirs.RunDirLock]:
    """Rank 0 locks the run dir; every rank raises the same `RunDirBusy` when it is taken."""
    lock, error = None, None
    if rank == 0:
        try:
            lock = run_dirs.RunDirLock(path).acquire()
        except run_dirs.RunDirBusy as exc:
            error = str(exc)
    error = dist_util.broadcast_object(error)
    if error is not None:
        raise run_dirs.RunDirBusy(error)
    return lock


def setup(cfg: Any, run_dir: Optional[str] = None, deterministic: bool = True) -> Runtime:
    """Initialise distribution, pick the device, agree on rank 0's run dir and lock it, seed and
    fix kernels. Call `Runtime.release()` when the run ends."""
    prepare_determinism_env(deterministic)
    dist_util.setup_dist()
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    chosen = run_dir or hydra_run_dir() or os.getcwd()
    chosen = os.path.abspath(dist_util.broadcast_object(chosen if rank == 0 else None))
    os.makedirs(chosen, exist_ok=True)
    lock = lock_run_dir(chosen, rank)
    try:
        set_determinism(deterministic)
        if dist_util.dev().type == "cpu" and world > 1 and "OMP_NUM_THREADS" not in os.environ:
            # ranks sharing a machine would oversubscribe its cores (and spin-wait on each other)
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        if deterministic:  # coding runs: the codec's compiled passes start numba's threads
            pin_torch_threads()
        seed = int(cfg.get("seed", 0) or 0) if hasattr(cfg, "get") else 0
        seed_everything(seed + rank)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return Runtime(rank, world, dist_util.get_local_rank(), dist_util.dev(), chosen, lock)
