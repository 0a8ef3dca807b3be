"""scikit-learn's bundled 8x8 handwritten digits: a tiny dataset needing no download.

Pixel values are counts 0..16, i.e. 17 levels, which exercises codecs at a
level count other than 256.
"""

from __future__ import annotations

import numpy as np

from .base import ArrayImageSet
from .errors import DataError

DIGITS_LEVELS = 17
DIGITS_SIZE = 8
DIGITS_TRAIN = 1500  # the remaining 297 of 1797 are the validation split


def load_digits_levels() -> np.ndarray:
    """All 1797 digits as a (1797, 1, 8, 8) uint8 array of levels 0..16."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    levels = np.rint(images).astype(np.uint8)
    if not np.array_equal(levels, images):
        raise DataError("sklearn digits: expected integer pixel values 0..16")
    return levels[:, None]


def open_digits(split: str, *, image_size: int = 8, channels: int = 1, num_levels: int = 17) -> ArrayImageSet:
    """The digits split ``train`` (first 1500) or ``val`` (last 297)."""
    if int(image_size) != DIGITS_SIZE or int(channels) != 1:
        raise DataError(
            f"digits: the images are {DIGITS_SIZE}x{DIGITS_SIZE} with 1 channel; the config asks for "
            f"image_size={image_size}, channels={channels}"
        )
    if int(num_levels) < DIGITS_LEVELS:
        raise DataError(f"digits: pixel values go up to 16, so num_levels must be >= 17, got {num_levels}")
    images = load_digits_levels()
    images = images[:DIGITS_TRAIN] if split == "train" else images[DIGITS_TRAIN:]
    return ArrayImageSet(images, name="digits", num_levels=int(num_levels), source=f"sklearn digits ({split})")
