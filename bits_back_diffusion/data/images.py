"""Reading one image file into levels, and the canonical downsampling to a square.

The downsampling is shared by the loader and by ``datasets/imagenet64.py`` so
that images converted ahead of time and images resized on the fly are identical.
"""

from __future__ import annotations

import os
import struct
from typing import Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import DataError, ImageFileError
from .formats import PNG_HEAD_BYTES, FileFormat, exact_format_name, file_format, format_problem, read_png_ihdr

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

# The largest picture read: 8192 x 8192. Larger ones are refused from their header before any pixel
# is decoded. One picture is held as uint8 (192 MiB in RGB at the bound) next to its tiles, so a
# tiled picture at the bound needs well under 1 GiB; the bound also lies below Pillow's own
# decompression-bomb threshold (89.5 Mpixels), so Pillow never warns about an accepted picture.
MAX_PICTURE_PIXELS = 8192 * 8192

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
    """Convert to 8-bit RGB (channels 3) or L (channels 1), refusing >8-bit images.

    Only for pictures that are resampled anyway (data.resize=true); exact reads use exact_pixels.
    """
    if img.mode in _WIDE_MODES:
        raise DataError(f"{where}: image mode {img.mode!r} has more than 8 bits per sample; not supported")
    target = "RGB" if channels == 3 else "L"
    if img.mode == target:
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert(target)


def open_image_file(path: PathLike) -> Tuple[Image.Image, FileFormat]:
    """Open and fully decode an image, with its format as stored in the file.

    Pictures over MAX_PICTURE_PIXELS are refused from their header, before any pixel is decoded;
    truncated or corrupt files fail in the full decode. Either is an ImageFileError naming the file.
    """
    where = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(PNG_HEAD_BYTES)
            ihdr = read_png_ihdr(head)
            if ihdr is not None and ihdr[0] * ihdr[1] > MAX_PICTURE_PIXELS:  # before Pillow sees it
                raise _too_large(where, f"{ihdr[0]}x{ihdr[1]}")
            f.seek(0)
            img = Image.open(f)
            width, height = img.size
            if width * height > MAX_PICTURE_PIXELS:
                raise _too_large(where, f"{width}x{height}")
            img.load()
            fmt = file_format(img, head)  # while the file is open: a GIF's or TIFF's frame count seeks in it
    except ImageFileError:
        raise
    except FileNotFoundError as e:
        raise ImageFileError(f"image file not found: {where}", where, "not found", "damaged") from e
    except Image.DecompressionBombError as e:  # Pillow refused the header itself (its own, larger bound)
        raise _too_large(where, "the size in its header") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        reason = f"unreadable, truncated or corrupt ({e})"
        raise ImageFileError(f"cannot read image {where}: {reason}", where, reason, "damaged") from e
    return img, fmt


def _too_large(where: str, size: str) -> ImageFileError:
    reason = f"{size} is larger than the {MAX_PICTURE_PIXELS} pixels a picture may have (MAX_PICTURE_PIXELS)"
    return ImageFileError(f"{where}: {reason}", where, reason, "too_large")


def open_image(path: PathLike) -> Image.Image:
    """Open and fully decode an image, turning any decoder failure into a DataError."""
    return open_image_file(path)[0]


def exact_pixels(path: PathLike, channels: int) -> np.ndarray:
    """The samples of ``path`` as a (channels, H, W) uint8 array, exactly as stored.

    Refuses (ImageFileError) every file whose samples decode.py could not write back identically:
    alpha, palettes, bit depths other than 8, CMYK, and gray for 3 channels or RGB for 1.
    """
    where = os.fspath(path)
    img, fmt = open_image_file(path)
    problem = format_problem(fmt, channels)
    if problem is not None:
        reason, fix = problem
        raise ImageFileError(f"{where}: {fmt.describe()}: {reason}; data.channels={channels} codes "
                             f"{exact_format_name(channels)} exactly", where, f"{fmt.describe()}: {reason}", fix)
    arr = np.asarray(img, dtype=np.uint8)
    return np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1))


def read_image(path: PathLike, *, image_size: int, channels: int, resize: bool) -> np.ndarray:
    """Load ``path`` as a (channels, image_size, image_size) uint8 array.

    Images already at the target size are used as they are (exact_pixels: a file whose samples
    cannot come back exactly is refused). Others are downsampled when ``resize`` is true and
    rejected otherwise, because a silent resize would change what is being compressed.
    """
    if not resize:
        arr = exact_pixels(path, channels)
        if arr.shape[1:] != (image_size, image_size):
            h, w = arr.shape[1:]
            raise DataError(
                f"{path}: expected a {image_size}x{image_size} image, got {w}x{h} (width x height); "
                f"set data.resize=true to downsample, or prepare the images at {image_size}x{image_size}"
            )
        return arr
    img = to_mode(open_image(path), channels, str(path))
    if img.size != (image_size, image_size):
        img = downsample_square(img, image_size)
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)
