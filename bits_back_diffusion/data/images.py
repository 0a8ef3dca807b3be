"""Reading one image file into levels, and the canonical downsampling to a square.

The downsampling is shared by the loader and by ``datasets/imagenet64.py`` so
that images converted ahead of time and images resized on the fly are identical.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# Modes whose samples do not fit in 8 bits; converting them would silently
# change the data we are supposed to compress losslessly.
_WIDE_MODES = {"I", "F", "I;16", "I;16B", "I;16L", "I;16N", "I;32", "I;32B"}

PathLike = Union[str, "os.PathLike[str]"]


def is_image_file(name: str) -> bool:
    """True for file names with a supported image extension (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def center_crop_square(img: Image.Image) -> Image.Image:
    """Crop the largest centred square."""
    w, h = img.size
    side = min(w, h)
    if w == h:
        return img
    left = (w - side) // 2
    top = (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def downsample_square(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square, halve with a box filter while still at least twice
    the target, then finish with one bicubic resize.

    Halving first avoids the aliasing a single large bicubic step would produce
    (the same recipe the downsampled-ImageNet and improved-DDPM pipelines use).
    """
    img = center_crop_square(img)
    while img.size[0] >= 2 * size:
        half = img.size[0] // 2
        img = img.resize((half, half), resample=Image.BOX)
    if img.size[0] != size:
        img = img.resize((size, size), resample=Image.BICUBIC)
    return img


def to_mode(img: Image.Image, channels: int, where: str) -> Image.Image:
    """Convert to 8-bit RGB (channels 3) or L (channels 1), refusing >8-bit images."""
    if img.mode in _WIDE_MODES:
        raise DataError(f"{where}: image mode {img.mode!r} has more than 8 bits per sample; not supported")
    target = "RGB" if channels == 3 else "L"
    if img.mode == target:
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert(target)


def open_image(path: PathLike) -> Image.Image:
    """Open and fully decode an image, turning any decoder failure into a DataError."""
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except FileNotFoundError as e:
        raise DataError(f"image file not found: {path}") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    return img


def read_image(path: PathLike, *, image_size: int, channels: int, resize: bool) -> np.ndarray:
    """Load ``path`` as a (channels, image_size, image_size) uint8 array.

    Images already at the target size are used as they are. Others are
    downsampled when ``resize`` is true and rejected otherwise, because a
    silent resize would change what is being compressed.
    """
    img = to_mode(open_image(path), channels, str(path))
    if img.size != (image_size, image_size):
        if not resize:
            w, h = img.size
            raise DataError(
                f"{path}: expected a {image_size}x{image_size} image, got {w}x{h} (width x height); "
                f"set data.resize=true to downsample, or prepare the images at {image_size}x{image_size}"
            )
        img = downsample_square(img, image_size)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)
