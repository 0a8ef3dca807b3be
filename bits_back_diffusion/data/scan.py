"""Checking every picture of a folder before anything is coded.

A file that cannot be decoded, is too large, or whose samples decode.py could not write back
identically would otherwise stop a run after earlier pictures were coded, or be changed silently.
Decoding each file once is cheap next to coding it, so the scan reads them all and reports every
problem in one error: the files (the first few and a count), why, and each kind of fix once.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

from . import images
from .errors import DataError, ImageFileError
from .formats import exact_format_name

SHOWN_FILES = 10


_NEEDS_COPIES = ("convert", "deep", "channels")


def _fixes(channels: int, num_levels: int, image_size: Optional[int]) -> dict:
    other = 4 - channels  # 1 <-> 3
    return {
        "damaged": "damaged files: replace them with intact copies or move them out of the folder",
        "too_large": f"pictures over the bound: cut them into parts of at most {images.MAX_PICTURE_PIXELS} pixels",
        "convert": "alpha, palette, CMYK or other bit depths: code 8-bit copies (command below)",
        "deep": "16-bit pictures: the models code 8-bit samples, so these cannot be coded losslessly; if dropping "
                "their low 8 bits is acceptable, code 8-bit copies (command below)",
        "channels": f"pictures with {other} channel(s): use data.channels={other} with a model for {other}-channel "
                    f"data, or code {channels}-channel copies (command below)",
        "levels": f"samples above level {num_levels - 1}: use data.num_levels=256 with a model for 256 levels",
        "size": f"pictures not {image_size}x{image_size}: set data.resize=true to downsample them, or use "
                "data=folder, which cuts pictures of any size into tiles",
    }


def _check_file(path: str, channels: int, num_levels: int,
                image_size: Optional[int]) -> Tuple[Optional[Tuple[int, int]], Optional[ImageFileError]]:
    """(height, width) of one file, or the reason it cannot be coded exactly."""
    try:
        pixels = images.exact_pixels(path, channels)
    except ImageFileError as exc:
        return None, exc
    except DataError as exc:  # unexpected, but still a bad file rather than a crash
        return None, ImageFileError(str(exc), path, str(exc), "damaged")
    height, width = pixels.shape[1:]
    top = int(pixels.max()) if pixels.size else 0
    if top >= num_levels:
        reason = f"values must be levels in [0, {num_levels - 1}] (data.num_levels={num_levels}), found {top}"
        return None, ImageFileError(f"{path}: {reason}", path, reason, "levels")
    if image_size is not None and (height, width) != (image_size, image_size):
        reason = f"expected a {image_size}x{image_size} image, got {width}x{height} (width x height)"
        return None, ImageFileError(f"{path}: {reason}", path, reason, "size")
    return (int(height), int(width)), None


def check_image_files(files: Sequence[str], *, channels: int, num_levels: int, root: str = "",
                      image_size: Optional[int] = None, workers: Optional[int] = None) -> List[Tuple[int, int]]:
    """Decode every file and return their (height, width); raise one DataError listing every file
    that is unreadable, over MAX_PICTURE_PIXELS, not restorable exactly for `channels`, outside
    `num_levels`, or (when `image_size` is given) of another size."""
    workers = max(1, min(4, os.cpu_count() or 1) if workers is None else int(workers))
    jobs = [os.fspath(f) for f in files]
    check = lambda path: _check_file(path, channels, num_levels, image_size)  # noqa: E731
    if workers == 1 or len(jobs) < 16:
        results = [check(path) for path in jobs]
    else:
        with ThreadPoolExecutor(workers, thread_name_prefix="bbd-scan") as pool:
            results = list(pool.map(check, jobs))
    bad = [error for _, error in results if error is not None]
    if bad:
        raise DataError(_report(bad, len(jobs), channels, num_levels, root, image_size))
    return [size for size, _ in results]


def _report(bad: List[ImageFileError], total: int, channels: int, num_levels: int, root: str,
            image_size: Optional[int]) -> str:
    where = f"{root!r} (absolute path: {os.path.abspath(root)})" if root else "the data"
    lines = [f"{len(bad)} of {total} image files in {where} cannot be coded losslessly; nothing was coded:"]
    for error in bad[:SHOWN_FILES]:
        name = os.path.relpath(error.path, root) if root else error.path
        lines.append(f"  {name}: {error.reason}")
    if len(bad) > SHOWN_FILES:
        lines.append(f"  ... and {len(bad) - SHOWN_FILES} more")
    levels = f"levels 0..{num_levels - 1}" if num_levels < 256 else "all 256 levels"
    lines.append(f"data.channels={channels}, data.num_levels={num_levels} codes {exact_format_name(channels)} "
                 f"pictures ({levels}) and restores them exactly. To fix:")
    fixes = _fixes(channels, num_levels, image_size)
    kinds = list(dict.fromkeys(error.fix for error in bad))
    lines += [f"  - {fixes[kind]}" for kind in kinds]
    if any(kind in _NEEDS_COPIES for kind in kinds):
        lines.append(f"  copies: python -m bits_back_diffusion.data.convert {root or '<folder>'} <new folder> "
                     f"--channels {channels}  (then the copies, not the originals, are what comes back)")
    return "\n".join(lines)
