"""Pictures come back exactly as read from disk, or are refused before anything is coded.

Self-made files of every kind a user may drop into a folder: each one that decode.py could not
give back identically (alpha, palette, 16-bit, CMYK, ...), or that is damaged or absurdly large,
is refused by name in one error; 8-bit gray and RGB go through encode.py and decode.py and come
back with the same pixels and mode. Also: decode.py checks its output folder before decoding, and
`model.attention_resolutions` takes a single int.
"""
from __future__ import annotations

import contextlib
import io
import json
import struct
import zlib
from pathlib import Path
from typing import List

import numpy as np
import pytest
from PIL import Image

from bits_back_diffusion.data import DataError, build_dataset, exact_pixels
from bits_back_diffusion.data import images as images_module
from bits_back_diffusion.data.convert import convert_pictures
from bits_back_diffusion.data.folder import FolderImageSet
from bits_back_diffusion.data.formats import file_format, read_png_ihdr
from bits_back_diffusion.data.outputs import check_output_dir
from bits_back_diffusion.data.tiles import TiledImageSet
from helpers import decode_script, make_run_dir, run_script

FAST = ["wandb.mode=disabled", "diffusion.timestep_respacing=4", "compare_classical=false",
        "evaluator.compute_vlb=false", "codec=bitswap"]


# ---------------------------------------------------------------- making files

def png_bytes(width: int, height: int, depth: int, colour: int, samples_per_pixel: int, seed: int = 0,
              idat: bytes = b"") -> bytes:
    """A PNG written byte by byte (Pillow cannot write 16-bit RGB), random samples unless `idat` is given."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if not idat:
        row = -(-width * depth * samples_per_pixel // 8)
        rng = np.random.default_rng(seed)
        raw = b"".join(b"\x00" + rng.integers(0, 256, row, dtype=np.uint8).tobytes() for _ in range(height))
        idat = zlib.compress(raw)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rgb(size=(8, 8), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)


def gray(size=(8, 8), seed=0, high=256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, high, size, dtype=np.uint8)


def write_bad(path: Path, kind: str) -> None:
    """One file of `kind`, 8 x 8."""
    if kind == "RGBA":
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 4), dtype=np.uint8), "RGBA").save(path)
    elif kind == "LA":
        Image.new("LA", (8, 8), (100, 50)).save(path)
    elif kind == "P":
        Image.fromarray(rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    elif kind == "RGB16":
        path.write_bytes(png_bytes(8, 8, 16, 2, 3))
    elif kind == "gray16":
        path.write_bytes(png_bytes(8, 8, 16, 0, 1))
    elif kind == "gray4":
        path.write_bytes(png_bytes(8, 8, 4, 0, 1))
    elif kind == "bilevel":
        Image.new("1", (8, 8), 1).save(path)
    elif kind == "CMYK":
        Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(path, "JPEG")
    elif kind == "RGB_tRNS":
        Image.fromarray(rgb()).save(path, transparency=(0, 0, 0))
    elif kind == "GIF":  # under a .png name; Pillow reads a GIF's frame count by seeking in the file
        Image.fromarray(rgb()).save(path, format="GIF")
    elif kind == "TIFF_pages":
        pages = [Image.fromarray(rgb(seed=k)) for k in range(2)]
        pages[0].save(path, format="TIFF", save_all=True, append_images=pages[1:])
    else:
        raise ValueError(kind)


def folder_cfg(folder: Path, channels: int, num_levels: int = 256, image_size: int = 8) -> dict:
    return {"name": "folder", "image_size": image_size, "channels": channels, "num_levels": num_levels,
            "val": {"data_dir": str(folder)}}


# ---------------------------------------------------------------- the file's true format

def test_png_header_gives_the_bit_depth_pillow_hides(tmp_path):
    (tmp_path / "deep.png").write_bytes(png_bytes(8, 8, 16, 2, 3))
    (tmp_path / "shallow.png").write_bytes(png_bytes(8, 8, 4, 0, 1))
    for name, colour, bits, mode in (("deep.png", "RGB", 16, "RGB"), ("shallow.png", "gray", 4, "L")):
        data = (tmp_path / name).read_bytes()
        with Image.open(tmp_path / name) as img:
            assert img.mode == mode  # Pillow alone would accept both as 8-bit
            fmt = file_format(img, data[:33])
        assert (fmt.container, fmt.colour, fmt.bits) == ("PNG", colour, bits)
        assert read_png_ihdr(data[:33]) == (8, 8, bits, 2 if colour == "RGB" else 0)
    assert read_png_ihdr(b"GIF89a" + bytes(40)) is None


# ---------------------------------------------------------------- refused before coding

@pytest.mark.parametrize("kind, channels, shown", [
    ("RGBA", 3, "PNG RGBA 8-bit"),
    ("LA", 1, "PNG gray+alpha 8-bit"),
    ("P", 3, "PNG palette 4-bit"),  # Pillow writes 16 colours in 4 bits
    ("RGB16", 3, "PNG RGB 16-bit (Pillow mode RGB)"),
    ("gray16", 1, "PNG gray 16-bit"),
    ("gray4", 1, "PNG gray 4-bit (Pillow mode L)"),
    ("bilevel", 1, "PNG gray 1-bit"),
    ("CMYK", 3, "JPEG CMYK 8-bit"),
    ("RGB_tRNS", 3, "transparent colour"),
    ("GIF", 3, "a GIF file; only PNG and JPEG are read"),
    ("TIFF_pages", 3, "a TIFF file; only PNG and JPEG are read"),
])
def test_pictures_that_cannot_come_back_exactly_are_refused(tmp_path, kind, channels, shown):
    good = Image.fromarray(rgb(seed=2)) if channels == 3 else Image.fromarray(gray(seed=2), "L")
    good.save(tmp_path / "a_good.png")
    name = "b_bad.jpg" if kind == "CMYK" else "b_bad.png"
    write_bad(tmp_path / name, kind)
    with pytest.raises(DataError) as err:
        build_dataset(folder_cfg(tmp_path, channels), "val")
    msg = str(err.value)
    assert f"1 of 2 image files in {str(tmp_path)!r}" in msg and "nothing was coded" in msg
    assert f"{name}: " in msg and shown in msg and "a_good.png" not in msg
    accepted = "8-bit RGB (Pillow mode RGB)" if channels == 3 else "8-bit gray (Pillow mode L)"
    assert f"data.channels={channels}, data.num_levels=256 codes {accepted}" in msg
    assert f"python -m bits_back_diffusion.data.convert {tmp_path} <new folder> --channels {channels}" in msg


def test_a_folder_linking_to_itself_is_refused(tmp_path):
    """os.walk follows links, so a link to the folder (or a parent) listed the same pictures about
    40 times over, and every copy was coded without a word."""
    Image.fromarray(gray(), "L").save(tmp_path / "a.png")
    (tmp_path / "loop").symlink_to(tmp_path)
    with pytest.raises(DataError, match=r"loop links to .*, which contains .*repeat the same pictures.*remove the link"):
        build_dataset(folder_cfg(tmp_path, 1), "val")
    (tmp_path / "loop").unlink()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)
    with pytest.raises(DataError, match="up links to"):
        build_dataset(folder_cfg(tmp_path, 1), "val")
    (tmp_path / "sub" / "up").unlink()
    (tmp_path / "elsewhere").mkdir()
    Image.fromarray(gray(seed=1), "L").save(tmp_path / "elsewhere" / "b.png")
    (tmp_path / "sub" / "side").symlink_to(tmp_path / "elsewhere")  # a link that does not loop is followed
    assert len(build_dataset(folder_cfg(tmp_path, 1), "val")) == 3


def test_pictures_left_out_of_a_folder_are_named(tmp_path):
    """Other formats and hidden files are not read; a warning names them instead of saying nothing."""
    from bits_back_diffusion.data.folder import skipped_warning

    Image.fromarray(gray(), "L").save(tmp_path / "a.png")
    Image.fromarray(gray(), "L").save(tmp_path / "b.gif")
    Image.fromarray(gray(), "L").save(tmp_path / ".c.png")
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(gray(), "L").save(tmp_path / ".hidden" / "d.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    data = build_dataset(folder_cfg(tmp_path, 1), "val")
    assert len(data) == 1 and data.skipped == [".c.png", ".hidden/", "b.gif"]
    assert skipped_warning(data).startswith("WARNING: 3 file(s) or hidden folder(s) under the data folder are not "
                                            "coded: .c.png, .hidden/, b.gif")
    (tmp_path / "a.png").unlink()
    with pytest.raises(DataError, match=r"contains no images .* Not read: \.c\.png, \.hidden/, b\.gif"):
        build_dataset(folder_cfg(tmp_path, 1), "val")


def test_a_tiled_picture_whose_name_is_not_utf8_is_refused_before_coding(tmp_path):
    """The file's header stores tiled pictures' names as UTF-8; such a name once failed after the
    whole encode, when the header was written."""
    import os

    from bits_back_diffusion.compressed import tiling_of

    Image.fromarray(gray((16, 8)), "L").save(tmp_path / "a.png")
    Image.fromarray(gray((8, 16)), "L").save(os.fsdecode(os.fsencode(str(tmp_path)) + b"/\xff.png"))
    data = build_dataset(folder_cfg(tmp_path, 1), "val")
    with pytest.raises(DataError, match=r"xff.png'.*not valid UTF-8.*rename the file"):
        tiling_of(data, -1)


def test_mixed_mode_folder_names_each_odd_file(tmp_path):
    Image.fromarray(rgb(seed=1)).save(tmp_path / "a.png")
    Image.fromarray(gray(seed=2), "L").save(tmp_path / "b.png")
    Image.fromarray(rgb(seed=3)).save(tmp_path / "c.jpg", quality=95)
    with pytest.raises(DataError, match=r"(?s)1 of 3 .*b.png: PNG gray 8-bit.*use data.channels=1") as err:
        build_dataset(folder_cfg(tmp_path, 3), "val")
    assert "a.png" not in str(err.value) and "c.jpg" not in str(err.value)
    with pytest.raises(DataError, match=r"(?s)2 of 3 .*a.png: PNG RGB.*c.jpg: JPEG RGB.*use data.channels=3"):
        build_dataset(folder_cfg(tmp_path, 1), "val")


def test_many_bad_files_are_listed_first_ten_and_counted(tmp_path):
    Image.fromarray(rgb()).save(tmp_path / "ok.png")
    for i in range(13):
        write_bad(tmp_path / f"bad{i:02d}.png", "RGBA")
    with pytest.raises(DataError) as err:
        build_dataset(folder_cfg(tmp_path, 3), "val")
    msg = str(err.value)
    assert "13 of 14 image files" in msg and "bad09.png" in msg and "bad10.png" not in msg
    assert "... and 3 more" in msg
    assert msg.count("bits_back_diffusion.data.convert") == 1  # each kind of fix once


def test_truncated_picture_in_the_middle_is_named(tmp_path):
    for name, seed in (("a.png", 1), ("b.png", 2), ("c.png", 3)):
        Image.fromarray(rgb((20, 20), seed)).save(tmp_path / name)
    data = (tmp_path / "b.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"1 of 3 .*\n  b.png: unreadable, truncated or corrupt") as err:
        build_dataset(folder_cfg(tmp_path, 3), "val")
    assert "replace them with intact copies" in str(err.value)


def test_decompression_bomb_is_refused_by_name(tmp_path):
    Image.fromarray(rgb()).save(tmp_path / "a.png")
    # a header claiming 13500 x 13500 (182 Mpixels) in a file of 60 bytes
    (tmp_path / "bomb.png").write_bytes(png_bytes(13500, 13500, 8, 2, 3, idat=zlib.compress(b"\x00" * 100)))
    with pytest.raises(DataError, match=r"bomb.png: 13500x13500 is larger than the 67108864 pixels a picture may have"):
        build_dataset(folder_cfg(tmp_path, 3), "val")


def test_pixel_bound_refuses_from_the_header_and_tiles_up_to_it(tmp_path, monkeypatch):
    Image.fromarray(rgb((40, 40), 5)).save(tmp_path / "big.png")
    monkeypatch.setattr(images_module, "MAX_PICTURE_PIXELS", 1599)
    with pytest.raises(DataError, match=r"big.png: 40x40 is larger than the 1599 pixels"):
        build_dataset(folder_cfg(tmp_path, 3), "val")
    monkeypatch.setattr(images_module, "MAX_PICTURE_PIXELS", 1600)
    dataset = build_dataset(folder_cfg(tmp_path, 3), "val")
    assert isinstance(dataset, TiledImageSet) and len(dataset) == 25


def test_damaged_after_the_scan_is_still_named(tmp_path):
    Image.fromarray(rgb((20, 20), 1)).save(tmp_path / "a.png")
    dataset = build_dataset(folder_cfg(tmp_path, 3), "val")
    write_bad(tmp_path / "a.png", "RGBA")
    with pytest.raises(DataError, match=r"a.png: PNG RGBA 8-bit"):
        dataset[0]


# ---------------------------------------------------------------- compared with the files themselves

def test_folder_mismatches_are_found_against_the_file_on_disk(tmp_path):
    images = [rgb(seed=s) for s in range(3)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"{i}.png")
    dataset = build_dataset(folder_cfg(tmp_path, 3), "val")
    assert isinstance(dataset, FolderImageSet)
    batch = dataset.get_batch([0, 1, 2]).astype(np.int64)
    assert dataset.mismatches_on_disk([0, 1, 2], batch) == []
    batch[1, 2, 3, 4] ^= 1
    problems = dataset.mismatches_on_disk([0, 1, 2], batch)
    assert len(problems) == 1 and "1.png: 1 of 192 samples differ from the file" in problems[0]
    Image.fromarray(rgb(seed=9)).save(tmp_path / "0.png")  # the file changed after it was read
    assert "0.png" in dataset.mismatches_on_disk([0], dataset.get_batch([1]))[0]


def test_tile_mismatches_ignore_the_padding(tmp_path):
    picture = rgb((11, 13), 4)
    Image.fromarray(picture).save(tmp_path / "p.png")
    dataset = build_dataset(folder_cfg(tmp_path, 3), "val")
    assert isinstance(dataset, TiledImageSet) and len(dataset) == 4
    tiles = dataset.get_batch(range(4)).astype(np.int64)
    assert dataset.mismatches_on_disk(range(4), tiles) == []
    tiles[3, :, 7, 7] += 1  # padding only (the picture ends at row 2, column 4 of this tile)
    assert dataset.mismatches_on_disk(range(4), tiles) == []
    tiles[3, 0, 2, 4] += 1
    assert dataset.mismatches_on_disk(range(4), tiles) == ["{} tile (row 1, col 1): 1 of 45 samples differ from the "
                                                          "file".format(tmp_path / "p.png")]


def compose_encode(overrides: List[str]):
    from hydra import compose, initialize_config_dir

    from bits_back_diffusion import runtime
    from helpers import REPO_ROOT

    runtime.register_resolvers()
    with initialize_config_dir(config_dir=str(REPO_ROOT / "config"), version_base="1.3"):
        return compose(config_name="encode", overrides=overrides)


def encode_in_process(model: Path, folder: Path, run_dir: Path, channels: int, num_levels: int):
    """encode.py's run() in this process (no interpreter start-up), as the CLI would call it."""
    import encode
    from improved_diffusion import dist_util

    cfg = compose_encode(FAST + [f"evaluator.model_path={model}", "data=folder", f"data.val.data_dir={folder}",
                                 f"data.channels={channels}", f"data.num_levels={num_levels}", "data.image_size=8"])
    try:
        return encode.run(cfg, str(run_dir))
    finally:
        dist_util.cleanup_dist()


def test_roundtrip_ok_means_the_files_come_back(tmp_path, monkeypatch):
    """A loader that changes a picture (as the old conversions did) makes the encoder's check fail,
    though the decoded images equal what the loader handed over."""
    from bits_back_diffusion.encoder import RoundtripError

    model_dir = make_run_dir(tmp_path / "model", seed=3)
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.fromarray(gray(seed=1, high=17), "L").save(folder / "a.png")
    Image.fromarray(gray(seed=2, high=17), "L").save(folder / "b.png")
    load = FolderImageSet._load

    def altered(self, i):
        arr = load(self, i).copy()
        if self.files[i].endswith("b.png"):
            arr[0, 0, 0] = (int(arr[0, 0, 0]) + 1) % 17
        return arr

    monkeypatch.setattr(FolderImageSet, "_load", altered)
    with pytest.raises(RoundtripError, match=r"not the pictures on disk: .*b.png: 1 of 64 samples differ"):
        encode_in_process(model_dir, folder, tmp_path / "run", 1, 17)
    assert not (tmp_path / "run" / "results.json").exists()


# ---------------------------------------------------------------- through the scripts

@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("rgb") / "run", seed=4, model={"in_channels": 3},
                        diffusion={"num_levels": 256})


def encode_folder(model: Path, folder: Path, run_dir: Path, channels: int, num_levels: int, check: bool = True):
    return run_script("encode.py", FAST + [f"evaluator.model_path={model}", f"hydra.run.dir={run_dir}", "data=folder",
                                           f"data.val.data_dir={folder}", f"data.channels={channels}",
                                           f"data.num_levels={num_levels}", "data.image_size=8",
                                           "data.val.batch_size=2"], check=check)


def assert_same_pictures(originals: List[Path], decoded_dir: Path) -> None:
    """Read both with Pillow, as a user would: same mode, same size, same samples."""
    for i, original in enumerate(originals):
        with Image.open(original) as want, Image.open(decoded_dir / f"{i:05d}.png") as got:
            assert got.mode == want.mode, original
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=str(original))


def test_rgb_pictures_come_back_exactly_and_decode_checks_its_output_first(rgb_model, tmp_path, monkeypatch):
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.fromarray(rgb((9, 8), 1)).save(folder / "a.png")  # tiled: 2 tiles
    Image.fromarray(rgb((8, 8), 2)).save(folder / "b.jpg", quality=90)  # the decoded JPEG pixels are the data
    Image.fromarray(rgb((8, 8), 3)).save(folder / "c.png")
    run_dir, out = tmp_path / "run", tmp_path / "out"
    encode_folder(rgb_model, folder, run_dir, 3, 256)
    assert json.loads((run_dir / "results.json").read_text())["roundtrip_ok"] is True
    decode = decode_script()
    assert decode.main([f"input={run_dir}", f"output_dir={out}"]) == 0
    assert_same_pictures([folder / "a.png", folder / "b.jpg", folder / "c.png"], out)

    # decoding again into the same folder, or into a file, is refused before any decoding
    monkeypatch.setattr(decode, "decode_to_dir", lambda *a, **k: pytest.fail("decoded before checking output_dir"))
    for target, message in ((out, "already holds decoded pictures"), (out / "00000.png", "is an existing file")):
        before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        err = io.StringIO()  # not capsys: the library logger keeps the stdout it first saw
        with contextlib.redirect_stderr(err):
            assert decode.main([f"input={run_dir}", f"output_dir={target}"]) == 2
        assert message in err.getvalue()
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def test_gray_pictures_come_back_exactly(tmp_path):
    model = make_run_dir(tmp_path / "model", seed=3)  # 1 channel, 17 levels
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.fromarray(gray((9, 8), 1, high=17), "L").save(folder / "a.png")
    Image.fromarray(gray((8, 8), 2, high=17), "L").save(folder / "b.png")
    run_dir, out = tmp_path / "run", tmp_path / "out"
    assert encode_in_process(model, folder, run_dir, 1, 17)["roundtrip_ok"] is True
    assert decode_script().main([f"input={run_dir}", f"output_dir={out}"]) == 0
    assert_same_pictures([folder / "a.png", folder / "b.png"], out)


def test_truncated_picture_stops_encode_before_coding(tmp_path):
    model = make_run_dir(tmp_path / "model", seed=3)
    folder = tmp_path / "pictures"
    folder.mkdir()
    for name, seed in (("a.png", 1), ("b.png", 2), ("c.png", 3)):
        Image.fromarray(gray((16, 16), seed, high=17), "L").save(folder / name)
    data = (folder / "b.png").read_bytes()
    (folder / "b.png").write_bytes(data[: len(data) // 2])
    run_dir = tmp_path / "run"
    with pytest.raises(DataError, match=r"\n  b.png: unreadable, truncated or corrupt") as err:
        encode_in_process(model, folder, run_dir, 1, 17)
    assert "a.png" not in str(err.value) and "c.png" not in str(err.value)
    written = [p.name for p in run_dir.iterdir()] if run_dir.exists() else []
    assert not [n for n in written if n.startswith(("encode-ckpt", "decode-ckpt", "compressed")) or n == "results.json"]


# ---------------------------------------------------------------- decode.py's output folder

def test_output_dir_is_checked(tmp_path):
    check_output_dir(str(tmp_path / "new" / "deeper"))  # created later
    check_output_dir(str(tmp_path))  # exists, holds no decoded pictures
    (tmp_path / "notes.txt").write_text("x")
    check_output_dir(str(tmp_path))
    with pytest.raises(DataError, match="notes.txt is an existing file"):
        check_output_dir(str(tmp_path / "notes.txt"), overwrite=True)
    with pytest.raises(DataError, match="cannot be created: .*notes.txt is a file"):
        check_output_dir(str(tmp_path / "notes.txt" / "out"))
    (tmp_path / "00003.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"00003.png, 1 in all.*choose a new output_dir"):
        check_output_dir(str(tmp_path))
    check_output_dir(str(tmp_path), overwrite=True)


# ---------------------------------------------------------------- converting a copy on purpose

def test_convert_writes_exact_copies_the_scan_accepts(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    for kind in ("RGBA", "P", "RGB16", "CMYK"):
        write_bad(src / (f"{kind}.jpg" if kind == "CMYK" else f"{kind}.png"), kind)
    gray16 = np.random.default_rng(0).integers(0, 65536, (8, 8), dtype=np.uint16)
    Image.fromarray(gray16).save(src / "gray16.png")
    convert_pictures(str(src), str(out), 3)
    assert build_dataset(folder_cfg(out, 3), "val") is not None
    with Image.open(src / "RGBA.png") as rgba:
        np.testing.assert_array_equal(exact_pixels(out / "RGBA.png", 3), np.asarray(rgba)[..., :3].transpose(2, 0, 1))
    convert_pictures(str(src / "gray16.png"), str(tmp_path / "g"), 1)
    np.testing.assert_array_equal(exact_pixels(tmp_path / "g" / "gray16.png", 1)[0], gray16 >> 8)
    with pytest.raises(DataError, match="choose a new out_dir"):
        convert_pictures(str(src), str(out), 3)


# ---------------------------------------------------------------- model.attention_resolutions

def test_attention_resolutions_as_users_type_them():
    from helpers import TINY_MODEL
    from improved_diffusion.script_util import create_model

    count = lambda **kw: sum(p.numel() for p in create_model(**dict(TINY_MODEL, **kw)).parameters())  # noqa: E731
    plain = count(attention_resolutions="")
    with_attention = count(attention_resolutions="4")
    assert with_attention > plain
    assert count(attention_resolutions=4) == count(attention_resolutions=[4]) == with_attention  # int: model.x=4
    assert count(attention_resolutions="8, 4") == count(attention_resolutions=[8, 4])
    assert count(attention_resolutions=None) == plain
    with pytest.raises(ValueError, match="does not divide image_size 8"):
        create_model(**dict(TINY_MODEL, attention_resolutions=16))
    with pytest.raises(ValueError, match="pixel sizes such as 16"):
        create_model(**dict(TINY_MODEL, attention_resolutions="sixteen"))
