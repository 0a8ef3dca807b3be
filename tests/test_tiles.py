"""Tiling pictures of any size into model-size tiles and putting them back exactly."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bits_back_diffusion.data import DataError, FolderImageSet, build_dataset
from bits_back_diffusion.data.tiles import (
    TiledImageSet,
    TilingInfo,
    open_folder,
    reassemble,
    split_image,
    tile_grid,
)


def picture(channels, height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (channels, height, width)).astype(np.uint8)


def save_png(path, image):
    Image.fromarray(image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)).save(path)


@pytest.mark.parametrize("channels", [3, 1])
def test_split_and_reassemble_odd_sized_picture(channels):
    image = picture(channels, 37, 50)
    tiles, grid = split_image(image, 32)
    assert (grid.rows, grid.cols, grid.pad_bottom, grid.pad_right) == (2, 2, 27, 14)
    assert tiles.shape == (4, channels, 32, 32)
    np.testing.assert_array_equal(tiles[0], image[:, :32, :32])  # row-major order
    np.testing.assert_array_equal(tiles[1][:, :, :18], image[:, :32, 32:])
    # the padding repeats the last row and column
    np.testing.assert_array_equal(tiles[1][:, :, 18:], np.repeat(image[:, :32, -1:], 14, axis=2))
    np.testing.assert_array_equal(tiles[3][:, 5:, 18:], np.broadcast_to(image[:, -1:, -1:], (channels, 27, 14)))
    info = TilingInfo(32, channels, (grid,))
    back, = reassemble(tiles, info)
    np.testing.assert_array_equal(back, image)


def test_several_pictures_and_info_roundtrip():
    images = [picture(3, 37, 50, 1), picture(3, 32, 32, 2), picture(3, 5, 70, 3)]
    parts = [split_image(im, 32) for im in images]
    info = TilingInfo(32, 3, tuple(g for _, g in parts), ("a.png", "b.png", "c.png"))
    assert info.num_tiles == 4 + 1 + 3
    info = TilingInfo.from_dict(info.to_dict())
    for got, want in zip(reassemble(np.concatenate([t for t, _ in parts]), info), images):
        np.testing.assert_array_equal(got, want)


def test_bad_tiling_is_refused():
    with pytest.raises(DataError, match="tile_size must be a positive int"):
        tile_grid(10, 10, 0)
    info = TilingInfo(8, 1, (tile_grid(9, 9, 8),))
    with pytest.raises(DataError, match="needs 4 tiles, got 3"):
        reassemble(np.zeros((3, 1, 8, 8)), info)
    with pytest.raises(DataError, match=r"expected tiles of shape \(N, 1, 8, 8\)"):
        reassemble(np.zeros((4, 3, 8, 8)), info)
    broken = info.to_dict()
    broken["images"][0][2] = 5
    with pytest.raises(DataError, match="does not match a 9x9 picture"):
        TilingInfo.from_dict(broken)
    with pytest.raises(DataError, match="invalid tiling"):
        TilingInfo.from_dict({"tile_size": 8})


def test_tiled_image_set_over_a_folder(tmp_path):
    images = {"a.png": picture(3, 37, 50, 1), "b.png": picture(3, 32, 32, 2), "c.png": picture(3, 20, 20, 3)}
    for name, image in images.items():
        save_png(tmp_path / name, image)
    ds = open_folder(str(tmp_path), name="folder", image_size=32, channels=3, num_levels=256)
    assert isinstance(ds, TiledImageSet) and len(ds) == 4 + 1 + 1 and ds.shape == (3, 32, 32)
    tiles = ds.get_batch(range(len(ds)))
    assert "a.png tile (row 1, col 0)" in ds.describe(2)
    info = ds.tiling_info()
    assert info.names == ("a.png", "b.png", "c.png")
    for got, name in zip(reassemble(tiles, info), sorted(images)):
        np.testing.assert_array_equal(got, images[name])
    assert ds.tiling_info(5).names == ("a.png", "b.png")
    with pytest.raises(DataError, match=r"3 tiles end inside a picture.*4, 5, 6"):
        ds.tiling_info(3)


def test_build_dataset_tiles_only_when_needed(tmp_path):
    save_png(tmp_path / "x.png", picture(1, 8, 8))
    cfg = {"name": "folder", "image_size": 8, "channels": 1, "num_levels": 256, "val": {"data_dir": str(tmp_path)}}
    assert isinstance(build_dataset(cfg, "val"), FolderImageSet)
    save_png(tmp_path / "y.png", picture(1, 9, 17))
    ds = build_dataset(cfg, "val")
    assert isinstance(ds, TiledImageSet) and len(ds) == 1 + 2 * 3


def test_levels_are_checked_per_tile(tmp_path):
    save_png(tmp_path / "x.png", picture(1, 9, 9))
    ds = TiledImageSet([str(tmp_path / "x.png")], 8, 1, 17, root=str(tmp_path))
    with pytest.raises(DataError, match=r"x.png tile \(row 0, col 0\).*levels in \[0, 16\]"):
        ds[0]
