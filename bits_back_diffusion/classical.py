"""Sizes of the same images under classical lossless codecs, to show where a model stands.

Images are stored as 8-bit pixels holding the raw level values (0 … K−1), which is lossless
for every K ≤ 256; bits/dim divide by the same number of dimensions as the bits-back rates.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Dict, Optional

import numpy as np
from PIL import Image

Encoder = Callable[[np.ndarray], int]


def _pil(img_hwc: np.ndarray) -> Image.Image:
    return Image.fromarray(img_hwc[..., 0] if img_hwc.shape[-1] == 1 else img_hwc)


def png_bytes(img_hwc: np.ndarray) -> int:
    buf = io.BytesIO()
    _pil(img_hwc).save(buf, format="PNG", optimize=True)
    return len(buf.getvalue())


def webp_bytes(img_hwc: np.ndarray) -> int:
    buf = io.BytesIO()
    _pil(img_hwc).save(buf, format="WEBP", lossless=True, quality=100, method=6)
    return len(buf.getvalue())


def jpegxl_bytes(img_hwc: np.ndarray) -> Optional[int]:
    """JPEG-XL lossless at maximum effort, if imagecodecs has it (the `test` extra installs it)."""
    try:
        import imagecodecs
    except ImportError:
        return None
    if not getattr(imagecodecs, "JPEGXL", None) or not imagecodecs.JPEGXL.available:
        return None
    data = img_hwc[..., 0] if img_hwc.shape[-1] == 1 else img_hwc
    return len(imagecodecs.jpegxl_encode(data, lossless=True, effort=9))


CODECS: Dict[str, Callable[[np.ndarray], Optional[int]]] = {"png": png_bytes, "webp": webp_bytes, "jpegxl": jpegxl_bytes}


def mosaic(images_nchw: np.ndarray) -> np.ndarray:
    """All images tiled row-major into one near-square HWC image (unused cells stay 0)."""
    n, c, h, w = images_nchw.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    canvas = np.zeros((rows * h, cols * w, c), dtype=np.uint8)
    for i, img in enumerate(images_nchw):
        r, k = divmod(i, cols)
        canvas[r * h:(r + 1) * h, k * w:(k + 1) * w] = img.transpose(1, 2, 0)
    return canvas


def classical_sizes(images_nchw: np.ndarray) -> Dict[str, int]:
    """Bytes each classical codec stores for the images: per image (summed over the files) and as
    one mosaic file. Codecs not installed are left out."""
    images = np.asarray(images_nchw)
    if images.min() < 0 or images.max() > 255:
        raise ValueError("classical codecs need levels in [0, 255]")
    images = images.astype(np.uint8)
    out: Dict[str, int] = {}
    big = mosaic(images)
    for name, encode in CODECS.items():
        per_image = [encode(img.transpose(1, 2, 0)) for img in images]
        if any(v is None for v in per_image):
            continue
        out[f"{name}_per_image"] = int(sum(per_image))
        out[f"{name}_mosaic"] = int(encode(big))
    return out


def classical_rates(images_nchw: np.ndarray, sizes: Optional[Dict[str, int]] = None) -> Dict[str, float]:
    """bits/dim of each classical codec, per image (summed over images) and as one mosaic."""
    dims = np.asarray(images_nchw).size
    sizes = classical_sizes(images_nchw) if sizes is None else sizes
    return {name: 8.0 * size / dims for name, size in sizes.items()}


_LABELS = {"png": "PNG", "webp": "WebP", "jpegxl": "JPEG-XL"}


def comparison_line(file_bytes: int, dims: int, sizes: Dict[str, int]) -> str:
    """The .bbd file next to the classical files, all in stored bytes (headers included) and
    bits/dim, so what is compared is what would be kept on disk."""
    parts = [f"rate_file {8.0 * file_bytes / dims:.4f} bits/dim ({file_bytes:,} B, header included)"]
    for name, label in _LABELS.items():
        if f"{name}_mosaic" in sizes:
            mosaic_bytes, per_image = sizes[f"{name}_mosaic"], sizes[f"{name}_per_image"]
            parts.append(f"{label} {8.0 * mosaic_bytes / dims:.4f} ({mosaic_bytes:,} B as one mosaic; "
                         f"{8.0 * per_image / dims:.4f}, {per_image:,} B per image)")
    return " | ".join(parts)
