"""Standalone compressed files (`.bbd`): everything a decoder needs besides the model weights.

A run's final ANS message only makes sense together with how it was made (codec, precisions,
process, data shape, batch layout, the exact weights, the device), so the file carries all of it
in a header (`bbd_header.BBDHeader`, typed and bounded). Damage must never decode into wrong
images silently, so both parts carry a CRC32 and the weights are named by the SHA-256 of their
state dict (and the checkpoint file's base name, as a hint: never a path).

Layout (little-endian)::

    offset  size  field
    0       8     magic  b"\\x89BBD\\r\\n\\x1a\\n"  (catches text-mode transfers, like PNG's)
    8       2     format version (uint16), currently 5
    10      2     reserved, 0
    12      4     header length L (uint32)
    16      L     header (versions 3-5: compact binary, `bbd_wire`; versions 1-2: UTF-8 JSON)
    16+L    4     CRC32 of the header bytes
    20+L    8     payload length in words W (uint64)
    28+L    4     CRC32 of the payload bytes
    32+L    4W    payload: craystack.flatten(message) as uint32 words

and nothing after the payload. Versions: 1 had no `batches` (lanes for a whole batch), 2 added
them, 3 replaced the JSON header (1.2 kB on the digits demo, 18% of its file, with the sender's
absolute checkpoint path in it) by a binary one: 191 bytes on the demo (223 with the framing; its
17-run batch schedule takes 35 of them). Version 4 records which coder wrote the message (the
host's kernels, or the CUDA coder, whose CDF values differ: `coders`); a version-3 file was
always coded on the host. Version 5 records the CPU's kernel family (`cpu_kind`: vendor, torch's
and NumPy's SIMD level), which changes a CPU model's last bits and the host coder's `exp`, so a
decode on another family is refused before it starts.

Why a fixed binary layout rather than JSON compressed with zlib or lzma: the header is a few
dozen small integers, booleans and short names. zlib'd JSON still pays for every key name
(the version-2 demo header without its path, 1,023 bytes, compresses to 546 with zlib -9 and to
600 with raw LZMA2), and a preset dictionary to beat that would itself become part of the format. A fixed field order with varints costs one
byte for most fields and run-length batch schedules stay a few bytes per run; its reader checks
every length against the bytes that are left, so parsing a hostile header allocates nothing
beyond its size. Every field is then validated (`BBDHeader.validate`), and the claims are tied
to the payload (`BBDHeader.check_payload`) before the message is unpacked.
"""
from __future__ import annotations

import os
import struct
import zlib
from typing import Optional, Tuple

import numpy as np

import craystack as cs
from improved_diffusion.atomic_io import atomic_write

from .bbd_header import BBDHeader, DeviceInfo, DiffusionFlags, HeaderError, ModelFlags
from .bbd_wire import header_from_bytes, header_from_json, header_to_bytes

__all__ = ["BBDFormatError", "BBDHeader", "DeviceInfo", "DiffusionFlags", "FORMAT_VERSION", "MAGIC", "ModelFlags",
           "check_header_size", "check_model_sha256", "framing_bytes", "read_bbd", "write_bbd"]

MAGIC = b"\x89BBD\r\n\x1a\n"
FORMAT_VERSION = 5
# 2 added `batches`; 3: binary header with typed device and rank fields; 4: the device's coder;
# 5: the CPU's kernel family
READABLE_VERSIONS = (1, 2, 3, 4, 5)
_PREFIX = struct.Struct("<8sHHI")  # magic, version, reserved, header length
_MIDDLE = struct.Struct("<IQI")  # header crc, payload words, payload crc
_MAX_HEADER = 16 << 20


class BBDFormatError(ValueError):
    """A .bbd file is not readable as written: wrong kind, damaged, forged, or for other weights."""


def framing_bytes(header: BBDHeader) -> int:
    """Bytes of a file that are not the payload: magic, lengths, CRCs and the header."""
    return _PREFIX.size + len(header_to_bytes(header)) + _MIDDLE.size


def check_model_sha256(header: BBDHeader, sha256: str, path: str) -> None:
    """Refuse weights other than the encoder's: decoding needs bit-identical model outputs."""
    if sha256 == header.model_sha256:
        return
    hint = header.checkpoint_name
    raise BBDFormatError(
        f"{path}: was compressed with model weights whose state dict has SHA-256 {header.model_sha256}, but "
        f"the given checkpoint has {sha256}; pass the checkpoint with SHA-256 {header.model_sha256}"
        + (f" (the encoder's file was named {hint})" if hint else "")
    )


def check_header_size(header: BBDHeader) -> int:
    """The header's size in bytes; refuses one over the reader's bound (a tiled folder's picture
    names make it grow with the folder), which encode.py checks on a draft before coding."""
    return len(_checked_header_bytes(header))


def _checked_header_bytes(header: BBDHeader) -> bytes:
    meta = header_to_bytes(header)
    size = len(meta)
    if size > _MAX_HEADER:
        tiling = header.tiling or {}
        names = len(tiling.get("names") or ())
        why = f" (it stores the names of {names} tiled pictures)" if names else ""
        raise ValueError(f"the .bbd header would take {size / 2**20:.1f} MiB{why}, over the {_MAX_HEADER >> 20} MiB a "
                         f"reader accepts; code the folder in parts (one run per sub-folder)")
    return meta


def write_bbd(path: str, header: BBDHeader, message: cs.Message) -> int:
    """Write `message` with `header` to `path` atomically (temporary file, then rename).

    Returns the file size in bytes."""
    if not isinstance(header, BBDHeader):
        raise TypeError(f"header must be a BBDHeader, got {type(header).__name__}")
    if tuple(message.head.shape) != header.head_shape:
        raise ValueError(
            f"message head shape {tuple(message.head.shape)} does not match header.head_shape {header.head_shape}"
        )
    payload = np.ascontiguousarray(cs.flatten(message), dtype="<u4").tobytes()
    header.check_payload(len(payload) // 4)  # never write a file the reader would refuse
    meta = _checked_header_bytes(header)
    blob = b"".join((
        _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(meta)),
        meta,
        _MIDDLE.pack(zlib.crc32(meta), len(payload) // 4, zlib.crc32(payload)),
        payload,
    ))
    atomic_write(os.fspath(path), lambda f: f.write(blob))
    return len(blob)


def read_bbd(path: str, expected_model_sha256: Optional[str] = None) -> Tuple[BBDHeader, cs.Message]:
    """Read a .bbd file; refuse (BBDFormatError naming the file) anything not exactly as written,
    and, given `expected_model_sha256`, a file made with other weights."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            blob = f.read()
    except FileNotFoundError:
        raise BBDFormatError(f"{path}: no such file") from None
    except OSError as exc:
        raise BBDFormatError(f"{path}: cannot read ({exc})") from None

    def fail(what: str) -> BBDFormatError:
        return BBDFormatError(f"{path}: {what}")

    def truncated(needed: int) -> BBDFormatError:
        return fail(f"truncated: the file has {len(blob)} bytes but needs at least {needed}; copy it again")

    if blob[: len(MAGIC)] != MAGIC[: len(blob)]:
        raise fail("not a .bbd file (wrong magic bytes); pass a file written by encode.py")
    if len(blob) < _PREFIX.size:
        raise truncated(_PREFIX.size)
    _, version, _, meta_len = _PREFIX.unpack_from(blob)
    if version not in READABLE_VERSIONS:
        raise fail(
            f"format version {version} is unknown to this reader (it reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}); "
            "decode it with the bits-back-diffusion version that wrote it"
        )
    if meta_len > _MAX_HEADER:
        raise fail(f"header length {meta_len} is implausible; the file is damaged")
    body = _PREFIX.size + meta_len + _MIDDLE.size
    if len(blob) < body:
        raise truncated(body)
    meta = blob[_PREFIX.size:_PREFIX.size + meta_len]
    meta_crc, words, payload_crc = _MIDDLE.unpack_from(blob, _PREFIX.size + meta_len)
    if zlib.crc32(meta) != meta_crc:
        raise fail("the header is corrupted (CRC32 mismatch); copy the file again")
    size = body + 4 * words
    if len(blob) < size:
        raise truncated(size)
    if len(blob) > size:
        raise fail(f"{len(blob) - size} unexpected bytes after the payload; the file is damaged")
    payload = blob[body:]
    if zlib.crc32(payload) != payload_crc:
        raise fail("the payload is corrupted (CRC32 mismatch); copy the file again")
    try:
        header = header_from_bytes(meta, version) if version >= 3 else header_from_json(meta)
        header.check_payload(words)
    except (HeaderError, TypeError) as exc:
        raise fail(f"invalid header (version {version}): {exc}") from None
    if expected_model_sha256 is not None:
        check_model_sha256(header, expected_model_sha256, path)
    try:
        message = cs.unflatten(np.frombuffer(payload, dtype="<u4").astype(np.uint32), header.head_shape)
    except ValueError as exc:
        raise fail(f"the payload is not a message of head shape {header.head_shape}: {exc}") from None
    return header, message
