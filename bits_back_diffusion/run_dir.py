"""A run dir is used by one run at a time and never clobbered.

* Default run dirs are unique: a second run started in the same second gets `<time>-1`, `-2`, ...
  (the folder is created when the name is chosen, so two processes cannot pick the same one).
* `RunDirLock` is an advisory `flock` on `<run dir>/.run.lock`, held by rank 0 while the run
  lives. The kernel drops it when the process dies (kill -9 included), so a requeued SLURM job
  or a rerun after a crash never meets a stale lock; the file names the holder's pid and host.
* `keep_earlier_outputs` moves a finished run's results aside (`results.1.json`, ...) before a
  rerun, or another script pointed at the same dir, writes its own.
* `save_launch_config` writes `.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml` only once
  the run has passed its checks (Hydra itself is told not to, `hydra.output_subdir: null`), and
  never over an existing, different file: a later launch that differs goes to `.hydra/launch<N>/`.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import socket
from typing import Any, Callable, Dict, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from improved_diffusion.atomic_io import atomic_write

LOCK_NAME = ".run.lock"
CONFIG_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")


class RunDirBusy(RuntimeError):
    """Another live process is using the run dir."""


# ------------------------------------------------------------------ unique default run dirs


def reserve_new_dir(base: str) -> str:
    """Create and return `base`, or `base-1`, `base-2`, ... when that name is taken.

    `os.mkdir` is atomic, so two processes racing for one name get different folders."""
    os.makedirs(os.path.dirname(os.path.abspath(base)), exist_ok=True)
    suffix = 0
    while True:
        candidate = base if suffix == 0 else f"{base}-{suffix}"
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            suffix += 1


def fresh_run_dir(prefix: str, stamp: Callable[[], str], reserve: bool = True,
                  share: Optional[Callable[[str], str]] = None) -> str:
    """`<prefix>/<stamp>`, made unique by `reserve_new_dir` on the process that picks it.

    `share` hands the picked name to the other processes of an mpiexec job (rank 0 picks);
    `reserve=False` (other launch ranks without MPI) returns the plain name, which the runtime
    later replaces by rank 0's choice."""
    base = os.path.join(str(prefix), stamp())
    chosen = reserve_new_dir(base) if reserve else base
    return share(chosen) if share is not None else chosen


def default_stamp() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d/%H-%M-%S")


# ------------------------------------------------------------------ the lock


class RunDirLock:
    """Exclusive advisory lock on a run dir for the lifetime of this object (or process)."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self._fd: Optional[int] = None

    def acquire(self) -> "RunDirLock":
        """Take the lock at once or raise `RunDirBusy` naming the holder; never waits."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirBusy(
                    f"run dir {os.path.dirname(self.path)} is in use by another run ({holder}); wait for it to "
                    "finish, or pass another hydra.run.dir (leave it out for a new timestamped one)"
                ) from None
            if _same_file(fd, self.path):
                break
            # the previous holder removed the file between our open and flock: lock the new one
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then drop the lock (a finished run leaves nothing behind)."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                os.remove(self.path)
        finally:
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None


def _read_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown: it is just starting"


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


# ------------------------------------------------------------------ the launch's config files


def keep_earlier_outputs(run_dir: str, names: Sequence[str], log: Callable[[str], None] = print) -> Dict[str, str]:
    """Move each existing `names` file aside to `<stem>.<n><ext>` (the first free n), so that the
    results a rerun or another script writes never replace earlier ones; returns {old: kept as}."""
    kept = {}
    for name in names:
        path = os.path.join(run_dir, name)
        if not os.path.exists(path):
            continue
        stem, ext = os.path.splitext(path)
        n = 1
        while os.path.exists(f"{stem}.{n}{ext}"):
            n += 1
        os.replace(path, f"{stem}.{n}{ext}")  # rank 0 holds the run dir's lock: no one else writes here
        kept[name] = os.path.basename(f"{stem}.{n}{ext}")
    if kept:
        log(f"the run dir held results of an earlier run; kept them as {', '.join(kept.values())}")
    return kept


def launch_config_texts(cfg: DictConfig) -> Dict[str, str]:
    """The YAML texts Hydra would have saved for this launch (only config.yaml outside Hydra)."""
    texts = {"config.yaml": OmegaConf.to_yaml(cfg)}
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            hydra_cfg: Any = HydraConfig.instance().cfg
            texts["hydra.yaml"] = OmegaConf.to_yaml(hydra_cfg)
            texts["overrides.yaml"] = OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)
    except ImportError:  # pragma: no cover - hydra is a dependency
        pass
    return texts


def save_launch_config(folder: str, texts: Dict[str, str]) -> str:
    """Write `texts` into `folder` (e.g. `<run dir>/.hydra`) unless an identical copy is there.

    Existing, different files stay as they are; this launch's files then go to
    `folder/launch<N>` (N = 2, 3, ...). Returns the folder written to (or found identical)."""
    if not any(os.path.exists(os.path.join(folder, name)) for name in texts):
        target = folder
    elif _identical(folder, texts):
        return folder
    else:
        n = 2
        while os.path.exists(os.path.join(folder, f"launch{n}")) and not _identical(os.path.join(folder, f"launch{n}"), texts):
            n += 1
        target = os.path.join(folder, f"launch{n}")
        if _identical(target, texts):
            return target
    os.makedirs(target, exist_ok=True)
    for name, text in texts.items():
        atomic_write(os.path.join(target, name), lambda f, data=text.encode(): f.write(data))
    return target


def _identical(folder: str, texts: Dict[str, str]) -> bool:
    for name, text in texts.items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            if f.read() != text.encode():
                return False
    return True
