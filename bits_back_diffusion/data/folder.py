"""A dataset backed by a directory tree of image files (PNG/JPEG)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .base import ImageSet
from .errors import DataError
from .images import IMAGE_EXTENSIONS, is_image_file, read_image


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
    ) -> None:
        super().__init__(name=name, image_size=image_size, channels=channels, num_levels=num_levels)
        self.root = Path(root)
        self.resize = bool(resize)
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

    def describe(self, i: int) -> str:
        return self.files[i]
