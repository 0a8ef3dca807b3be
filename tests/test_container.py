"""The .bbd file: roundtrip, every refusal, and decode.py restoring pictures from file + checkpoint."""
from __future__ import annotations

import importlib.util
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import craystack as cs
from bits_back_diffusion.bitswap import BITSWAP_PRECISIONS, BitSwapCodec
from bits_back_diffusion.checkpoints import state_dict_sha256
from bits_back_diffusion.codec import initial_message
from bits_back_diffusion.container import FORMAT_VERSION, BBDFormatError, BBDHeader, read_bbd, write_bbd
from bits_back_diffusion.data.tiles import TilingInfo, split_image
from bits_back_diffusion.latent_model import DiffusionLatentModel
from improved_diffusion.script_util import create_gaussian_diffusion, create_model

REPO = Path(__file__).resolve().parents[1]
SHA = "ab" * 32


def header(**changes) -> BBDHeader:
    fields = dict(codec="bitswap", precisions={"prior_prec": 20, "latent_prec": 28, "obs_prec": 24},
                  respacing="vlb100", steps=4000, num_steps=100, data_shape=(3, 4, 4), num_levels=256,
                  batch_size=2, num_images=5, head_shape=(2, 3, 4, 4), model_sha256=SHA,
                  extra={"checkpoint": "/models/tiny.pt"})
    fields.update(changes)
    return BBDHeader(**fields)


@pytest.fixture
def written(tmp_path):
    message = cs.random_message(7 * 96, (2, 3, 4, 4), seed=1)
    path = tmp_path / "x.bbd"
    size = write_bbd(str(path), header(), message)
    assert size == path.stat().st_size
    return path, message


def test_roundtrip(written):
    path, message = written
    got, back = read_bbd(str(path), expected_model_sha256=SHA)
    assert got == header()
    assert got.batch_sizes() == [2, 2, 1]
    assert cs.message_equal(back, message)
    assert [p.name for p in path.parent.iterdir()] == ["x.bbd"]  # no temporary file left behind


def test_refuses_other_weights_naming_the_needed_hash(written):
    path, _ = written
    with pytest.raises(BBDFormatError, match=rf"x.bbd.*SHA-256 {SHA}.*given checkpoint has {'cd' * 32}.*/models/tiny.pt"):
        read_bbd(str(path), expected_model_sha256="cd" * 32)


def test_refuses_wrong_magic_and_unknown_version(written, tmp_path):
    path, _ = written
    other = tmp_path / "notes.txt"
    other.write_text("hello, this is not a compressed file")
    with pytest.raises(BBDFormatError, match="notes.txt: not a .bbd file"):
        read_bbd(str(other))
    blob = bytearray(path.read_bytes())
    blob[8:10] = struct.pack("<H", FORMAT_VERSION + 1)
    path.write_bytes(bytes(blob))
    with pytest.raises(BBDFormatError, match=f"format version {FORMAT_VERSION + 1} is unknown"):
        read_bbd(str(path))


@pytest.mark.parametrize("keep", [0, 5, 15, 40, -4, -1])
def test_refuses_truncated_files(written, keep):
    path, _ = written
    blob = path.read_bytes()
    path.write_bytes(blob[:keep] if keep >= 0 else blob[:len(blob) + keep])
    with pytest.raises(BBDFormatError, match="truncated"):
        read_bbd(str(path))


@pytest.mark.parametrize("where", ["header", "payload", "lengths"])
def test_refuses_a_flipped_byte(written, where):
    path, _ = written
    blob = bytearray(path.read_bytes())
    meta_len = struct.unpack_from("<I", blob, 12)[0]
    offset = {"header": 16 + meta_len // 2, "payload": len(blob) - 7, "lengths": 16 + meta_len + 2}[where]
    blob[offset] ^= 0x10
    path.write_bytes(bytes(blob))
    with pytest.raises(BBDFormatError, match="corrupted|damaged"):
        read_bbd(str(path))


def test_refuses_trailing_bytes_and_missing_files(written, tmp_path):
    path, _ = written
    path.write_bytes(path.read_bytes() + b"\0\0\0\0")
    with pytest.raises(BBDFormatError, match="4 unexpected bytes"):
        read_bbd(str(path))
    with pytest.raises(BBDFormatError, match="no such file"):
        read_bbd(str(tmp_path / "missing.bbd"))


def test_failed_write_leaves_the_old_file(written):
    path, _ = written
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"head shape \(1, 3, 4, 4\) does not match"):
        write_bbd(str(path), header(), cs.random_message(7 * 48, (1, 3, 4, 4)))
    assert path.read_bytes() == before


def test_inconsistent_headers_are_refused():
    with pytest.raises(ValueError, match="head_shape"):
        header(head_shape=(3, 3, 4, 4))
    with pytest.raises(ValueError, match="model_sha256"):
        header(model_sha256="xyz")
    with pytest.raises(ValueError, match="precisions"):
        header(precisions={"prior_prec": 20})
    with pytest.raises(ValueError, match="timestep_respacing"):
        header(diffusion_flags={"timestep_respacing": "vlb200", "steps": 4000})
    with pytest.raises(ValueError, match="add up to 4 images, not num_images"):
        header(batches=[[1, 2], [2, 1]])
    with pytest.raises(ValueError, match="larger than batch_size"):
        header(batches=[[1, 2], [3, 1]])
    with pytest.raises(ValueError, match=r"\[size, count\] pairs"):
        header(batches=[[1, 0], [5, 1]])


def test_variable_batches_on_one_image_of_lanes(tmp_path):
    """Version 2: a head smaller than the batch, and batch sizes as [size, count] runs."""
    grown = header(head_shape=(1, 3, 4, 4), batches=[[1, 3], [2, 1]])
    assert grown.batch_sizes() == [1, 1, 1, 2]
    message = cs.random_message(5 * 48, (1, 3, 4, 4), seed=2)
    write_bbd(str(tmp_path / "g.bbd"), grown, message)
    got, back = read_bbd(str(tmp_path / "g.bbd"))
    assert got == grown and cs.message_equal(back, message)


def test_version_1_files_still_read(written):
    """Version 1 (before variable batches) has the same layout and no `batches`: full batches."""
    path, message = written
    blob = bytearray(path.read_bytes())
    blob[8:10] = struct.pack("<H", 1)
    path.write_bytes(bytes(blob))
    got, back = read_bbd(str(path))
    assert got.batches is None and got.batch_sizes() == [2, 2, 1]
    assert cs.message_equal(back, message)


# --- decode.py end to end ------------------------------------------------------------------------

MODEL_FLAGS = dict(image_size=8, num_channels=32, num_res_blocks=1, learn_sigma=True, class_cond=False,
                   use_checkpoint=False, attention_resolutions="", num_heads=1, num_heads_upsample=-1,
                   use_scale_shift_norm=True, dropout=0.0, channel_mult="1", in_channels=3)
DIFFUSION_FLAGS = dict(steps=100, learn_sigma=True, noise_schedule="cosine", use_kl=True, rescale_timesteps=True,
                       rescale_learned_sigmas=True, timestep_respacing="6", num_levels=256)


def load_decode_script():
    spec = importlib.util.spec_from_file_location("decode_script", REPO / "decode.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_checkpoint(path, seed):
    torch.manual_seed(seed)
    model = create_model(**MODEL_FLAGS)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    torch.save(model.state_dict(), path)
    return model.eval(), state_dict_sha256(model.state_dict())


def encode_pictures(pictures, model, sha, ckpt, batch_size=3, seed=3):
    """What encode.py does: tile, code batches of growing size on one image's lanes, describe it in
    a header."""
    parts = [split_image(p, 8) for p in pictures]
    tiles = np.concatenate([t for t, _ in parts]).astype(np.int64)
    tiling = TilingInfo(8, 3, tuple(g for _, g in parts))
    diffusion = create_gaussian_diffusion(**DIFFUSION_FLAGS)
    codec = BitSwapCodec(DiffusionLatentModel(model, diffusion, torch.device("cpu")), BITSWAP_PRECISIONS)
    shape = (1, 3, 8, 8)
    words = codec.initial_words_per_lane()
    message = initial_message(codec, shape, seed)
    sizes = [1, batch_size, 1]
    assert sum(sizes) == len(tiles)
    ends = np.cumsum([0] + sizes)
    for start, end in zip(ends, ends[1:]):
        message = codec.encode(message, tiles[start:end])
    return message, BBDHeader(
        codec="bitswap", precisions=dict(BITSWAP_PRECISIONS.__dict__), respacing="6", steps=100, num_steps=6,
        data_shape=(3, 8, 8), num_levels=256, batch_size=batch_size, num_images=len(tiles), head_shape=shape,
        model_sha256=sha, model_flags=MODEL_FLAGS, diffusion_flags=DIFFUSION_FLAGS, tiling=tiling.to_dict(),
        initial_message={"words_per_lane": words, "seed": seed}, batches=[[s, 1] for s in sizes],
        extra={"checkpoint": str(ckpt)},
    )


def test_decode_script_restores_pictures_from_file_and_checkpoint(tmp_path, capsys):
    decode = load_decode_script()
    ckpt = tmp_path / "model.pt"
    model, sha = save_checkpoint(ckpt, seed=0)
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (3, 13, 10)).astype(np.uint8), np.full((3, 8, 8), 255, np.uint8)]
    message, head = encode_pictures(pictures, model, sha, ckpt)
    write_bbd(str(tmp_path / "c.bbd"), head, message)

    out = tmp_path / "out"
    assert decode.main([f"input={tmp_path / 'c.bbd'}", f"output_dir={out}"]) == 0
    assert sorted(os.listdir(out)) == ["00000.png", "00001.png"]
    for i, want in enumerate(pictures):
        got = np.asarray(Image.open(out / f"{i:05d}.png")).transpose(2, 0, 1)
        np.testing.assert_array_equal(got, want)

    assert decode.main([f"input={tmp_path / 'c.bbd'}", f"output_dir={out}"]) == 2  # no silent overwrite
    assert "exists" in capsys.readouterr().err

    other = tmp_path / "other.pt"
    save_checkpoint(other, seed=1)
    assert decode.main([f"input={tmp_path / 'c.bbd'}", f"output_dir={tmp_path / 'o2'}", f"model_path={other}"]) == 2
    assert f"pass the checkpoint with SHA-256 {sha}" in capsys.readouterr().err
    assert decode.main(["input=x.bbd"]) == 2
    assert "missing output_dir" in capsys.readouterr().err


def test_decode_script_level_modes():
    decode = load_decode_script()
    levels = np.arange(17).reshape(1, 1, 17)
    assert decode.to_pixels(levels, 17, "raw").tolist() == [list(range(17))]
    scaled = decode.to_pixels(levels, 17, "scaled")[0]
    assert scaled[0] == 0 and scaled[-1] == 255 and len(set(scaled.tolist())) == 17
