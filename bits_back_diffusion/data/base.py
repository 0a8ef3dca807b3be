"""The interface every dataset implements, plus an in-memory implementation.

Codecs work on integer *levels* (0..num_levels-1), not on pixel floats, so a
dataset hands out uint8 arrays of levels with a fixed (C, H, W) shape and checks
them once at the boundary instead of every consumer re-checking.
"""

from __future__ import annotations

import abc
from typing import List, Sequence

import numpy as np

from .errors import DataError


class ImageSet(abc.ABC):
    """A fixed-order, random-access collection of images given as integer levels.

    Items are uint8 arrays of shape (channels, image_size, image_size) with values
    in [0, num_levels - 1]. Order is stable so that an index identifies an image
    across runs (needed to resume evaluation and to shard it across ranks).
    """

    def __init__(self, *, name: str, image_size: int, channels: int, num_levels: int) -> None:
        if not 2 <= int(num_levels) <= 256:
            raise DataError(f"num_levels must be between 2 and 256 for uint8 images, got {num_levels}")
        if int(channels) not in (1, 3):
            raise DataError(f"channels must be 1 or 3, got {channels}")
        if int(image_size) < 1:
            raise DataError(f"image_size must be positive, got {image_size}")
        self.name = str(name)
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.num_levels = int(num_levels)
        # pictures under a data folder that are not read (other formats, hidden): named in a warning
        self.skipped: list[str] = []

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape of one item, (C, H, W)."""
        return (self.channels, self.image_size, self.image_size)

    @abc.abstractmethod
    def __len__(self) -> int:
        ...

    @abc.abstractmethod
    def _load(self, i: int) -> np.ndarray:
        """Return item ``i`` (already a valid index) as a (C, H, W) integer array."""

    def describe(self, i: int) -> str:
        """Human-readable origin of item ``i`` (file path, row, ...) for error messages."""
        return f"{self.name} item {i}"

    def _index(self, i: int) -> int:
        n = len(self)
        i = int(i)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {self.name} dataset of {n} images")
        return i

    def __getitem__(self, i: int) -> np.ndarray:
        i = self._index(i)
        return self.check(self._load(i), i)

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        """Stack several items into a (B, C, H, W) uint8 array.

        Subclasses with a faster bulk path (arrays, batch files) override this.
        """
        out = np.empty((len(indices),) + self.shape, dtype=np.uint8)
        for row, i in enumerate(indices):
            out[row] = self[i]
        return out

    def mismatches_on_disk(self, ids: Sequence[int], decoded: np.ndarray) -> List[str]:
        """The items among `ids` whose `decoded` levels are not the pixels of their files as they are on
        disk now, each described for an error message.

        get_batch may transform a file (convert, resample, pad); this re-reads the file itself, so
        a passing check means the original comes back. Datasets not read from picture files have
        nothing to add to get_batch and return [].
        """
        return []

    def check(self, arr: np.ndarray, i: int) -> np.ndarray:
        """Validate one item's shape and level range; return it as uint8."""
        arr = np.asarray(arr)
        if arr.shape != self.shape:
            raise DataError(
                f"{self.describe(i)}: expected an image of shape {self.shape} (C, H, W), got {arr.shape}"
            )
        return as_levels(arr, self.num_levels, self.describe(i))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, n={len(self)}, shape={self.shape}, "
            f"num_levels={self.num_levels})"
        )


def as_levels(arr: np.ndarray, num_levels: int, where: str) -> np.ndarray:
    """Return ``arr`` as uint8 after checking every value is a level in [0, num_levels)."""
    arr = np.asarray(arr)
    if arr.dtype == np.uint8:
        if num_levels < 256 and arr.size and int(arr.max()) >= num_levels:
            raise DataError(
                f"{where}: values must be levels in [0, {num_levels - 1}], found {int(arr.max())}"
            )
        return arr
    if arr.dtype.kind == "f":
        if arr.size and not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{where}: values must be integer levels, found non-integer floats")
    elif arr.dtype.kind not in "iub":
        raise DataError(f"{where}: expected integer levels, got dtype {arr.dtype}")
    if arr.size:
        lo, hi = arr.min(), arr.max()
        if lo < 0 or hi >= num_levels:
            raise DataError(
                f"{where}: values must be levels in [0, {num_levels - 1}], found range [{lo}, {hi}]"
            )
    return arr.astype(np.uint8)


class ArrayImageSet(ImageSet):
    """Images already held in memory as an (N, C, H, W) array, validated once up front."""

    def __init__(self, images: np.ndarray, *, name: str, num_levels: int, source: str = "") -> None:
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[2] != images.shape[3]:
            raise DataError(f"{name}: expected an (N, C, S, S) array of images, got shape {images.shape}")
        super().__init__(
            name=name, image_size=images.shape[2], channels=images.shape[1], num_levels=num_levels
        )
        self._source = source or name
        self.images = np.ascontiguousarray(as_levels(images, num_levels, self._source))

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, i: int) -> np.ndarray:
        return self.images[i]

    def get_batch(self, indices: Sequence[int]) -> np.ndarray:
        idx = np.asarray([self._index(i) for i in indices], dtype=np.int64)
        return self.images[idx]

    def describe(self, i: int) -> str:
        return f"{self._source} #{i}"
