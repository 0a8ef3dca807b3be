"""Classical lossless codecs on the same images (the comparison encode.py prints)."""
from __future__ import annotations

import numpy as np
import pytest

from bits_back_diffusion.classical import classical_rates, mosaic


def test_mosaic_places_every_image():
    images = np.arange(5)[:, None, None, None] * np.ones((5, 1, 2, 3), np.uint8)
    canvas = mosaic(images)
    assert canvas.shape == (4, 9, 1)  # 3 columns, 2 rows
    assert canvas[2, 3, 0] == 4 and canvas[0, 6, 0] == 2 and canvas[3, 8, 0] == 0


def test_rates_order_constant_below_noise():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (4, 3, 16, 16)).astype(np.uint8)
    flat = np.full((4, 3, 16, 16), 7, np.uint8)
    noisy, constant = classical_rates(noise), classical_rates(flat)
    for key in ("png_per_image", "png_mosaic", "webp_per_image", "webp_mosaic"):
        assert constant[key] < 1.0 < noisy[key]
    assert noisy["png_mosaic"] == pytest.approx(8.0, rel=0.1)  # random bytes do not compress


def test_levels_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="0, 255"):
        classical_rates(np.full((1, 1, 2, 2), 300))
