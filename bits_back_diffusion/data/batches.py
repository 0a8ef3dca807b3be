"""The official downsampled-ImageNet batch files (``*.npz`` or pickled dicts).

Each file holds ``data``: rows of C*S*S uint8 values in channel-major (CHW)
order. Uncompressed npz members are memory-mapped so that random access over a
1.28M-image training set does not need ~15 GB of RAM; pickles and compressed
npz files are loaded whole, keeping only the most recently used ones.
"""

from __future__ import annotations

import bisect
import os
import pickle
import re
import struct
import threading
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .base import ImageSet, as_levels
from .errors import DataError

_BATCH_NAME = re.compile(r"^(train_data_batch_\d+|val_data|test_data)(\.npz|\.pkl|\.pickle)?$")
_PICKLE_EXT = (".pkl", ".pickle")

SPLIT_PREFIXES = {"train": ("train",), "val": ("val", "valid", "test")}


def is_batch_file(path: "os.PathLike[str] | str") -> bool:
    """Recognise official batch files by name: any npz/pkl file or ``train_data_batch_N``/``val_data``."""
    name = os.path.basename(os.fspath(path))
    if name.startswith("."):
        return False
    return bool(_BATCH_NAME.match(name)) or name.lower().endswith((".npz",) + _PICKLE_EXT)


def _natural_key(path: Path) -> list:
    # train_data_batch_10 must come after train_data_batch_9
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def find_batch_files(folder: "os.PathLike[str] | str", split: Optional[str] = None, strict: bool = False) -> list[Path]:
    """Batch files directly inside ``folder``, naturally sorted.

    When ``split`` is given and some files are named for it (``train*`` or
    ``val*``), only those are used; otherwise all batch files are (a folder
    holding just one split's files may name them anything). ``strict`` disables
    that fallback.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = sorted((p for p in folder.iterdir() if p.is_file() and is_batch_file(p)), key=_natural_key)
    if split is None:
        return files
    prefixes = SPLIT_PREFIXES[split]
    chosen = [p for p in files if p.name.lower().startswith(prefixes)]
    if chosen or strict:
        return chosen
    others = tuple(q for s, ps in SPLIT_PREFIXES.items() if s != split for q in ps)
    return [p for p in files if not p.name.lower().startswith(others)]


def _npz_memmap(path: Path, key: str = "data") -> Optional[np.ndarray]:
    """Memory-map ``key`` of an npz file if it is stored uncompressed, else None."""
    with zipfile.ZipFile(path) as zf:
        try:
            info = zf.getinfo(key + ".npy")
        except KeyError:
            return None
        if info.compress_type != zipfile.ZIP_STORED:
            return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject:
        return None
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")


def _load_batch(path: Path) -> np.ndarray:
    """Read the ``data`` array of one batch file (npz or pickle)."""
    try:
        if path.name.lower().endswith(".npz"):
            mapped = _npz_memmap(path)
            if mapped is not None:
                return mapped
            with np.load(path, allow_pickle=False) as npz:
                if "data" not in npz.files:
                    raise DataError(f"{path}: npz file has no 'data' array (keys: {npz.files})")
                return npz["data"]
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except DataError:
        raise
    except Exception as e:  # corrupt zip, truncated pickle, wrong format ...
        raise DataError(f"cannot read batch file {path}: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict):
        for key in ("data", b"data"):
            if key in obj:
                return np.asarray(obj[key])
        raise DataError(f"{path}: pickled dict has no 'data' entry (keys: {list(obj)[:10]})")
    raise DataError(f"{path}: expected a pickled dict with a 'data' entry, got {type(obj).__name__}")


def read_batch_labels(path: "os.PathLike[str] | str") -> Optional[np.ndarray]:
    """The ``labels`` entry of a batch file (1-based ImageNet class ids), or None if absent."""
    path = Path(path)
    try:
        if path.name.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as npz:
                return np.asarray(npz["labels"]) if "labels" in npz.files else None
        with open(path, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
    except Exception as e:
        raise DataError(f"cannot read batch file {path}: {type(e).__name__}: {e}") from e
    if isinstance(obj, dict):
        for key in ("labels", b"labels"):
            if key in obj:
                return np.asarray(obj[key])
    return None


class BatchFileImageSet(ImageSet):
    """Concatenation of the rows of several batch files, in file order."""

    def __init__(
        self,
        files: Sequence["os.PathLike[str] | str"],
        *,
        name: str,
        image_size: int,
        channels: int,
        num_levels: int,
        cache_files: int = 2,
    ) -> None:
        super().__init__(name=name, image_size=image_size, channels=channels, num_levels=num_levels)
        if not files:
            raise DataError(f"{name}: no batch files given")
        self.files = [Path(f) for f in files]
        self._row = channels * image_size * image_size
        self._cache: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._cache_files = max(1, int(cache_files))
        self._lock = threading.RLock()
        counts = [len(self._rows(k)) for k in range(len(self.files))]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self._starts[-1] == 0:
            raise DataError(f"{name}: batch files {[str(f) for f in self.files]} contain no images")

    def _rows(self, k: int) -> np.ndarray:
        """The (N, C*S*S) data of file ``k``, from the cache when possible."""
        with self._lock:
            if k in self._cache:
                self._cache.move_to_end(k)
                return self._cache[k]
            data = _load_batch(self.files[k])
            data = self._validate(data, self.files[k])
            self._cache[k] = data
            limit = self._cache_files
            # memory maps cost nothing to keep; only count fully loaded arrays
            while sum(not isinstance(v, np.memmap) for v in self._cache.values()) > limit:
                victim = next(key for key, v in self._cache.items() if not isinstance(v, np.memmap))
                del self._cache[victim]
            return data

    def _validate(self, data: np.ndarray, path: Path) -> np.ndarray:
        if data.ndim == 4 and data.shape[1:] == self.shape:
            data = data.reshape(len(data), -1)
        if data.ndim != 2 or data.shape[1] != self._row:
            s = self.image_size
            guess = ""
            if data.ndim == 2 and data.shape[1] % self.channels == 0:
                side = int(round((data.shape[1] // self.channels) ** 0.5))
                if side * side * self.channels == data.shape[1]:
                    guess = f" (that is {side}x{side} images)"
            raise DataError(
                f"{path}: expected rows of {self._row} values ({self.channels}x{s}x{s} images), "
                f"got data of shape {data.shape}{guess}; batch files cannot be resized, use the "
                f"matching resolution's batches or set data.image_size"
            )
        if data.dtype != np.uint8:
            data = as_levels(np.asarray(data), self.num_levels, str(path))
        return data

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self) -> dict:
        # locks cannot be pickled, and loaded batches should not travel to worker processes
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def _locate(self, i: int) -> tuple[int, int]:
        k = bisect.bisect_right(self._starts, i) - 1
        return k, i - int(self._starts[k])

    def _load(self, i: int) -> np.ndarray:
        k, j = self._locate(i)
        return np.asarray(self._rows(k)[j]).reshape(self.shape)

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray([self._index(i) for i in indices], dtype=np.int64)
        out = np.empty((len(idx),) + self.shape, dtype=np.uint8)
        if not len(idx):
            return out
        ks = np.searchsorted(self._starts, idx, side="right") - 1
        for k in np.unique(ks):
            sel = np.nonzero(ks == k)[0]
            rows = idx[sel] - self._starts[k]
            out[sel] = np.asarray(self._rows(int(k))[rows]).reshape((len(sel),) + self.shape)
        if self.num_levels < 256:
            as_levels(out, self.num_levels, f"{self.name} batch files")
        return out

    def describe(self, i: int) -> str:
        k, j = self._locate(self._index(i))
        return f"{self.files[k]} [row {j}]"
