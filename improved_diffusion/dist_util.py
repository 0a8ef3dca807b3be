"""Process-group setup and small collective helpers for MPI, SLURM and single-process runs.

`setup_dist` picks the launcher from the environment:

* ``mpiexec``/``mpirun`` (PMI_*/OMPI_*/MPI_LOCALRANKID variables, read through mpi4py): rank and
  world size come from ``MPI.COMM_WORLD``; rank 0 picks a free port and broadcasts its host and
  port over MPI.
* SLURM (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``, not under mpiexec): the master is
  the first host of ``SLURM_JOB_NODELIST`` and the port is derived from ``SLURM_JOB_ID``.
* submitit's local executor (``SUBMITIT_LOCAL_*``, e.g. Hydra's ``+mode=submitit_local``): the
  tasks of one job meet on localhost at a port derived from the job id.
* ``torchrun``-style ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` variables.
* Otherwise a single process. A one-member group is still created (through a file store, so no
  network port is needed) so that code written against improved-diffusion, which calls
  ``torch.distributed`` directly, keeps working. The helpers below also work before
  ``setup_dist`` is called: they then behave as for a world of one.

mpi4py is imported only under mpiexec, so single-process use never initialises MPI.
"""

from __future__ import annotations

import atexit
import io
import os
import re
import socket
import subprocess
import tempfile
from datetime import timedelta
from typing import Any, Iterable, Optional

import torch
import torch.distributed as dist

from .checkpoint_io import CheckpointReadError, load_weights_only  # noqa: F401 - CheckpointReadError re-exported

_MPI_ENV_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "MPI_LOCALRANKID")
_SLURM_ENV_VARS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
_SUBMITIT_LOCAL_ENV_VARS = ("SUBMITIT_LOCAL_GLOBALID", "SUBMITIT_LOCAL_NTASKS", "SUBMITIT_LOCAL_LOCALID")
# Bytes per MPI broadcast message when shipping checkpoints (mpi4py pickles are limited to 2 GiB).
_MPI_CHUNK = 1 << 30
_TIMEOUT = timedelta(minutes=30)

_state: dict[str, Any] = {"launcher": None, "local_rank": 0, "store_file": None}


def under_mpi() -> bool:
    """True when this process was started by mpiexec/mpirun (checked without importing mpi4py)."""
    return any(name in os.environ for name in _MPI_ENV_VARS)


def under_slurm() -> bool:
    """True when SLURM task variables are set and mpiexec did not start us."""
    return all(name in os.environ for name in _SLURM_ENV_VARS) and not under_mpi()


def _mpi_comm():
    """COMM_WORLD, imported lazily so that plain runs never initialise MPI."""
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise RuntimeError(
            "This process runs under mpiexec but mpi4py cannot be imported "
            f"({exc}). Install it with `pip install mpi4py` (and an MPI such as mpich)."
        ) from exc
    return MPI.COMM_WORLD


def _free_port() -> int:
    """A TCP port that is free on this host right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


# Processes of this job on this node, as each launcher tells it (first one set wins).
_LOCAL_SIZE_ENV_VARS = ("LOCAL_WORLD_SIZE", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SUBMITIT_LOCAL_NTASKS",
                        "SLURM_NTASKS_PER_NODE")


def local_world_size() -> Optional[int]:
    """Ranks on this node according to the launcher's environment; None when it does not say."""
    for name in _LOCAL_SIZE_ENV_VARS:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def default_backend() -> str:
    """nccl when every rank of this node has a GPU of its own, else gloo: NCCL refuses two ranks on
    one device ("Duplicate GPU detected"), which `local_device_index` allows (more ranks than GPUs,
    e.g. `mpiexec -n 2` on a one-GPU machine)."""
    if not torch.cuda.is_available():
        return "gloo"
    local = local_world_size()
    if local is not None and local > torch.cuda.device_count():
        return "gloo"
    return "nccl"


def expand_slurm_nodelist(nodelist: str) -> list[str]:
    """Hostnames of a SLURM node list such as ``node[01-03,07],gpu5``.

    Uses ``scontrol show hostnames`` when available and parses the common forms otherwise.
    """
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        if out:
            return out
    except (OSError, subprocess.SubprocessError):
        pass
    hosts: list[str] = []
    # Split on commas that are not inside brackets.
    for item in re.findall(r"[^,\[]+(?:\[[^\]]*\])?[^,]*", nodelist):
        match = re.fullmatch(r"([^\[]*)\[([^\]]*)\](.*)", item)
        if not match:
            hosts.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            if "-" in part:
                lo, hi = part.split("-", 1)
                width = len(lo)
                hosts.extend(f"{prefix}{i:0{width}d}{suffix}" for i in range(int(lo), int(hi) + 1))
            else:
                hosts.append(f"{prefix}{part}{suffix}")
    if not hosts:
        raise RuntimeError(
            f"Cannot parse SLURM_JOB_NODELIST={nodelist!r}; set MASTER_ADDR to the first node's hostname."
        )
    return hosts


def under_submitit_local() -> bool:
    """True for a task started by submitit's local executor (and not by mpiexec or SLURM)."""
    return all(name in os.environ for name in _SUBMITIT_LOCAL_ENV_VARS) and not under_mpi() and not under_slurm()


def under_torchrun() -> bool:
    """True when torchrun-style RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT variables are all set."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def under_launcher() -> bool:
    """True when one of the launchers `setup_dist` knows started this process (else it would
    set up a one-member group)."""
    return under_mpi() or under_slurm() or under_submitit_local() or under_torchrun()


def _job_port(job_id_var: str) -> int:
    """A port all tasks of one job agree on without communicating (MASTER_PORT wins)."""
    if "MASTER_PORT" in os.environ:
        return int(os.environ["MASTER_PORT"])
    digits = re.sub(r"\D", "", os.environ.get(job_id_var, "") or "") or "0"
    return 15000 + int(digits) % 20000


def _init_group(backend: str, init_method: str, rank: int, world_size: int) -> None:
    dist.init_process_group(
        backend=backend, init_method=init_method, rank=rank, world_size=world_size, timeout=_TIMEOUT
    )
    if not _state.get("exit_hook"):
        # A group left to the interpreter's teardown can abort the process ("terminate called
        # without an active exception", seen once with gloo), which a scheduler reports as failed.
        atexit.register(_cleanup_at_exit)
        _state["exit_hook"] = True


def _cleanup_at_exit() -> None:
    try:
        cleanup_dist()
    except Exception:  # the process is ending anyway; never mask its real exit status
        pass


def setup_dist(backend: Optional[str] = None) -> None:
    """Initialise torch.distributed once for this process (see the module docstring)."""
    backend = backend or default_backend()
    if backend not in ("nccl", "gloo", "mpi"):
        raise ValueError(f"Unknown torch.distributed backend {backend!r}; use 'nccl' (GPU) or 'gloo' (CPU).")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("Backend 'nccl' needs CUDA, which is not available here; use backend='gloo'.")
    if dist.is_available() and dist.is_initialized():
        return

    if under_mpi():
        comm = _mpi_comm()
        rank, world = comm.Get_rank(), comm.Get_size()
        local_rank = comm.Split_type(_mpi_shared_type()).Get_rank()
        if rank == 0:
            host = os.environ.get("MASTER_ADDR") or socket.gethostname()
            port = int(os.environ.get("MASTER_PORT") or _free_port())
            master = (host, port)
        else:
            master = None
        host, port = comm.bcast(master, root=0)
        if host == socket.gethostname():
            host = "127.0.0.1"
        launcher, init_method = "mpi", f"tcp://{host}:{port}"
    elif under_slurm():
        rank = int(os.environ["SLURM_PROCID"])
        world = int(os.environ["SLURM_NTASKS"])
        local_rank = int(os.environ["SLURM_LOCALID"])
        host = os.environ.get("MASTER_ADDR") or expand_slurm_nodelist(
            os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or socket.gethostname()
        )[0]
        launcher, init_method = "slurm", f"tcp://{host}:{_job_port('SLURM_JOB_ID')}"
    elif under_submitit_local():
        rank = int(os.environ["SUBMITIT_LOCAL_GLOBALID"])
        world = int(os.environ["SUBMITIT_LOCAL_NTASKS"])
        local_rank = int(os.environ["SUBMITIT_LOCAL_LOCALID"])
        host = os.environ.get("MASTER_ADDR", "127.0.0.1")
        launcher, init_method = "submitit-local", f"tcp://{host}:{_job_port('SUBMITIT_LOCAL_JOB_ID')}"
    elif under_torchrun():
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        launcher, init_method = "env", "env://"
    else:
        rank, world, local_rank = 0, 1, 0
        fd, store = tempfile.mkstemp(prefix="torch_dist_store_")
        os.close(fd)
        os.remove(store)
        _state["store_file"] = store
        launcher, init_method = "single", f"file://{store}"

    _state["launcher"] = launcher
    _state["local_rank"] = local_rank
    if torch.cuda.is_available():
        # a task bound to its own GPU (--gpus-per-task, GPU binding) sees one device, numbered 0
        torch.cuda.set_device(local_device_index())
    _init_group(backend, init_method, rank, world)


def _mpi_shared_type() -> int:
    from mpi4py import MPI

    return MPI.COMM_TYPE_SHARED


def cleanup_dist() -> None:
    """Destroy the process group (tests and scripts that want to start again)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    store = _state.get("store_file")
    if store and os.path.exists(store):
        os.remove(store)
    _state.update(launcher=None, local_rank=0, store_file=None)


def is_initialized() -> bool:
    """Whether a torch.distributed group exists."""
    return dist.is_available() and dist.is_initialized()


def launcher() -> Optional[str]:
    """How the group was set up: 'mpi', 'slurm', 'submitit-local', 'env', 'single', or None before setup_dist."""
    return _state["launcher"]


def get_rank() -> int:
    """Global rank (0 before setup_dist)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 before setup_dist)."""
    return dist.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    """Rank within this node, used to choose the GPU."""
    return int(_state["local_rank"])


def local_device_index() -> int:
    """This rank's GPU among the visible ones: the local rank modulo their number, so both one GPU
    per task and all of a node's GPUs per task work."""
    count = torch.cuda.device_count()
    if count < 1:
        raise RuntimeError("CUDA is available but no GPU is visible (check CUDA_VISIBLE_DEVICES).")
    return get_local_rank() % count


def dev() -> torch.device:
    """This rank's device: its local GPU when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{local_device_index()}")
    return torch.device("cpu")


def barrier() -> None:
    """Wait for all ranks (no-op for a single process)."""
    if get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank `src` to every rank and return it."""
    if get_world_size() == 1:
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's object, in rank order, on every rank."""
    if get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def load_state_dict(path: str, *, what: str = "checkpoint", why: Optional[str] = None, **kwargs: Any) -> Any:
    """Read a checkpoint with torch's weights-only unpickler, by default onto the CPU.

    Logs which file is read and why ("loading model weights from <path> (evaluator.model_path)"),
    so a run's log says where its weights came from. Raises FileNotFoundError for a missing file
    and `CheckpointReadError` for a damaged file or one holding arbitrary pickled objects (which is
    never unpickled: `weights_only` cannot be switched off here). Under mpiexec with several ranks,
    rank 0 reads the file once and ships the bytes over MPI so a shared file system is not
    hammered by every rank; otherwise every rank reads it.
    """
    if kwargs.pop("weights_only", True) is not True:
        raise ValueError("load_state_dict always reads checkpoints with weights_only=True; do not pass weights_only=False.")
    map_location = kwargs.pop("map_location", "cpu")
    if kwargs:
        raise TypeError(f"load_state_dict got unexpected arguments {sorted(kwargs)}")
    from . import logger

    logger.log(f"loading {what} from {path}" + (f" ({why})" if why else ""))
    if under_mpi() and get_world_size() > 1:
        comm = _mpi_comm()
        data = None
        error = None
        if comm.Get_rank() == 0:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as exc:
                error = f"{type(exc).__name__}: {exc}"
        error = comm.bcast(error, root=0)
        if error is not None:
            raise FileNotFoundError(f"Rank 0 could not read checkpoint {path}: {error}")
        n_chunks = comm.bcast(None if data is None else (len(data) + _MPI_CHUNK - 1) // _MPI_CHUNK, root=0)
        parts = []
        for i in range(n_chunks):
            chunk = data[i * _MPI_CHUNK : (i + 1) * _MPI_CHUNK] if comm.Get_rank() == 0 else None
            parts.append(comm.bcast(chunk, root=0))
        return load_weights_only(io.BytesIO(b"".join(parts)), path, map_location)
    if not os.path.exists(path):
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    return load_weights_only(path, path, map_location)


def sync_params(params: Iterable[torch.Tensor]) -> None:
    """Copy rank 0's tensors to every rank so all start from identical weights."""
    if get_world_size() == 1:
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data if isinstance(p, torch.nn.Parameter) else p, 0)


class TorchComm:
    """The two MPI-communicator methods the logger uses, over torch.distributed.

    Lets `logger.configure(comm=TorchComm())` average logged values across ranks without MPI.
    """

    def Get_rank(self) -> int:  # noqa: N802 - mirrors mpi4py's name
        return get_rank()

    def Get_size(self) -> int:  # noqa: N802 - mirrors mpi4py's name
        return get_world_size()

    def gather(self, obj: Any, root: int = 0) -> Optional[list[Any]]:
        """Objects of all ranks on `root` (None elsewhere)."""
        if get_world_size() == 1:
            return [obj]
        out = [None] * get_world_size() if get_rank() == root else None
        dist.gather_object(obj, out, dst=root)
        return out

