"""Decoded levels as the PNG files decode.py writes: <i:05d>.png, mode L or RGB.

Levels: with num_levels = 256 the pixel values are the levels. With fewer levels, `raw` writes
the level values 0..K-1 themselves, which is what `data=folder` reads back, so re-encoding the
output gives the same file; `scaled` writes round(k * 255 / (K - 1)) for viewing (also exactly
invertible, but not what the folder reader expects).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np

from .decode_errors import DecodeError

LEVEL_MODES = ("raw", "scaled")


def png_name(number: int) -> str:
    return f"{number:05d}.png"


def to_pixels(levels: np.ndarray, num_levels: int, mode: str) -> np.ndarray:
    """(C, H, W) levels to (H, W) or (H, W, 3) uint8 pixels (see the module doc for `mode`)."""
    levels = np.asarray(levels, dtype=np.int64)
    if mode == "scaled" and num_levels < 256:
        levels = (levels * 255 + (num_levels - 1) // 2) // (num_levels - 1)
    pixels = levels.astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


def write_pngs(images: Sequence[np.ndarray], output_dir: str, num_levels: int, mode: str, overwrite: bool,
               numbers: Optional[List[int]] = None) -> List[str]:
    """Image k as <numbers[k]:05d>.png (default numbers: 0, 1, …); an existing file is never
    replaced unless `overwrite`."""
    from PIL import Image

    os.makedirs(output_dir, exist_ok=True)
    numbers = list(range(len(images))) if numbers is None else numbers
    paths = [os.path.join(output_dir, png_name(i)) for i in numbers]
    if not overwrite:
        existing = [p for p in paths if os.path.exists(p)]
        if existing:
            raise DecodeError(f"{existing[0]} exists ({len(existing)} files would be replaced); "
                              "choose an empty output_dir or pass overwrite=true")
    for path, image in zip(paths, images):
        Image.fromarray(to_pixels(image, num_levels, mode)).save(path)
    return paths
