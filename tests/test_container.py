"""The .bbd file: roundtrip, every refusal, and decode.py restoring pictures from file + checkpoint."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import craystack as cs
from bits_back_diffusion.bitswap import BITSWAP_PRECISIONS, BitSwapCodec
from bits_back_diffusion.checkpoints import state_dict_sha256
from bits_back_diffusion.coding import initial_message
from bits_back_diffusion.container import (FORMAT_VERSION, BBDFormatError, BBDHeader, DeviceInfo, DiffusionFlags,
                                           ModelFlags, framing_bytes, read_bbd, write_bbd)
from bits_back_diffusion.bbd_header import HeaderError, name_hints
from bits_back_diffusion.cpu_kind import cpu_kind
from bits_back_diffusion import decoder
from bits_back_diffusion.data.tiles import TilingInfo, split_image
from bits_back_diffusion.decode_cli import main as decode_main
from bits_back_diffusion.latent_model import DiffusionLatentModel
from improved_diffusion.script_util import create_gaussian_diffusion, create_model
from legacy_bbd import write_legacy_bbd

REPO = Path(__file__).resolve().parents[1]
SHA = "ab" * 32


@pytest.fixture(autouse=True)
def fresh_logger():
    """decode.py logs which checkpoint it loads; a default logger made during an earlier test holds
    that test's (closed) captured stdout, so each test starts without one."""
    from improved_diffusion import logger

    logger.Logger.CURRENT = logger.Logger.DEFAULT = None
    yield
    logger.Logger.CURRENT = logger.Logger.DEFAULT = None


SMALL_MODEL = ModelFlags(image_size=4, num_channels=32, num_res_blocks=1, learn_sigma=True, class_cond=False,
                         use_checkpoint=False, attention_resolutions="", num_heads=1, num_heads_upsample=-1,
                         use_scale_shift_norm=True, dropout=0.0, channel_mult="1", in_channels=3)
SMALL_PROCESS = DiffusionFlags(steps=4000, learn_sigma=True, sigma_small=False, noise_schedule="cosine", use_kl=True,
                               predict_xstart=False, rescale_timesteps=True, rescale_learned_sigmas=True,
                               timestep_respacing="vlb100", num_levels=256)


def header(**changes) -> BBDHeader:
    fields = dict(codec="bitswap", precisions={"prior_prec": 20, "latent_prec": 28, "obs_prec": 24},
                  respacing="vlb100", steps=4000, num_steps=100, data_shape=(3, 4, 4), num_levels=256,
                  batch_size=2, num_images=5, head_shape=(2, 3, 4, 4), model_sha256=SHA, model_flags=SMALL_MODEL,
                  diffusion_flags=SMALL_PROCESS, checkpoint_name="tiny.pt", data_name="cifar",
                  device=DeviceInfo(kind="cpu", torch_version="2.5.1+cpu", torch_threads=2))
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
    with pytest.raises(BBDFormatError, match=rf"x.bbd.*SHA-256 {SHA}.*given checkpoint has {'cd' * 32}.*named tiny.pt"):
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
    with pytest.raises(HeaderError, match="head_shape"):
        header(head_shape=(3, 3, 4, 4))
    with pytest.raises(HeaderError, match="model_sha256"):
        header(model_sha256="xyz")
    with pytest.raises(HeaderError, match="precisions"):
        header(precisions={"prior_prec": 20})
    with pytest.raises(HeaderError, match="timestep_respacing"):
        header(diffusion_flags=dataclasses.replace(SMALL_PROCESS, timestep_respacing="vlb200"))
    with pytest.raises(HeaderError, match="add up to 4 images, not num_images"):
        header(batches=[[1, 2], [2, 1]])
    with pytest.raises(HeaderError, match="larger than batch_size"):
        header(batches=[[1, 2], [3, 1]])
    with pytest.raises(HeaderError, match=r"\[size, count\] pairs"):
        header(batches=[[1, 0], [5, 1]])
    with pytest.raises(HeaderError, match="data_shape .* differs from the model's"):
        header(data_shape=(3, 8, 8), head_shape=(2, 3, 8, 8))


@pytest.mark.parametrize("changes, message", [
    (dict(num_images=10**12, batches=None), r"num_images must be an int in \[0, 2147483648\]"),
    (dict(num_images=10**12, batches=[[1, 10**12]]), r"num_images must be an int"),
    (dict(world_size=0), r"world_size must be an int in \[1, 65536\]"),
    (dict(rank=2, world_size=2), r"rank must be an int in \[0, 1\]"),
    (dict(checkpoint_name="/home/someone/models/ema.pt"), "base name, not a path"),
    (dict(device=lambda: DeviceInfo(kind="cpu", torch_threads=4096)), r"torch_threads must be an int in \[0, 1024\]"),
    (dict(device=lambda: DeviceInfo(kind="tpu")), "device kind must be one of cpu, cuda"),
    (dict(data_shape=(3, 4096, 4096), head_shape=(2, 3, 4096, 4096)), "model image_size|data_shape height"),
])
def test_hostile_fields_are_refused_by_the_header_itself(changes, message):
    """The issue's cases that need no payload: each is refused with the field named."""
    with pytest.raises(HeaderError, match=message):
        header(**{k: (v() if callable(v) else v) for k, v in changes.items()})


def test_model_flags_are_bounded_before_anything_is_built():
    with pytest.raises(HeaderError, match=r"model num_channels must be an int in \[1, 4096\]"):
        dataclasses.replace(SMALL_MODEL, num_channels=10**6)
    with pytest.raises(HeaderError, match="model flags .'use_fp16'. are unknown"):
        ModelFlags.from_config({**dataclasses.asdict(SMALL_MODEL), "use_fp16": True})
    assert ModelFlags.from_config({**dataclasses.asdict(SMALL_MODEL), "attention_resolutions": 2}).attention_resolutions == "2"


@pytest.mark.parametrize("changes, words, message", [
    (dict(num_images=10**6, batches=None, batch_size=2), 300, r"num_images=1000000 \(48000000 dims\) cannot be coded"),
    (dict(initial_message={"words_per_lane": 10**9, "seed": 1}), 300, "words_per_lane=1000000000 claims"),
    (dict(), 10, "cannot hold a message head of 96 lanes"),
])
def test_claims_the_payload_cannot_back_are_refused(written, changes, words, message):
    """The CRC is no guard: a forged header with a recomputed CRC is refused by its size claims,
    before the message is unpacked (words_per_lane=10**9 once tried to allocate 238 GiB)."""
    path, _ = written
    blob = forge(path.read_bytes(), header(**changes), words=words)
    path.write_bytes(blob)
    with pytest.raises(BBDFormatError, match=message):
        read_bbd(str(path))


def forge(blob: bytes, new_header: BBDHeader, words=None) -> bytes:
    """A file with another header and valid CRCs (and, given `words`, a payload of that many words)."""
    from bits_back_diffusion.bbd_wire import header_to_bytes

    meta_len = struct.unpack_from("<I", blob, 12)[0]
    payload = blob[16 + meta_len + 16:]
    if words is not None:
        payload = (payload * (4 * words // max(len(payload), 1) + 1))[:4 * words]
    meta = header_to_bytes(new_header)
    return b"".join((blob[:12], struct.pack("<I", len(meta)), meta,
                     struct.pack("<IQI", zlib.crc32(meta), len(payload) // 4, zlib.crc32(payload)), payload))


def test_header_is_compact_and_private():
    """The digits demo's header (297 digits in growing batches, bitswap, on CPU) fits in 300 bytes
    with its framing, and names the checkpoint by base name only."""
    demo_model = ModelFlags(image_size=8, num_channels=32, num_res_blocks=2, learn_sigma=True, class_cond=False,
                            use_checkpoint=False, attention_resolutions="", num_heads=4, num_heads_upsample=-1,
                            use_scale_shift_norm=True, dropout=0.1, channel_mult="1,2", in_channels=1)
    process = DiffusionFlags(steps=100, learn_sigma=True, sigma_small=False, noise_schedule="linear", use_kl=True,
                             predict_xstart=False, rescale_timesteps=True, rescale_learned_sigmas=True,
                             timestep_respacing="", num_levels=17)
    runs = [[1, 33], [2, 1], [1, 3], [2, 1], [1, 1], [2, 11], [3, 8], [4, 7], [5, 5], [6, 4], [7, 3], [8, 3], [9, 3],
            [10, 2], [11, 2], [12, 1], [7, 1]]  # the demo's, measured (python encode.py data=digits)
    demo = BBDHeader(codec="bitswap", precisions={"prior_prec": 20, "latent_prec": 28, "obs_prec": 24}, respacing="",
                     steps=100, num_steps=100, data_shape=(1, 8, 8), num_levels=17, batch_size=99, num_images=297,
                     head_shape=(1, 1, 8, 8), model_sha256=SHA, model_flags=demo_model, diffusion_flags=process,
                     initial_message={"words_per_lane": 0, "seed": 7919}, batches=runs,
                     checkpoint_name="ema_0.999_004000.pt", data_name="digits",
                     device=DeviceInfo(kind="cpu", torch_version="2.5.1+cpu", torch_threads=2,
                                       cpu="AuthenticAMD x86_64 torch:AVX512 numpy:AVX512_SPR"))
    assert framing_bytes(demo) <= 300
    from bits_back_diffusion.bbd_wire import header_from_bytes, header_to_bytes

    assert header_from_bytes(header_to_bytes(demo)) == demo
    assert name_hints("/home/someone/runs/ema_0.999_004000.pt", "My Pictures") == ("ema_0.999_004000.pt", "")


def test_every_header_field_survives_the_binary_layout():
    tiled = header(num_images=2, data_shape=(3, 4, 4), batches=[[1, 2]],  # tiles 1 and 4 of 5: rank 1 of 3's
                   tiling={"tile_size": 4, "channels": 3, "images": [[5, 6, 2, 2, 3, 2], [4, 4, 1, 1, 0, 0]],
                           "names": ["a.png", "sub/b.png"]},
                   initial_message={"words_per_lane": 3, "seed": 2**62}, rank=1, world_size=3,
                   device=DeviceInfo(kind="cuda", name="NVIDIA H200", torch_version="2.5.1", cuda_version="12.4",
                                     cudnn_version=90100, deterministic=True, tf32=False, torch_threads=8,
                                     coder="cuda", cpu="GenuineIntel x86_64 torch:AVX512 numpy:X86_V4"),
                   likelihood_std_min=1.5e-6, clip_denoised=False)
    from bits_back_diffusion.bbd_wire import header_from_bytes, header_to_bytes

    assert header_from_bytes(header_to_bytes(tiled)) == tiled


def test_a_header_over_the_readers_bound_is_never_written(tmp_path, monkeypatch):
    """A tiled folder's picture names make the header grow with the folder: one the reader would
    call implausible is refused when written (and encode.py checks a draft before coding)."""
    import bits_back_diffusion.container as container

    names = [f"n01440764/ILSVRC2012_val_{i:08d}.JPEG" for i in range(40)]
    tiled = header(num_images=40, data_shape=(3, 4, 4), batches=[[2, 20]],
                   tiling={"tile_size": 4, "channels": 3, "images": [[4, 4, 1, 1, 0, 0]] * 40, "names": names})
    size = container.check_header_size(tiled)
    message = cs.random_message(7 * 96, (2, 3, 4, 4), seed=1)
    monkeypatch.setattr(container, "_MAX_HEADER", size - 1)
    with pytest.raises(ValueError, match=r"header would take .* MiB \(it stores the names of 40 tiled pictures\), "
                                         r"over the 0 MiB a reader accepts; code the folder in parts"):
        write_bbd(str(tmp_path / "big.bbd"), tiled, message)
    assert not (tmp_path / "big.bbd").exists()
    monkeypatch.setattr(container, "_MAX_HEADER", size)
    write_bbd(str(tmp_path / "fits.bbd"), tiled, message)
    assert read_bbd(str(tmp_path / "fits.bbd"))[0] == tiled


def test_a_rank_file_of_tiles_holds_its_share_of_them():
    """Tiles are sharded like images (rank r of W: r, r+W, ...), so a 2-rank encode of 9 tiles
    writes 5 and 4 of them; each file's header says so, and any other count is refused."""
    tiling = {"tile_size": 4, "channels": 3, "images": [[12, 12, 3, 3, 0, 0]]}  # 9 tiles
    for rank, share in ((0, 5), (1, 4)):
        sizes = [[1, share]]
        assert header(num_images=share, data_shape=(3, 4, 4), batches=sizes, tiling=tiling, rank=rank, world_size=2)
        with pytest.raises(HeaderError, match=f"tiling covers 9 tiles, {share} of them rank {rank} of 2's, but the "
                                              "file holds num_images=9"):
            header(num_images=9, data_shape=(3, 4, 4), batches=[[1, 9]], tiling=tiling, rank=rank, world_size=2)


def test_variable_batches_on_one_image_of_lanes(tmp_path):
    """Version 2: a head smaller than the batch, and batch sizes as [size, count] runs."""
    grown = header(head_shape=(1, 3, 4, 4), batches=[[1, 3], [2, 1]])
    assert grown.batch_sizes() == [1, 1, 1, 2]
    message = cs.random_message(5 * 48, (1, 3, 4, 4), seed=2)
    write_bbd(str(tmp_path / "g.bbd"), grown, message)
    got, back = read_bbd(str(tmp_path / "g.bbd"))
    assert got == grown and cs.message_equal(back, message)


def test_version_1_and_2_files_still_read(tmp_path):
    """Versions 1-2 had a JSON header with a free `extra` dict; they read into the typed header,
    the recorded checkpoint path reduced to its base name."""
    message = cs.random_message(7 * 96, (2, 3, 4, 4), seed=1)
    legacy = {"codec": "bitswap", "precisions": {"prior_prec": 20, "latent_prec": 28, "obs_prec": 24},
              "respacing": "vlb100", "steps": 4000, "num_steps": 100, "data_shape": [3, 4, 4], "num_levels": 256,
              "batch_size": 2, "num_images": 5, "head_shape": [2, 3, 4, 4], "model_sha256": SHA,
              "model_flags": dataclasses.asdict(SMALL_MODEL), "diffusion_flags": dataclasses.asdict(SMALL_PROCESS),
              "extra": {"checkpoint": "/home/someone/models/tiny.pt", "rank": 0, "world_size": 1, "device": "cpu",
                        "torch_threads": 2, "data": "cifar", "seed": 0}}
    write_legacy_bbd(tmp_path / "v1.bbd", 1, legacy, message)
    got, back = read_bbd(str(tmp_path / "v1.bbd"))
    assert got.batches is None and got.batch_sizes() == [2, 2, 1] and cs.message_equal(back, message)
    assert got.checkpoint_name == "tiny.pt" and got.device == DeviceInfo(kind="cpu", torch_threads=2)
    write_legacy_bbd(tmp_path / "v2.bbd", 2, {**legacy, "batches": [[1, 1], [2, 2]]}, message)
    assert read_bbd(str(tmp_path / "v2.bbd"))[0].batch_sizes() == [1, 2, 2]
    write_legacy_bbd(tmp_path / "bad.bbd", 2, {**legacy, "extra": {"rank": 0, "world_size": 0}}, message)
    with pytest.raises(BBDFormatError, match="world_size must be an int"):
        read_bbd(str(tmp_path / "bad.bbd"))


# --- decode.py end to end ------------------------------------------------------------------------

MODEL_FLAGS = dict(image_size=8, num_channels=32, num_res_blocks=1, learn_sigma=True, class_cond=False,
                   use_checkpoint=False, attention_resolutions="", num_heads=1, num_heads_upsample=-1,
                   use_scale_shift_norm=True, dropout=0.0, channel_mult="1", in_channels=3)
DIFFUSION_FLAGS = dict(steps=100, learn_sigma=True, noise_schedule="cosine", use_kl=True, rescale_timesteps=True,
                       rescale_learned_sigmas=True, timestep_respacing="6", num_levels=256)


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
        model_sha256=sha, model_flags=ModelFlags.from_config(MODEL_FLAGS),
        diffusion_flags=DiffusionFlags.from_config(DIFFUSION_FLAGS), tiling=tiling.to_dict(),
        initial_message={"words_per_lane": words, "seed": seed}, batches=[[s, 1] for s in sizes],
        checkpoint_name=ckpt.name, device=DeviceInfo.of("cpu"),
    )


def test_decode_script_restores_pictures_from_file_and_checkpoint(tmp_path, capsys):
    (tmp_path / "weights").mkdir()
    ckpt = tmp_path / "weights" / "model.pt"
    model, sha = save_checkpoint(ckpt, seed=0)
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, (3, 13, 10)).astype(np.uint8), np.full((3, 8, 8), 255, np.uint8)]
    message, head = encode_pictures(pictures, model, sha, ckpt)
    write_bbd(str(tmp_path / "c.bbd"), head, message)
    assert str(tmp_path).encode() not in (tmp_path / "c.bbd").read_bytes()  # nothing about this machine

    out = tmp_path / "out"
    assert decode_main([f"input={tmp_path / 'c.bbd'}", f"output_dir={out}"]) == 2  # nowhere to be found
    err = capsys.readouterr().err
    assert f"needs the checkpoint whose state dict has SHA-256 {sha} (the encoder's file was named model.pt)" in err
    assert "pass model_path=" in err and not out.exists()
    assert decode_main([f"input={tmp_path / 'c.bbd'}", f"output_dir={out}", f"model_path={tmp_path / 'weights'}"]) == 0
    assert sorted(os.listdir(out)) == ["00000.png", "00001.png"]
    for i, want in enumerate(pictures):
        got = np.asarray(Image.open(out / f"{i:05d}.png")).transpose(2, 0, 1)
        np.testing.assert_array_equal(got, want)

    assert decode_main([f"input={tmp_path / 'c.bbd'}", f"output_dir={out}"]) == 2  # no silent overwrite
    assert "already holds" in capsys.readouterr().err
    (tmp_path / "model.pt").write_bytes(ckpt.read_bytes())  # found beside the input by its name
    assert decode_main([f"input={tmp_path / 'c.bbd'}", f"output_dir={tmp_path / 'o3'}"]) == 0
    assert f"loading checkpoint from {tmp_path / 'model.pt'} (beside the input" in capsys.readouterr().out

    other = tmp_path / "other.pt"
    save_checkpoint(other, seed=1)
    assert decode_main([f"input={tmp_path / 'c.bbd'}", f"output_dir={tmp_path / 'o2'}", f"model_path={other}"]) == 2
    assert f"pass the checkpoint with SHA-256 {sha}" in capsys.readouterr().err
    assert decode_main(["input=x.bbd"]) == 2
    assert "missing output_dir" in capsys.readouterr().err


def test_decode_script_level_modes():
    levels = np.arange(17).reshape(1, 1, 17)
    assert decoder.to_pixels(levels, 17, "raw").tolist() == [list(range(17))]
    scaled = decoder.to_pixels(levels, 17, "scaled")[0]
    assert scaled[0] == 0 and scaled[-1] == 255 and len(set(scaled.tolist())) == 17


# --- files of earlier versions, and the encoder's device ---------------------------------------

FIXTURE = REPO / "tests" / "fixtures" / "digits3_v2.bbd"


def fixture_expectations():
    return json.loads(FIXTURE.with_suffix(".json").read_text())


def image_hashes(images):
    return [hashlib.sha256(np.asarray(img)[0].astype(np.uint8).tobytes()).hexdigest() for img in images]


@pytest.mark.parametrize("version", [2, 3, 4])
def test_files_of_earlier_versions_decode_with_this_code(version):
    """Files written by the version-2, -3 and -4 writers (tests/fixtures), found their checkpoint
    through the digits data config's default (a recorded absolute path is not used), decode exactly."""
    fixture = FIXTURE.with_name(f"digits3_v{version}.bbd")
    header, images, numbers = decoder.decode_input(str(fixture), log=lambda *_: None)
    want = json.loads(fixture.with_suffix(".json").read_text())
    assert header.checkpoint_name == "ema_0.999_004000.pt" and header.model_sha256 == want["model_sha256"]
    assert image_hashes(images) == want["image_sha256"] and numbers == [0, 1, 2]
    assert struct.unpack_from("<H", fixture.read_bytes(), 8)[0] == version


def test_device_mismatch_is_refused_before_any_model_call(tmp_path, monkeypatch):
    header, message = read_bbd(str(FIXTURE))
    gpu = DeviceInfo(kind="cuda", name="NVIDIA H200", torch_version="2.5.1", cuda_version="12.4",
                     cudnn_version=90100, torch_threads=1)
    path = tmp_path / "gpu.bbd"
    write_bbd(str(path), dataclasses.replace(header, device=gpu), message)
    def no_model(*args, **kwargs):
        raise AssertionError("the checkpoint was looked for before the device was checked")

    monkeypatch.setattr(decoder, "find_checkpoint", no_model)
    with pytest.raises(decoder.DecodeError, match=r"encoded on cuda \(NVIDIA H200, torch 2.5.1, CUDA 12.4, cuDNN 90100, "
                                                 r"1 threads\), but this decode would run on cpu .*allow_device_mismatch=true"):
        decoder.decode_input(str(path), device="cpu")
    if not torch.cuda.is_available():  # the default is the encoder's device kind
        with pytest.raises(decoder.DecodeError, match=r"on cuda, but this machine has no CUDA GPU .*NVIDIA H200"):
            decoder.decode_input(str(path))
    monkeypatch.undo()
    logs = []  # an expert may try: this file was in fact made on a CPU, so it decodes
    _, images, _ = decoder.decode_input(str(path), device="cpu", allow_device_mismatch=True, log=logs.append)
    assert image_hashes(images) == fixture_expectations()["image_sha256"]
    assert any(line.startswith("WARNING: decoding on cpu") for line in logs)


def test_another_cpu_family_is_refused_before_any_model_call(tmp_path, monkeypatch):
    """The same demo settings wrote 5,508 bytes on an AVX-512 CPU and 5,530 on an AVX2 one: a file
    records the encoder's CPU kernel family, and a decode on another is refused before the model
    (unless the user asks to try: this file was in fact made here, so it then decodes)."""
    header, message = read_bbd(str(FIXTURE.with_name("digits3_v4.bbd")))  # made on a CPU, family unrecorded
    other = "GenuineIntel x86_64 torch:AVX512 numpy:AVX512_SPR"
    assert cpu_kind() != other
    path = tmp_path / "other_cpu.bbd"
    write_bbd(str(path), dataclasses.replace(header, device=dataclasses.replace(header.device, cpu=other)), message)
    assert read_bbd(str(path))[0].device.cpu == other  # version 5 stores it
    monkeypatch.setattr(decoder, "find_checkpoint", lambda *a, **k: pytest.fail("the model was looked for first"))
    with pytest.raises(decoder.DecodeError, match=rf"encoded on a CPU with '{other}', and this machine has "
                                                  rf"'{re.escape(cpu_kind())}'.*allow_device_mismatch=true"):
        decoder.decode_input(str(path), device="cpu")
    monkeypatch.undo()
    logs = []
    _, images, _ = decoder.decode_input(str(path), device="cpu", allow_device_mismatch=True, log=logs.append)
    assert image_hashes(images) == fixture_expectations()["image_sha256"]
    assert any(line.startswith("WARNING: decoding on a CPU with") for line in logs)
    same = tmp_path / "this_cpu.bbd"  # this machine's own family: no question asked
    write_bbd(str(same), dataclasses.replace(header, device=DeviceInfo.of("cpu")), message)
    logs = []
    _, images, _ = decoder.decode_input(str(same), device="cpu", log=logs.append)
    assert image_hashes(images) == fixture_expectations()["image_sha256"] and not any("WARNING" in x for x in logs)


def test_the_cpu_family_counts_where_the_cpu_did_the_float_math():
    """A CPU model or the host coder: the CPU's kernels shaped the message; the CUDA coder on a GPU
    model: they did not, so a GPU file is not tied to its host's processor."""
    assert DeviceInfo.of("cpu").cpu == cpu_kind() and DeviceInfo(kind="cpu").cpu_matters
    assert DeviceInfo(kind="cuda", coder="host").cpu_matters
    gpu = DeviceInfo(kind="cuda", name="NVIDIA H200", coder="cuda", cpu="GenuineIntel x86_64 torch:AVX512 numpy:X86_V4")
    assert not gpu.cpu_matters and "GenuineIntel" not in gpu.describe()
    assert cpu_kind() in DeviceInfo.of("cpu").describe()


def test_more_encoder_threads_than_cores_is_refused_unless_allowed(tmp_path, monkeypatch):
    """torch_threads=256 once made a decode 8x slower; on CPU the count must match the encoder's, so
    more threads than cores is refused before the model (an expert may still try, with a warning)."""
    header_, message = read_bbd(str(FIXTURE))
    path = tmp_path / "threads.bbd"
    write_bbd(str(path), dataclasses.replace(header_, device=DeviceInfo(kind="cpu", torch_threads=256)), message)
    monkeypatch.setattr(decoder.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(decoder, "find_checkpoint", lambda *a: pytest.fail("the model was looked for first"))
    with pytest.raises(decoder.DecodeError, match="encoded with 256 torch threads, and this machine has 2 cores"):
        decoder.decode_input(str(path), device="cpu")
    logs, before = [], torch.get_num_threads()
    with decoder.encoder_threads(read_bbd(str(path))[0], torch.device("cpu"), logs.append):
        assert torch.get_num_threads() == 256
    assert torch.get_num_threads() == before
    assert any("256 torch threads and this machine has 2 cores" in line for line in logs)
