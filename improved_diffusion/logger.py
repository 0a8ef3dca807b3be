"""Key/value and text logging with improved-diffusion's module-level API.

Values are accumulated with `logkv`/`logkv_mean` and written once per `dumpkvs` to every
configured output: a human-readable table (stdout or ``log.txt``), ``progress.csv``,
``progress.json``, or any extra `KVWriter` (e.g. the W&B writer). By default only rank 0
writes; other ranks get no outputs unless ``OPENAI_LOG_FORMAT_MPI`` asks for some.
When `configure` is given a communicator (mpi4py's COMM_WORLD or `dist_util.TorchComm()`),
`dumpkvs` averages every key across ranks, weighted by how often each rank logged it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from typing import IO, Any, Iterator, Optional, Sequence, Union

DEBUG, INFO, WARN, ERROR, DISABLED = 10, 20, 30, 40, 50

FORMATS = ("stdout", "log", "json", "csv")


class KVWriter:
    """An output that receives one dict of scalars per `dumpkvs`."""

    def writekvs(self, kvs: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release files or connections (no-op by default)."""


class SeqWriter:
    """An output that receives free-form text lines from `log`."""

    def writeseq(self, seq: Sequence[Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release files (no-op by default)."""


def _fmt(value: Any) -> str:
    if hasattr(value, "item") and getattr(value, "size", 1) == 1:
        value = value.item()
    if isinstance(value, float):
        return f"{value:<8.3g}"
    return str(value)


class HumanOutputFormat(KVWriter, SeqWriter):
    """Aligned table of key/value pairs, plus plain text lines, to a file or stream."""

    def __init__(self, filename_or_file: Union[str, IO[str]]):
        if isinstance(filename_or_file, str):
            self.file: IO[str] = open(filename_or_file, "a", encoding="utf-8")
            self.own_file = True
        else:
            if not hasattr(filename_or_file, "write"):
                raise TypeError(f"HumanOutputFormat needs a path or a writable stream, got {filename_or_file!r}")
            self.file = filename_or_file
            self.own_file = False

    def writekvs(self, kvs: dict[str, Any]) -> None:
        if not kvs:
            return
        rows = [(self._cut(str(k)), self._cut(_fmt(v))) for k, v in sorted(kvs.items())]
        kw = max(len(k) for k, _ in rows)
        vw = max(len(v) for _, v in rows)
        line = "-" * (kw + vw + 7)
        out = [line] + [f"| {k:<{kw}} | {v:<{vw}} |" for k, v in rows] + [line]
        self.file.write("\n".join(out) + "\n")
        self.file.flush()

    @staticmethod
    def _cut(text: str, width: int = 30) -> str:
        return text if len(text) <= width else text[: width - 3] + "..."

    def writeseq(self, seq: Sequence[Any]) -> None:
        self.file.write(" ".join(str(x) for x in seq) + "\n")
        self.file.flush()

    def close(self) -> None:
        if self.own_file:
            self.file.close()


class JSONOutputFormat(KVWriter):
    """One JSON object per dump, one per line."""

    def __init__(self, filename: str):
        self.file = open(filename, "a", encoding="utf-8")

    def writekvs(self, kvs: dict[str, Any]) -> None:
        clean = {k: (v.item() if hasattr(v, "item") else v) for k, v in kvs.items()}
        self.file.write(json.dumps(clean, sort_keys=True, default=str) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class CSVOutputFormat(KVWriter):
    """A CSV table whose header grows when new keys appear (the file is rewritten then)."""

    def __init__(self, filename: str):
        self.filename = filename
        self.keys: list[str] = []
        if os.path.exists(filename) and os.path.getsize(filename) > 0:
            # Appending to a resumed run: keep its columns.
            with open(filename, newline="", encoding="utf-8") as f:
                self.keys = next(csv.reader(f), [])

    def writekvs(self, kvs: dict[str, Any]) -> None:
        new = sorted(k for k in kvs if k not in self.keys)
        if new:
            old_rows: list[dict[str, str]] = []
            if os.path.exists(self.filename):
                with open(self.filename, newline="", encoding="utf-8") as f:
                    old_rows = list(csv.DictReader(f))
            self.keys.extend(new)
            with open(self.filename, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=self.keys, restval="")
                writer.writeheader()
                writer.writerows(old_rows)
        with open(self.filename, "a", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=self.keys, restval="")
            writer.writerow({k: v for k, v in kvs.items()})


def make_output_format(format: str, ev_dir: str, log_suffix: str = "") -> KVWriter:
    """Build the named output ('stdout', 'log', 'json' or 'csv') writing into `ev_dir`."""
    os.makedirs(ev_dir, exist_ok=True)
    if format == "stdout":
        return HumanOutputFormat(sys.stdout)
    if format == "log":
        return HumanOutputFormat(os.path.join(ev_dir, f"log{log_suffix}.txt"))
    if format == "json":
        return JSONOutputFormat(os.path.join(ev_dir, f"progress{log_suffix}.json"))
    if format == "csv":
        return CSVOutputFormat(os.path.join(ev_dir, f"progress{log_suffix}.csv"))
    raise ValueError(f"Unknown log format {format!r}; choose from {', '.join(FORMATS)}.")


class Logger:
    """Accumulates key/values between dumps and fans them out to its output formats."""

    DEFAULT: Optional["Logger"] = None
    CURRENT: Optional["Logger"] = None

    def __init__(self, dir: Optional[str], output_formats: list[KVWriter], comm: Any = None):
        self.name2val: dict[str, Any] = {}
        self.name2cnt: dict[str, float] = defaultdict(float)
        self.level = INFO
        self.dir = dir
        self.output_formats = list(output_formats)
        self.comm = comm

    def logkv(self, key: str, val: Any) -> None:
        self.name2val[key] = val
        self.name2cnt.pop(key, None)

    def logkv_mean(self, key: str, val: Any, count: float = 1) -> None:
        """Running mean; `count` weights `val` as that many samples of the same value."""
        val = float(val)
        old = self.name2val.get(key, 0.0)
        n = self.name2cnt.get(key, 0.0)
        self.name2val[key] = (old * n + val * count) / (n + count)
        self.name2cnt[key] = n + count

    def dumpkvs(self) -> dict[str, Any]:
        if self.comm is not None and self.comm.Get_size() > 1:
            d = _weighted_mean_over_ranks(self.comm, self.name2val, self.name2cnt)
            if self.comm.Get_rank() != 0:
                d = {}
        else:
            d = dict(self.name2val)
        for fmt in self.output_formats:
            if d and isinstance(fmt, KVWriter):
                fmt.writekvs(d)
        self.name2val.clear()
        self.name2cnt.clear()
        return d

    def log(self, *args: Any, level: int = INFO) -> None:
        if self.level <= level:
            for fmt in self.output_formats:
                if isinstance(fmt, SeqWriter):
                    fmt.writeseq([str(a) for a in args])

    def set_level(self, level: int) -> None:
        self.level = level

    def set_comm(self, comm: Any) -> None:
        self.comm = comm

    def get_dir(self) -> Optional[str]:
        return self.dir

    def close(self) -> None:
        for fmt in self.output_formats:
            fmt.close()


def _weighted_mean_over_ranks(comm: Any, name2val: dict[str, Any], name2cnt: dict[str, float]) -> dict[str, Any]:
    """Mean of each key over ranks, weighted by counts; keys set with logkv count once."""
    local = {k: (v, name2cnt.get(k, 1.0)) for k, v in name2val.items()}
    gathered = comm.gather(local, root=0)
    if comm.Get_rank() != 0:
        return {}
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    last: dict[str, Any] = {}
    for part in gathered:
        for k, (v, n) in part.items():
            try:
                sums[k] += float(v) * n
                counts[k] += n
            except (TypeError, ValueError):
                last[k] = v
    out: dict[str, Any] = {k: sums[k] / counts[k] for k in sums if counts[k] > 0}
    out.update(last)
    return out


def _env_rank() -> int:
    """Rank without importing MPI: torch.distributed if set up, else launcher variables."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except ImportError:  # pragma: no cover
        pass
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "RANK", "SLURM_PROCID"):
        if var in os.environ:
            return int(os.environ[var])
    return 0


def configure(
    dir: Optional[str] = None,
    format_strs: Optional[Union[str, Sequence[str]]] = None,
    comm: Any = None,
    log_suffix: str = "",
) -> Logger:
    """(Re)create the current logger.

    dir: output folder (default ``$OPENAI_LOGDIR`` or a new temp folder).
    format_strs: outputs, e.g. ``"stdout,log,csv"`` or a list; default ``$OPENAI_LOG_FORMAT`` or
    ``stdout,log,csv`` on rank 0, and ``$OPENAI_LOG_FORMAT_MPI`` (default none) on other ranks.
    comm: communicator to average values across ranks on each dump.
    """
    if dir is None:
        dir = os.getenv("OPENAI_LOGDIR")
    if dir is None:
        stamp = datetime.datetime.now().strftime("openai-%Y-%m-%d-%H-%M-%S-%f")
        dir = os.path.join(tempfile.gettempdir(), stamp)
    dir = os.path.expanduser(os.fspath(dir))
    os.makedirs(dir, exist_ok=True)

    rank = comm.Get_rank() if comm is not None else _env_rank()
    if rank > 0 and not log_suffix:
        log_suffix = f"-rank{rank:03d}"
    if format_strs is None:
        if rank == 0:
            format_strs = os.getenv("OPENAI_LOG_FORMAT", "stdout,log,csv")
        else:
            format_strs = os.getenv("OPENAI_LOG_FORMAT_MPI", "")
    if isinstance(format_strs, str):
        format_strs = [s for s in format_strs.split(",") if s]
    unknown = [f for f in format_strs if f not in FORMATS]
    if unknown:
        raise ValueError(f"Unknown log format(s) {unknown}; choose from {', '.join(FORMATS)}.")

    if Logger.CURRENT is not None and Logger.CURRENT is not Logger.DEFAULT:
        Logger.CURRENT.close()
    outputs = [make_output_format(f, dir, log_suffix) for f in format_strs]
    Logger.CURRENT = Logger(dir=dir, output_formats=outputs, comm=comm)
    if outputs:
        log(f"Logging to {dir}")
    return Logger.CURRENT


def get_current() -> Logger:
    """The active logger, creating a stdout-only default one on first use."""
    if Logger.CURRENT is None:
        Logger.DEFAULT = Logger(dir=None, output_formats=[HumanOutputFormat(sys.stdout)])
        Logger.CURRENT = Logger.DEFAULT
    return Logger.CURRENT


def add_output(writer: KVWriter) -> None:
    """Attach an extra output (e.g. a W&B writer) to the current logger."""
    if not isinstance(writer, (KVWriter, SeqWriter)):
        raise TypeError(f"add_output needs a KVWriter or SeqWriter, got {type(writer).__name__}")
    get_current().output_formats.append(writer)


def reset() -> None:
    """Close the current logger and fall back to the default one."""
    if Logger.CURRENT is not None and Logger.CURRENT is not Logger.DEFAULT:
        Logger.CURRENT.close()
    Logger.CURRENT = Logger.DEFAULT


@contextlib.contextmanager
def scoped_configure(dir: Optional[str] = None, format_strs: Any = None, comm: Any = None) -> Iterator[Logger]:
    """Use a fresh logger inside a `with` block, restoring the previous one afterwards."""
    previous = Logger.CURRENT
    Logger.CURRENT = None
    try:
        yield configure(dir=dir, format_strs=format_strs, comm=comm)
    finally:
        if Logger.CURRENT is not None:
            Logger.CURRENT.close()
        Logger.CURRENT = previous


def logkv(key: str, val: Any) -> None:
    """Set a value for this dump (last call wins)."""
    get_current().logkv(key, val)


def logkv_mean(key: str, val: Any, count: float = 1) -> None:
    """Add to the running mean of `key` for this dump."""
    get_current().logkv_mean(key, val, count)


def logkvs(d: dict[str, Any]) -> None:
    """logkv for every item of a dict."""
    for k, v in d.items():
        logkv(k, v)


def dumpkvs() -> dict[str, Any]:
    """Write all accumulated values to every output and clear them; returns what was written."""
    return get_current().dumpkvs()


def getkvs() -> dict[str, Any]:
    """Values accumulated since the last dump."""
    return get_current().name2val


def log(*args: Any, level: int = INFO) -> None:
    """Write a text line to the text outputs (stdout, log.txt) if `level` is enabled."""
    get_current().log(*args, level=level)


def debug(*args: Any) -> None:
    log(*args, level=DEBUG)


def info(*args: Any) -> None:
    log(*args, level=INFO)


def warn(*args: Any) -> None:
    log(*args, level=WARN)


def error(*args: Any) -> None:
    log(*args, level=ERROR)


def set_level(level: int) -> None:
    """Minimum level of text lines written by `log`."""
    get_current().set_level(level)


def set_comm(comm: Any) -> None:
    """Communicator used to average values across ranks on each dump."""
    get_current().set_comm(comm)


def get_dir() -> Optional[str]:
    """The folder outputs are written to (None for the stdout-only default logger)."""
    return get_current().get_dir()


record_tabular = logkv
dump_tabular = dumpkvs


@contextlib.contextmanager
def profile_kv(scopename: str) -> Iterator[None]:
    """Add the wall time spent inside the block to ``wait_<scopename>``."""
    key = "wait_" + scopename
    start = time.time()
    try:
        yield
    finally:
        cur = get_current()
        cur.name2val[key] = cur.name2val.get(key, 0.0) + time.time() - start
