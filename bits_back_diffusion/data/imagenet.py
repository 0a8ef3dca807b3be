"""ImageNet 64x64 in whichever of its three common layouts is on disk.

1. Kaggle PNG folders (``train_64x64/``, ``valid_64x64/``);
2. the official downsampled-ImageNet batch files (npz or pickle);
3. full-resolution image folders, downsampled on the fly when resize is on.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import ImageSet
from .batches import BatchFileImageSet, find_batch_files, is_batch_file
from .errors import DataError
from .folder import FolderImageSet


def imagenet_hint(data_dir: "os.PathLike[str] | str", split: str) -> str:
    """How to obtain the data; shown whenever the ImageNet folder is missing or empty."""
    parent = Path(data_dir).parent
    return (
        "ImageNet 64x64 can be given in three ways:\n"
        f"  * the Kaggle PNG folders train_64x64/ and valid_64x64/ (downsampled ImageNet 64x64), "
        f"placed under {parent}/;\n"
        "  * the official batch files from https://image-net.org/download-images (Downsampled "
        "ImageNet 64x64: train_data_batch_1..10 / val_data, npz or pickle) in the data folder, or "
        f"converted to PNG folders with: python datasets/imagenet64.py batches --src <folder with "
        f"the batch files> --out_dir {parent}\n"
        "  * a folder of full-resolution images with data.resize=true (downsampled while loading), or "
        "converted ahead of time with: python datasets/imagenet64.py downsample --src <full-res "
        f"folder> --dest {data_dir}\n"
        "Run `python datasets/imagenet64.py info` for details."
    )


def open_imagenet(
    data_dir: "os.PathLike[str] | str",
    *,
    split: str,
    image_size: int,
    channels: int,
    num_levels: int,
    resize: bool,
    name: str = "imagenet",
) -> ImageSet:
    """Detect the layout of ``data_dir`` and open it.

    Batch files directly inside the folder win over images; a single batch file
    may also be given. If the configured folder is missing but its parent holds
    batch files named for this split (e.g. ``datasets/imagenet/val_data.npz``),
    those are used so the official download works without renaming folders.
    """
    path = Path(data_dir)
    common = dict(name=name, image_size=image_size, channels=channels, num_levels=num_levels)
    if path.is_file():
        if is_batch_file(path):
            return BatchFileImageSet([path], **common)
        raise DataError(f"{path} is a file but not a recognised ImageNet batch file (.npz or pickle).")
    if not path.exists():
        fallback = find_batch_files(path.parent, split, strict=True)
        if fallback:
            return BatchFileImageSet(fallback, **common)
    batch_files = find_batch_files(path, split)
    if batch_files:
        return BatchFileImageSet(batch_files, **common)
    return FolderImageSet(path, resize=resize, missing_hint=imagenet_hint(path, split), **common)
