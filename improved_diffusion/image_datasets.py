"""Training data in improved-diffusion's interface: ``load_data`` and ``ImageDataset``.

Kept API-compatible with openai/improved-diffusion so training code written
for it runs unchanged. Files are listed and opened through ``blobfile`` so
data may also live on cloud storage. Standalone on purpose: nothing here
imports ``bits_back_diffusion``.
"""

from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import blobfile as bf
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "gif")


def _mpi_rank_and_size() -> Tuple[int, int]:
    """(rank, world size) from MPI when available, else (0, 1).

    Imported lazily because initialising MPI is slow and may fail outside a
    launcher; single-process training must not depend on it.
    """
    try:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        return comm.Get_rank(), comm.Get_size()
    except Exception:
        return 0, 1


def list_image_files(data_dir: str) -> List[str]:
    """Image files under ``data_dir`` (recursively), in sorted order."""
    found: List[str] = []
    for name in sorted(bf.listdir(data_dir)):
        path = bf.join(data_dir, name)
        ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
        if ext in IMAGE_EXTENSIONS:
            found.append(path)
        elif bf.isdir(path):
            found.extend(list_image_files(path))
    return found


def class_labels(paths: Sequence[str]) -> List[int]:
    """Integer class per file: the file name up to its first '_', numbered in sorted order."""
    names = [bf.basename(p).split("_", 1)[0] for p in paths]
    index = {name: i for i, name in enumerate(sorted(set(names)))}
    return [index[n] for n in names]


def load_data(
    *,
    data_dir: str,
    batch_size: int,
    image_size: int,
    class_cond: bool = False,
    deterministic: bool = False,
) -> Iterator[Tuple[torch.Tensor, dict]]:
    """Endless batches ``(images, kwargs)`` for training.

    ``images`` is an NCHW float tensor in [-1, 1]; ``kwargs`` holds ``"y"``
    (int64 class labels) when ``class_cond``. Each MPI rank reads a disjoint
    shard of the files. Batches are shuffled unless ``deterministic``.
    """
    if not data_dir:
        raise ValueError("load_data needs a data_dir")
    paths = list_image_files(data_dir)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {data_dir}")
    classes = class_labels(paths) if class_cond else None
    rank, size = _mpi_rank_and_size()
    dataset = ImageDataset(image_size, paths, classes=classes, shard=rank, num_shards=size)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=not deterministic, num_workers=1, drop_last=True
    )
    while True:
        yield from loader


def _resize_and_crop(img: Image.Image, resolution: int) -> Image.Image:
    """Shorter side to ``resolution`` (box-halving first to limit aliasing), then centre crop."""
    while min(img.size) >= 2 * resolution:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = resolution / min(img.size)
    img = img.resize(tuple(max(resolution, round(s * scale)) for s in img.size), resample=Image.BICUBIC)
    left = (img.size[0] - resolution) // 2
    top = (img.size[1] - resolution) // 2
    return img.crop((left, top, left + resolution, top + resolution))


class ImageDataset(Dataset):
    """Image files as (CHW float32 array in [-1, 1], {"y": label} or {}).

    ``shard``/``num_shards`` keep every ``num_shards``-th file starting at
    ``shard`` so that MPI ranks see disjoint data.
    """

    def __init__(
        self,
        resolution: int,
        image_paths: Sequence[str],
        classes: Optional[Sequence[int]] = None,
        shard: int = 0,
        num_shards: int = 1,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.local_images = list(image_paths)[shard::num_shards]
        self.local_classes = None if classes is None else list(classes)[shard::num_shards]

    def __len__(self) -> int:
        return len(self.local_images)

    def __getitem__(self, idx: int):
        path = self.local_images[idx]
        with bf.BlobFile(path, "rb") as f:
            img = Image.open(f)
            img.load()
        img = _resize_and_crop(img.convert("RGB"), self.resolution)
        arr = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        out = {}
        if self.local_classes is not None:
            out["y"] = np.array(self.local_classes[idx], dtype=np.int64)
        return np.transpose(arr, (2, 0, 1)), out
