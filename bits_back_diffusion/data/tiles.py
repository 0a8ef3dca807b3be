"""Pictures of any size as tiles of the model's image size, and back.

A diffusion model codes images of one fixed size. To compress an arbitrary picture exactly, it is
padded on the bottom and right by repeating its border pixels (smooth, so cheap to code) up to a
multiple of the tile size, cut into tiles in row-major order, and the original size is recorded
so that decoding can crop the padding off again.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .base import ImageSet
from .errors import DataError
from .folder import FolderImageSet, describe_difference, list_image_files
from .images import exact_pixels
from .scan import check_image_files

__all__ = [
    "ImageTiling",
    "TiledImageSet",
    "TilingInfo",
    "image_size_of",
    "open_folder",
    "reassemble",
    "split_image",
    "tile_grid",
]


@dataclass(frozen=True)
class ImageTiling:
    """How one picture of `height` x `width` was cut: a rows x cols grid after padding."""

    height: int
    width: int
    rows: int
    cols: int
    pad_bottom: int
    pad_right: int

    @property
    def num_tiles(self) -> int:
        return self.rows * self.cols


def tile_grid(height: int, width: int, tile_size: int) -> ImageTiling:
    """The grid covering a height x width picture with tile_size squares."""
    for name, value in (("height", height), ("width", width), ("tile_size", tile_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise DataError(f"{name} must be a positive int, got {value!r}")
    rows, cols = -(-int(height) // tile_size), -(-int(width) // tile_size)
    return ImageTiling(int(height), int(width), rows, cols, rows * tile_size - height, cols * tile_size - width)


def split_image(image: np.ndarray, tile_size: int) -> Tuple[np.ndarray, ImageTiling]:
    """Cut a (C, H, W) picture into (rows * cols, C, tile, tile) tiles, edge-padding the bottom and
    right; returns the tiles and the grid."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise DataError(f"expected a (C, H, W) image, got shape {image.shape}")
    grid = tile_grid(image.shape[1], image.shape[2], tile_size)
    padded = np.pad(image, ((0, 0), (0, grid.pad_bottom), (0, grid.pad_right)), mode="edge")
    c, t = image.shape[0], tile_size
    tiles = padded.reshape(c, grid.rows, t, grid.cols, t).transpose(1, 3, 0, 2, 4).reshape(-1, c, t, t)
    return np.ascontiguousarray(tiles), grid


@dataclass(frozen=True)
class TilingInfo:
    """The tiling of a sequence of pictures; tiles are numbered picture by picture, row-major."""

    tile_size: int
    channels: int
    images: Tuple[ImageTiling, ...]
    names: Optional[Tuple[str, ...]] = None

    @property
    def num_tiles(self) -> int:
        return sum(g.num_tiles for g in self.images)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready form for the .bbd header."""
        out: Dict[str, Any] = {
            "tile_size": self.tile_size,
            "channels": self.channels,
            "images": [[g.height, g.width, g.rows, g.cols, g.pad_bottom, g.pad_right] for g in self.images],
        }
        if self.names is not None:
            out["names"] = list(self.names)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "TilingInfo":
        """Inverse of to_dict; checks that every grid is the one its size implies."""
        try:
            tile, channels = int(data["tile_size"]), int(data["channels"])
            images = []
            for row in data["images"]:
                height, width = int(row[0]), int(row[1])
                grid = tile_grid(height, width, tile)
                if [grid.rows, grid.cols, grid.pad_bottom, grid.pad_right] != [int(v) for v in row[2:6]] or len(row) != 6:
                    raise DataError(f"grid {row} does not match a {height}x{width} picture cut into {tile}-pixel tiles")
                images.append(grid)
            names = data.get("names")
            names = tuple(str(n) for n in names) if names is not None else None
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"invalid tiling information: {exc!r}") from None
        if names is not None and len(names) != len(images):
            raise DataError(f"tiling lists {len(names)} names for {len(images)} pictures")
        return cls(tile, channels, tuple(images), names)


def reassemble(tiles: np.ndarray, info: TilingInfo) -> List[np.ndarray]:
    """The pictures (each (C, H, W)) from their tiles (N, C, tile, tile), padding removed."""
    tiles = np.asarray(tiles)
    t, c = info.tile_size, info.channels
    if tiles.ndim != 4 or tiles.shape[1:] != (c, t, t):
        raise DataError(f"expected tiles of shape (N, {c}, {t}, {t}), got {tiles.shape}")
    if tiles.shape[0] != info.num_tiles:
        raise DataError(f"the tiling needs {info.num_tiles} tiles, got {tiles.shape[0]}")
    out, start = [], 0
    for g in info.images:
        block = tiles[start:start + g.num_tiles].reshape(g.rows, g.cols, c, t, t)
        padded = block.transpose(2, 0, 3, 1, 4).reshape(c, g.rows * t, g.cols * t)
        out.append(np.ascontiguousarray(padded[:, :g.height, :g.width]))
        start += g.num_tiles
    return out


def image_size_of(path: str) -> Tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    try:
        with Image.open(path) as img:
            width, height = img.size
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    return height, width


class TiledImageSet(ImageSet):
    """The tiles of a list of image files of any size, as an ImageSet of tile_size squares.

    `sizes` ((height, width) per file, e.g. from the folder scan) saves reading every header again.
    """

    def __init__(self, base_files: Sequence[str], tile_size: int, channels: int, num_levels: int,
                 *, name: str = "folder", root: Optional[str] = None,
                 sizes: Optional[Sequence[Tuple[int, int]]] = None) -> None:
        super().__init__(name=name, image_size=tile_size, channels=channels, num_levels=num_levels)
        self.files = [os.fspath(f) for f in base_files]
        if not self.files:
            raise DataError(f"{name}: no image files to tile")
        self.root = root
        if sizes is None:
            sizes = [image_size_of(f) for f in self.files]
        self.grids = [tile_grid(h, w, tile_size) for h, w in sizes]
        counts = np.array([g.num_tiles for g in self.grids], dtype=np.int64)
        self._ends = np.cumsum(counts)
        self._cached: Tuple[int, Optional[np.ndarray]] = (-1, None)
        self._on_disk: Tuple[int, Optional[np.ndarray]] = (-1, None)  # for mismatches_on_disk only

    def __len__(self) -> int:
        return int(self._ends[-1])

    def _locate(self, i: int) -> Tuple[int, int]:
        image = int(np.searchsorted(self._ends, i, side="right"))
        first = int(self._ends[image - 1]) if image else 0
        return image, i - first

    def _tiles_of(self, image: int) -> np.ndarray:
        cached = self._cached  # read once: the roundtrip check may load tiles on a second thread
        if cached[0] != image:
            path = self.files[image]
            tiles, grid = split_image(exact_pixels(path, self.channels), self.image_size)
            if grid != self.grids[image]:
                raise DataError(f"{path} changed size while being read")
            cached = self._cached = (image, tiles)
        return cached[1]

    def _load(self, i: int) -> np.ndarray:
        image, k = self._locate(i)
        return self._tiles_of(image)[k]

    def describe(self, i: int) -> str:
        image, k = self._locate(self._index(i))
        grid = self.grids[image]
        return f"{self.files[image]} tile (row {k // grid.cols}, col {k % grid.cols})"

    def mismatches_on_disk(self, ids: Sequence[int], decoded: np.ndarray) -> List[str]:
        """Each decoded tile against its part of the picture re-read from disk (the padding, which
        decode.py crops off, is not compared)."""
        out = []
        t = self.image_size
        for i, tile in zip(ids, decoded):
            image, k = self._locate(self._index(i))
            if self._on_disk[0] != image:
                try:
                    self._on_disk = (image, exact_pixels(self.files[image], self.channels))
                except DataError as exc:
                    out.append(f"re-reading for the check: {exc}")
                    continue
            picture, grid = self._on_disk[1], self.grids[image]
            if picture.shape[1:] != (grid.height, grid.width):
                out.append(f"{self.files[image]}: now {picture.shape[2]}x{picture.shape[1]}, coded as "
                           f"{grid.width}x{grid.height} (width x height)")
                continue
            row, col = divmod(k, grid.cols)
            part = picture[:, row * t:(row + 1) * t, col * t:(col + 1) * t]
            difference = describe_difference(part, np.asarray(tile)[:, :part.shape[1], :part.shape[2]])
            if difference:
                out.append(f"{self.describe(i)}: {difference}")
        return out

    def tiling_info(self, num_tiles: Optional[int] = None) -> TilingInfo:
        """The tiling of the pictures whose tiles are the first `num_tiles` (default: all)."""
        total = len(self)
        count = total if num_tiles is None or int(num_tiles) < 0 else int(num_tiles)
        ends = [int(e) for e in self._ends]
        if count not in [0] + ends:
            raise DataError(
                f"{count} tiles end inside a picture; code whole pictures (evaluator.num_samples=-1, or one of "
                f"{', '.join(map(str, ends[:8]))}{', ...' if len(ends) > 8 else ''})"
            )
        keep = ends.index(count) + 1 if count else 0
        names = tuple(os.path.relpath(f, self.root) if self.root else os.path.basename(f) for f in self.files[:keep])
        for name, path in zip(names, self.files):
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes in the name: the file's header stores names as UTF-8
                raise DataError(f"{os.fsencode(path)!r}: the file name is not valid UTF-8, and the .bbd file stores "
                                f"the names of tiled pictures; rename the file") from None
        return TilingInfo(self.image_size, self.channels, tuple(self.grids[:keep]), names)


def open_folder(root: str, *, name: str, image_size: int, channels: int, num_levels: int,
                missing_hint: str = "") -> ImageSet:
    """A folder of pictures: a FolderImageSet when all have the model's size, else its tiles.

    Every file is decoded once first (check_image_files): a folder with any picture that cannot be
    coded and restored exactly is refused before anything is coded.
    """
    folder = FolderImageSet(root, name=name, image_size=image_size, channels=channels,
                            num_levels=num_levels, missing_hint=missing_hint)
    sizes = check_image_files(folder.files, channels=channels, num_levels=num_levels, root=os.fspath(root))
    if all(size == (image_size, image_size) for size in sizes):
        return folder
    tiled = TiledImageSet(folder.files, image_size, channels, num_levels, name=name, root=os.fspath(root),
                          sizes=sizes)
    tiled.skipped = folder.skipped
    return tiled
