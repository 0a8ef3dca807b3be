"""Download CIFAR-10 and write it as PNG folders for the ``cifar`` data config.

    python datasets/cifar10.py --out_dir datasets/cifar10

writes ``train_32x32/`` (50,000 images) and ``valid_32x32/`` (the 10,000 test
images) named ``<class>_<index:05d>.png``. The class prefix is what
improved-diffusion's ``load_data(class_cond=True)`` reads. Pass ``--tarball``
to use an already downloaded ``cifar-10-python.tar.gz``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys
import tarfile
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
MD5 = "c58f30108f718f92721af3b95e74349a"
TARBALL_NAME = "cifar-10-python.tar.gz"
DEFAULT_OUT_DIR = "datasets/cifar10"

# output folder -> batch files inside the tarball that fill it
SPLITS: Dict[str, Tuple[str, ...]] = {
    "train_32x32": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "valid_32x32": ("test_batch",),
}


class ChecksumError(ValueError):
    """The tarball is not the expected file (corrupt or truncated download, wrong file)."""


def md5sum(path: "os.PathLike[str] | str", chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def verify_md5(path: Path, expected: str) -> None:
    """Raise ChecksumError naming the file and both checksums if they differ."""
    got = md5sum(path)
    if got.lower() != expected.lower():
        raise ChecksumError(
            f"md5 mismatch for {path}: expected {expected.lower()}, got {got}. The file is corrupt or "
            f"not the CIFAR-10 python tarball; delete it and download again from {URL}"
        )


def download(url: str, dest: Path, expected_md5: str) -> Path:
    """Fetch ``url`` to ``dest`` via a temporary ``.part`` file, then check its md5."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    print(f"downloading {url} -> {dest}", flush=True)
    with urllib.request.urlopen(url) as resp, open(part, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0)
        done = 0
        last_report = -1
        while True:
            block = resp.read(1 << 20)
            if not block:
                break
            out.write(block)
            done += len(block)
            if total:
                pct = 100 * done // total
                if pct // 10 != last_report:
                    last_report = pct // 10
                    print(f"  {pct:3d}% of {total / 1e6:.0f} MB", flush=True)
    verify_md5(part, expected_md5)
    part.replace(dest)
    return dest


def obtain_tarball(out_dir: Path, tarball: Optional[str], expected_md5: str, url: str = URL) -> Path:
    """A verified tarball: the given local file, a previous download in ``out_dir``, or a new download."""
    if tarball is not None:
        path = Path(tarball)
        if not path.is_file():
            raise FileNotFoundError(f"tarball {path} does not exist")
        verify_md5(path, expected_md5)
        return path
    path = out_dir / TARBALL_NAME
    if path.is_file():
        try:
            verify_md5(path, expected_md5)
            print(f"using previously downloaded {path}")
            return path
        except ChecksumError:
            print(f"{path} is incomplete or corrupt; downloading again")
    return download(url, path, expected_md5)


def read_tarball(path: Path) -> Tuple[List[str], Dict[str, Tuple[np.ndarray, np.ndarray]]]:
    """Class names and, per output folder, (images (N, 3, 32, 32) uint8, labels) from the tarball."""
    wanted = {"batches.meta"} | {name for names in SPLITS.values() for name in names}
    found: Dict[str, dict] = {}
    with tarfile.open(path, "r:*") as tar:
        for member in tar:
            base = os.path.basename(member.name)
            if member.isfile() and base in wanted:
                with tar.extractfile(member) as f:  # type: ignore[union-attr]
                    found[base] = pickle.load(f, encoding="bytes")
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"{path} is not a CIFAR-10 python tarball: missing {', '.join(missing)}")
    label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in found["batches.meta"][b"label_names"]]
    splits = {}
    for folder, names in SPLITS.items():
        data = np.concatenate([np.asarray(found[n][b"data"], dtype=np.uint8) for n in names])
        labels = np.concatenate([np.asarray(found[n][b"labels"], dtype=np.int64) for n in names])
        splits[folder] = (data.reshape(-1, 3, 32, 32), labels)
    return label_names, splits


def _marker(out_dir: Path, folder: str) -> Path:
    # kept beside the image folder so the folder holds nothing but images
    return out_dir / f".{folder}.complete"


def split_complete(out_dir: Path, folder: str) -> bool:
    """True when a previous run finished this split (marker present, PNG count matches)."""
    marker = _marker(out_dir, folder)
    if not marker.is_file() or not (out_dir / folder).is_dir():
        return False
    try:
        expected = int(marker.read_text().strip())
    except ValueError:
        return False
    return sum(1 for p in (out_dir / folder).iterdir() if p.suffix == ".png") == expected


def write_split(
    images: np.ndarray, labels: np.ndarray, label_names: Sequence[str], dest: Path, workers: int = 8
) -> int:
    """Write ``images`` as ``<class>_<index:05d>.png`` into ``dest``, replacing older PNGs there."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.png"):
        old.unlink()

    def save(i: int) -> None:
        name = f"{label_names[int(labels[i])]}_{i:05d}.png"
        Image.fromarray(images[i].transpose(1, 2, 0)).save(dest / name)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(save, range(len(images))))
    return len(images)


def prepare(
    out_dir: "os.PathLike[str] | str" = DEFAULT_OUT_DIR,
    tarball: Optional[str] = None,
    md5: str = MD5,
    overwrite: bool = False,
    url: str = URL,
    workers: int = 8,
) -> Dict[str, Path]:
    """Make sure ``out_dir`` holds both PNG folders; returns folder name -> path."""
    out_dir = Path(out_dir)
    out = {folder: out_dir / folder for folder in SPLITS}
    todo = [f for f in SPLITS if overwrite or not split_complete(out_dir, f)]
    for folder in SPLITS:
        if folder not in todo:
            print(f"keeping existing {out[folder]} (complete; pass --overwrite to redo it)")
    if not todo:
        return out
    path = obtain_tarball(out_dir, tarball, md5, url)
    label_names, splits = read_tarball(path)
    for folder in todo:
        images, labels = splits[folder]
        _marker(out_dir, folder).unlink(missing_ok=True)
        n = write_split(images, labels, label_names, out[folder], workers)
        _marker(out_dir, folder).write_text(f"{n}\n")
        print(f"wrote {n} images to {out[folder]}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default=DEFAULT_OUT_DIR, help="where train_32x32/ and valid_32x32/ go")
    parser.add_argument("--tarball", default=None, help="use this local cifar-10-python.tar.gz instead of downloading")
    parser.add_argument("--md5", default=MD5, help="expected md5 of the tarball (default: the official one)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite splits that are already complete")
    parser.add_argument("--url", default=URL, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=8, help="threads writing PNG files")
    args = parser.parse_args(argv)
    try:
        prepare(args.out_dir, args.tarball, args.md5, args.overwrite, args.url, args.workers)
    except (ChecksumError, FileNotFoundError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
