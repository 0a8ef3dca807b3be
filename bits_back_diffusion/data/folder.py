"""A dataset backed by a directory tree of image files (PNG/JPEG)."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .base import ImageSet
from .errors import DataError
from .images import IMAGE_EXTENSIONS, exact_pixels, is_image_file, read_image


def list_image_files(root: "os.PathLike[str] | str") -> list[str]:
    """All image files under ``root``, recursively, sorted by relative path.

    Sorting makes the order independent of the filesystem so that item indices
    are reproducible; hidden files (e.g. macOS ``._x.png``) are skipped.
    """
    root = os.fspath(root)
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            if is_image_file(name):
                found.append(name if rel == "." else os.path.join(rel, name))
    found.sort()
    return [os.path.join(root, f) for f in found]


class FolderImageSet(ImageSet):
    """Images read lazily from files under one folder, in sorted order.

    With ``resize`` false every file must already have the target size; with it
    true larger (or differently shaped) images are centre-cropped and
    downsampled, which also covers full-resolution ImageNet folders.
    """

    def __init__(
        self,
        root: "os.PathLike[str] | str",
        *,
        name: str,
        image_size: int,
        channels: int,
        num_levels: int,
        resize: bool = False,
        files: Optional[Sequence[str]] = None,
        missing_hint: str = "",
        workers: Optional[int] = None,
    ) -> None:
        super().__init__(name=name, image_size=image_size, channels=channels, num_levels=num_levels)
        self.root = Path(root)
        self.resize = bool(resize)
        # Decoding large files releases the GIL, so threads pay off when full-resolution images
        # are downsampled; for small files their overhead outweighs the gain.
        if workers is None:
            workers = min(8, os.cpu_count() or 1) if self.resize else 1
        self.workers = max(1, int(workers))
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_lock = threading.Lock()
        if files is None:
            if not self.root.is_dir():
                what = "is not a folder" if self.root.exists() else "does not exist"
                raise DataError(
                    f"{name} data folder {str(self.root)!r} {what} (absolute path: {self.root.absolute()})."
                    + (f"\n{missing_hint}" if missing_hint else "")
                )
            files = list_image_files(self.root)
        self.files = list(files)
        if not self.files:
            raise DataError(
                f"{name} data folder {str(self.root)!r} (absolute path: {self.root.absolute()}) contains no "
                f"images (looked recursively for {', '.join(IMAGE_EXTENSIONS)} files)."
                + (f"\n{missing_hint}" if missing_hint else "")
            )

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, i: int) -> np.ndarray:
        return read_image(
            self.files[i], image_size=self.image_size, channels=self.channels, resize=self.resize
        )

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        idx = [self._index(i) for i in indices]
        if self.workers == 1 or len(idx) < 8:
            return super().get_batch(idx)
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="bbd-decode")
        out = np.empty((len(idx),) + self.shape, dtype=np.uint8)

        def fill(row: int) -> None:
            out[row] = self.check(self._load(idx[row]), idx[row])

        # list() re-raises the first failure (e.g. a corrupt file) in the caller
        list(self._pool.map(fill, range(len(idx))))
        return out

    def __getstate__(self) -> dict:
        # thread pools cannot be pickled (e.g. when handed to DataLoader workers)
        state = self.__dict__.copy()
        state["_pool"] = None
        state.pop("_pool_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pool_lock = threading.Lock()

    def describe(self, i: int) -> str:
        return self.files[i]

    def mismatches_on_disk(self, ids: Sequence[int], decoded: np.ndarray) -> List[str]:
        if self.resize:  # pictures resampled on request: no file holds the coded pixels
            return []
        out = []
        for i, levels in zip(ids, decoded):
            path = self.files[self._index(i)]
            try:
                pixels = exact_pixels(path, self.channels)  # a fresh read of the file as it is now
            except DataError as exc:
                out.append(f"re-reading for the check: {exc}")
                continue
            difference = describe_difference(pixels, np.asarray(levels))
            if difference:
                out.append(f"{path}: {difference}")
        return out


def describe_difference(pixels: np.ndarray, levels: np.ndarray) -> str:
    """'' when the decoded levels equal the file's pixels, else what differs."""
    if pixels.shape != levels.shape:
        return f"the file holds {pixels.shape} (C, H, W) samples, decoded {levels.shape}"
    differ = int(np.count_nonzero(pixels != levels))
    return f"{differ} of {pixels.size} samples differ from the file" if differ else ""
