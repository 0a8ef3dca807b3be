"""8-bit gray or RGB copies of pictures the models cannot code as they are.

    python -m bits_back_diffusion.data.convert <folder or file> <out_dir> --channels 1|3

The folder scan refuses alpha, palettes, CMYK, bit depths other than 8 and the wrong number of
channels, because decode.py could not give such a file back. Converting is a choice the user makes
knowingly: the copies, not the originals, are what a later decode restores (alpha is dropped,
palettes are expanded, 16-bit samples keep their high byte). Copies keep their relative paths, as
PNG files; existing files are never replaced.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

import numpy as np
from PIL import Image

from .errors import DataError
from .folder import list_image_files
from .formats import EXACT_PILLOW_MODES
from .images import open_image_file


def convertible_copy(path: str, channels: int) -> Image.Image:
    """The picture at `path` as 8-bit L (channels 1) or RGB (channels 3)."""
    img, fmt = open_image_file(path)
    if fmt.bits > 8 and img.mode not in ("RGB", "RGBA"):  # 16-bit gray: Pillow keeps all 16 bits
        if img.mode == "F":
            raise DataError(f"{path}: floating-point samples have no fixed range to map to 8 bits")
        img = Image.fromarray((np.asarray(img).astype(np.int64) >> (fmt.bits - 8)).clip(0, 255).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert(EXACT_PILLOW_MODES[channels])


def convert_pictures(source: str, out_dir: str, channels: int) -> List[str]:
    """Write a copy of every picture under `source` (a folder or one file) into `out_dir`."""
    if channels not in EXACT_PILLOW_MODES:
        raise DataError(f"--channels must be 1 or 3, got {channels}")
    if os.path.isdir(source):
        files = list_image_files(source)
        names = [os.path.relpath(f, source) for f in files]
    else:
        files, names = [source], [os.path.basename(source)]
    targets = [os.path.join(out_dir, os.path.splitext(name)[0] + ".png") for name in names]
    existing = [t for t in targets if os.path.exists(t)]
    if existing:
        raise DataError(f"{existing[0]} exists ({len(existing)} of the copies would replace files); "
                        "choose a new out_dir")
    for path, target in zip(files, targets):
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        convertible_copy(path, channels).save(target)
    return targets


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="a folder of pictures (searched recursively) or one picture")
    parser.add_argument("out_dir", help="where the copies go (a new folder)")
    parser.add_argument("--channels", type=int, required=True, choices=(1, 3), help="1: 8-bit gray, 3: 8-bit RGB")
    args = parser.parse_args(argv)
    try:
        written = convert_pictures(args.source, args.out_dir, args.channels)
    except DataError as exc:
        print(f"convert: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} converted copies to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
