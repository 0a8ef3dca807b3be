"""Prepare ImageNet 64x64 as PNG folders (the Kaggle layout) for the ``imagenet`` data config.

ImageNet needs an account, so nothing is downloaded here; ``info`` says where
to get the files. Two conversions:

    python datasets/imagenet64.py batches --src <dir> --out_dir datasets/imagenet
        official downsampled-ImageNet batches (train_data_batch_1..10, val_data;
        npz or pickle) -> train_64x64/ and valid_64x64/ with <index:07d>.png

    python datasets/imagenet64.py downsample --src <full-res dir> --dest <dir>
        full-resolution images -> 64x64 PNGs (same relative paths), using the
        loader's own downsampling so the result equals loading with resize=true
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
from PIL import Image

try:
    import bits_back_diffusion.data  # noqa: F401
except ImportError:  # run as a script from a checkout that is not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bits_back_diffusion.data.batches import BatchFileImageSet, find_batch_files, read_batch_labels
from bits_back_diffusion.data.errors import DataError
from bits_back_diffusion.data.folder import list_image_files
from bits_back_diffusion.data.images import read_image

DEFAULT_OUT_DIR = "datasets/imagenet"

INFO = """\
ImageNet 64x64 cannot be downloaded automatically (it needs an ImageNet account).
Get one of:
  * Official "Downsampled ImageNet 64x64" (https://image-net.org/download-images, after login):
    Imagenet64_train_part1/part2 (train_data_batch_1..10) and Imagenet64_val (val_data), as npz
    or pickle. Use them directly by putting them in datasets/imagenet/, or convert to PNG:
        python datasets/imagenet64.py batches --src <folder with the batches> --out_dir datasets/imagenet
  * The Kaggle copy of downsampled ImageNet 64x64: unpack so that datasets/imagenet/train_64x64/
    and datasets/imagenet/valid_64x64/ hold the PNG files. Nothing else to do.
  * Full-resolution ImageNet (ILSVRC2012 train/val folders): either set data.resize=true and point
    data.train.data_dir / data.val.data_dir at them, or convert once:
        python datasets/imagenet64.py downsample --src <ILSVRC2012 val folder> --dest datasets/imagenet/valid_64x64
"""

# split of the batch files -> output folder prefix
SPLIT_FOLDERS = {"train": "train", "val": "valid"}


def _marker(out_dir: Path, folder: str) -> Path:
    return out_dir / f".{folder}.complete"


def _complete(out_dir: Path, folder: str) -> bool:
    marker = _marker(out_dir, folder)
    if not marker.is_file() or not (out_dir / folder).is_dir():
        return False
    try:
        expected = int(marker.read_text().strip())
    except ValueError:
        return False
    return sum(1 for p in (out_dir / folder).iterdir() if p.suffix == ".png") == expected


def _save_png(arr_chw: np.ndarray, path: Path) -> None:
    img = arr_chw[0] if arr_chw.shape[0] == 1 else arr_chw.transpose(1, 2, 0)
    Image.fromarray(np.ascontiguousarray(img)).save(path)


def convert_batches(
    src: "os.PathLike[str] | str",
    out_dir: "os.PathLike[str] | str" = DEFAULT_OUT_DIR,
    image_size: int = 64,
    overwrite: bool = False,
    label_prefix: bool = False,
    workers: int = 8,
    chunk: int = 2048,
) -> Dict[str, Path]:
    """Write each split found among the batch files in ``src`` as a PNG folder.

    Images are numbered in batch-file order, so the PNG folder lists in the
    same order as loading the batches directly. ``label_prefix`` names files
    ``<label:04d>_<index:07d>.png`` instead, for class-conditional training.
    """
    src, out_dir = Path(src), Path(out_dir)
    if not src.is_dir():
        raise DataError(f"batch folder {src} does not exist\n{INFO}")
    written: Dict[str, Path] = {}
    for split, prefix in SPLIT_FOLDERS.items():
        files = find_batch_files(src, split, strict=True)
        if not files:
            continue
        folder = f"{prefix}_{image_size}x{image_size}"
        dest = out_dir / folder
        written[split] = dest
        if not overwrite and _complete(out_dir, folder):
            print(f"keeping existing {dest} (complete; pass --overwrite to redo it)")
            continue
        _marker(out_dir, folder).unlink(missing_ok=True)
        dest.mkdir(parents=True, exist_ok=True)
        for old in dest.glob("*.png"):
            old.unlink()
        index = 0
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for path in files:
                ds = BatchFileImageSet(
                    [path], name="imagenet", image_size=image_size, channels=3, num_levels=256, cache_files=1
                )
                labels = read_batch_labels(path) if label_prefix else None
                if label_prefix and labels is None:
                    raise DataError(f"{path} has no 'labels' entry; cannot use --label_prefix")
                for lo in range(0, len(ds), chunk):
                    rows = range(lo, min(lo + chunk, len(ds)))
                    batch = ds.get_batch(list(rows))
                    names = [
                        f"{int(labels[j]):04d}_{index + j:07d}.png" if labels is not None else f"{index + j:07d}.png"
                        for j in rows
                    ]
                    list(pool.map(lambda a, n: _save_png(a, dest / n), batch, names))
                index += len(ds)
                print(f"{path}: {len(ds)} images -> {dest}", flush=True)
        _marker(out_dir, folder).write_text(f"{index}\n")
        print(f"wrote {index} images to {dest}")
    if not written:
        raise DataError(f"no train_data_batch_* or val_data* batch files (npz or pickle) in {src}\n{INFO}")
    return written


def downsample_folder(
    src: "os.PathLike[str] | str",
    dest: "os.PathLike[str] | str",
    image_size: int = 64,
    overwrite: bool = False,
    workers: int = 8,
) -> int:
    """Downsample every image under ``src`` into ``dest`` as PNG, keeping relative paths.

    Files already present are skipped unless ``overwrite``, so an interrupted
    conversion can be restarted. Returns the number of images written.
    """
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise DataError(f"source folder {src} does not exist")
    files = list_image_files(src)
    if not files:
        raise DataError(f"no images found under {src}")

    def convert(path: str) -> int:
        target = (dest / os.path.relpath(path, src)).with_suffix(".png")
        if target.exists() and not overwrite:
            return 0
        arr = read_image(path, image_size=image_size, channels=3, resize=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        img = Image.fromarray(arr.transpose(1, 2, 0))
        img.save(tmp, format="PNG")
        tmp.replace(target)
        return 1

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        done = sum(pool.map(convert, files))
    print(f"wrote {done} images to {dest} ({len(files) - done} already there)")
    return done


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="where to get ImageNet 64x64")
    b = sub.add_parser("batches", help="official npz/pickle batches -> PNG folders")
    b.add_argument("--src", required=True, help="folder holding train_data_batch_* and/or val_data*")
    b.add_argument("--out_dir", default=DEFAULT_OUT_DIR)
    b.add_argument("--image_size", type=int, default=64)
    b.add_argument("--label_prefix", action="store_true", help="name files <label>_<index>.png")
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--workers", type=int, default=8)
    d = sub.add_parser("downsample", help="full-resolution images -> PNGs of --image_size")
    d.add_argument("--src", required=True)
    d.add_argument("--dest", required=True)
    d.add_argument("--image_size", type=int, default=64)
    d.add_argument("--overwrite", action="store_true")
    d.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    if args.command in (None, "info"):
        print(INFO)
        return 0
    try:
        if args.command == "batches":
            convert_batches(args.src, args.out_dir, args.image_size, args.overwrite, args.label_prefix, args.workers)
        else:
            downsample_folder(args.src, args.dest, args.image_size, args.overwrite, args.workers)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
