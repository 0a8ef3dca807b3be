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


# Pictures in formats the folder reader leaves out; a warning names them, so none is dropped unseen.
OTHER_PICTURE_EXTENSIONS = (".gif", ".tif", ".tiff", ".webp", ".bmp", ".jfif", ".heic", ".heif", ".avif",
                            ".jxl", ".jp2", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico", ".apng")


def list_image_files(root: "os.PathLike[str] | str", skipped: Optional[List[str]] = None) -> list[str]:
    """All image files under ``root``, recursively, sorted by relative path.

    Sorting makes the order independent of the filesystem so that item indices
    are reproducible; hidden files and folders (e.g. macOS ``._x.png``) are skipped.
    ``skipped``, when given, receives the relative paths of what was left out that may hold
    pictures: files of other picture formats, hidden picture files and hidden folders ("name/").
    """
    root = os.fspath(root)
    found: list[str] = []
    left_out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        rel = os.path.relpath(dirpath, root)
        under = (lambda name: name) if rel == "." else (lambda name: os.path.join(rel, name))
        left_out.extend(under(d) + os.sep for d in dirnames if d.startswith("."))
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        _refuse_link_loops(dirpath, dirnames)
        for name in filenames:
            if is_image_file(name):
                found.append(under(name))
            elif name.lower().endswith(IMAGE_EXTENSIONS + OTHER_PICTURE_EXTENSIONS):
                left_out.append(under(name))
    found.sort()
    if skipped is not None:
        skipped.extend(sorted(left_out))
    return [os.path.join(root, f) for f in found]


def skipped_warning(dataset: ImageSet, shown: int = 5) -> Optional[str]:
    """A warning naming the pictures under the data folder that will not be coded, or None."""
    if not dataset.skipped:
        return None
    names = ", ".join(dataset.skipped[:shown]) + (f" and {len(dataset.skipped) - shown} more"
                                                  if len(dataset.skipped) > shown else "")
    return (f"WARNING: {len(dataset.skipped)} file(s) or hidden folder(s) under the data folder are not coded: "
            f"{names} (only {', '.join(IMAGE_EXTENSIONS)} files outside hidden folders are read; save the others "
            f"as PNG if they belong to the data)")


def _refuse_link_loops(dirpath: str, dirnames: Sequence[str]) -> None:
    """A linked folder that contains the folder being listed (a link to itself or to a parent)
    would list the same pictures again and again, about 40 levels deep, and code every copy."""
    here = os.path.realpath(dirpath)
    for name in dirnames:
        link = os.path.join(dirpath, name)
        if not os.path.islink(link):
            continue
        target = os.path.realpath(link)
        if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
            raise DataError(f"{link} links to {target}, which contains {dirpath}: listing it would repeat the same "
                            f"pictures without end; remove the link or point data_dir at a folder without it")


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
            files = list_image_files(self.root, self.skipped)
        self.files = list(files)
        if not self.files:
            left_out = f" Not read: {', '.join(self.skipped[:5])}." if self.skipped else ""
            raise DataError(
                f"{name} data folder {str(self.root)!r} (absolute path: {self.root.absolute()}) contains no "
                f"images (looked recursively for {', '.join(IMAGE_EXTENSIONS)} files outside hidden folders)."
                + left_out + (f"\n{missing_hint}" if missing_hint else "")
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
