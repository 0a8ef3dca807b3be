"""Standalone compressed files (`.bbd`): everything a decoder needs besides the model weights.

A run's final ANS message only makes sense together with how it was made (codec, precisions,
process, data shape, batch layout, the exact weights), so the file carries all of it in a
header. Damage must never decode into wrong images silently, so both parts carry a CRC32 and
the weights are named by the SHA-256 of their state dict.

Layout (little-endian)::

    offset  size  field
    0       8     magic  b"\\x89BBD\\r\\n\\x1a\\n"  (catches text-mode transfers, like PNG's)
    8       2     format version (uint16), currently 2 (1: no `batches`, lanes for a whole batch)
    10      2     reserved, 0
    12      4     header length L (uint32)
    16      L     header: UTF-8 JSON object, sorted keys (the fields of BBDHeader)
    16+L    4     CRC32 of the header bytes
    20+L    8     payload length in words W (uint64)
    28+L    4     CRC32 of the payload bytes
    32+L    4W    payload: craystack.flatten(message) as uint32 words

and nothing after the payload.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import craystack as cs
from improved_diffusion.atomic_io import atomic_write

from .batch_schedule import expand_runs

__all__ = ["BBDFormatError", "BBDHeader", "FORMAT_VERSION", "MAGIC", "check_model_sha256", "read_bbd", "write_bbd"]

MAGIC = b"\x89BBD\r\n\x1a\n"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 2 added `batches` (variable batch sizes) and smaller heads
_PREFIX = struct.Struct("<8sHHI")  # magic, version, reserved, header length
_MIDDLE = struct.Struct("<IQI")  # header crc, payload words, payload crc
_MAX_HEADER = 64 << 20
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_PRECISION_KEYS = ("prior_prec", "latent_prec", "obs_prec")


class BBDFormatError(ValueError):
    """A .bbd file is not readable as written: wrong kind, damaged, or for other weights."""


@dataclass(frozen=True)
class BBDHeader:
    """What a decoder needs to rebuild the codec and undo the message, batch by batch.

    `data_shape` is one coded image (a tile when `tiling` is set); `num_images` counts coded
    images. `model_flags` / `diffusion_flags` are the `create_model` / `create_gaussian_diffusion`
    arguments (respacing included), so the file plus the checkpoint suffice. `initial_message`
    ({"words_per_lane", "seed"}: tail words per lane and seed of `codec.initial_message`) lets
    the decoder check that it ended exactly at the encoder's start. `batches` lists the batch
    sizes in coding order as [size, count] runs (None: full batches of `batch_size`, then the
    rest); `head_shape` is (images' worth of lanes, *data_shape), at most batch_size images.
    """

    codec: str
    precisions: Dict[str, int]
    respacing: str
    steps: int
    num_steps: int
    data_shape: Tuple[int, int, int]
    num_levels: int
    batch_size: int
    num_images: int
    head_shape: Tuple[int, ...]
    model_sha256: str
    model_flags: Dict[str, Any] = field(default_factory=dict)
    diffusion_flags: Dict[str, Any] = field(default_factory=dict)
    clip_denoised: bool = True
    likelihood_std_min: float = 1e-6
    tiling: Optional[Dict[str, Any]] = None
    initial_message: Optional[Dict[str, int]] = None
    batches: Optional[List[List[int]]] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_shape", tuple(int(v) for v in self.data_shape))
        object.__setattr__(self, "head_shape", tuple(int(v) for v in self.head_shape))
        self.validate()

    def batch_sizes(self) -> List[int]:
        """Images per batch in encoding order."""
        if self.batches is not None:
            return expand_runs(self.batches)
        full, rest = divmod(self.num_images, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        def need(ok: bool, what: str) -> None:
            if not ok:
                raise ValueError(f"BBDHeader: {what}")

        need(isinstance(self.codec, str) and bool(self.codec), f"codec must be a codec name, got {self.codec!r}")
        need(isinstance(self.precisions, dict) and set(self.precisions) == set(_PRECISION_KEYS)
             and all(_is_int(v) and 1 <= v <= 32 for v in self.precisions.values()),
             f"precisions must map {', '.join(_PRECISION_KEYS)} to ints in [1, 32], got {self.precisions!r}")
        need(isinstance(self.respacing, str), f"respacing must be a string, got {self.respacing!r}")
        for name in ("steps", "num_steps", "num_levels", "batch_size"):
            value = getattr(self, name)
            need(_is_int(value) and value >= 1, f"{name} must be a positive int, got {value!r}")
        need(self.num_steps <= self.steps, f"num_steps ({self.num_steps}) exceeds steps ({self.steps})")
        need(2 <= self.num_levels <= 256, f"num_levels must lie in [2, 256], got {self.num_levels}")
        need(_is_int(self.num_images) and self.num_images >= 0, f"num_images must be an int >= 0, got {self.num_images!r}")
        need(len(self.data_shape) == 3 and min(self.data_shape) >= 1,
             f"data_shape must be (C, H, W) with positive sizes, got {self.data_shape}")
        need(len(self.head_shape) == 4 and self.head_shape[1:] == self.data_shape
             and 1 <= self.head_shape[0] <= self.batch_size,
             f"head_shape {self.head_shape} must be (k,) + data_shape {self.data_shape} with 1 <= k <= batch_size "
             f"({self.batch_size})")
        if self.batches is not None:
            runs = self.batches
            need(isinstance(runs, list) and all(
                isinstance(r, (list, tuple)) and len(r) == 2 and all(_is_int(v) and v >= 1 for v in r) for r in runs),
                f"batches must be a list of [size, count] pairs of positive ints, got {runs!r}"[:300])
            need(all(size <= self.batch_size for size, _ in runs),
                 f"batches has a batch larger than batch_size ({self.batch_size})")
            need(sum(size * count for size, count in runs) == self.num_images,
                 f"batches add up to {sum(size * count for size, count in runs)} images, not num_images "
                 f"({self.num_images})")
        need(isinstance(self.model_sha256, str) and bool(_SHA_RE.match(self.model_sha256)),
             f"model_sha256 must be 64 lowercase hex digits, got {self.model_sha256!r}")
        for name in ("model_flags", "diffusion_flags", "extra"):
            need(isinstance(getattr(self, name), dict), f"{name} must be a dict")
        flags = self.diffusion_flags
        need(str(flags.get("timestep_respacing", self.respacing) or "") == self.respacing,
             f"diffusion_flags.timestep_respacing {flags.get('timestep_respacing')!r} differs from respacing {self.respacing!r}")
        need(int(flags.get("steps", self.steps)) == self.steps,
             f"diffusion_flags.steps {flags.get('steps')!r} differs from steps {self.steps}")
        need(isinstance(self.clip_denoised, bool), "clip_denoised must be a bool")
        need(isinstance(self.likelihood_std_min, (int, float)) and self.likelihood_std_min > 0,
             f"likelihood_std_min must be > 0, got {self.likelihood_std_min!r}")
        if self.initial_message is not None:
            init = self.initial_message
            need(isinstance(init, dict) and set(init) == {"words_per_lane", "seed"}
                 and all(_is_int(v) and v >= 0 for v in init.values()),
                 f"initial_message must be {{'words_per_lane': int, 'seed': int}}, got {init!r}")
        if self.tiling is not None:
            need(isinstance(self.tiling, dict), "tiling must be a dict (TilingInfo.to_dict())")

    def to_json_bytes(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json_bytes(cls, raw: bytes) -> "BBDHeader":
        data = json.loads(raw.decode("utf-8"))
        if not isinstance(data, dict):
            raise ValueError("the header is not a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown header fields {unknown} (written by a newer version?)")
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ValueError(f"missing header fields {missing}")
        return cls(**data)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def check_model_sha256(header: BBDHeader, sha256: str, path: str) -> None:
    """Refuse weights other than the encoder's: decoding needs bit-identical model outputs."""
    if sha256 == header.model_sha256:
        return
    hint = header.extra.get("checkpoint")
    raise BBDFormatError(
        f"{path}: was compressed with model weights whose state dict has SHA-256 {header.model_sha256}, but "
        f"the given checkpoint has {sha256}; pass the checkpoint with SHA-256 {header.model_sha256}"
        + (f" (the encoder used {hint})" if hint else "")
    )


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
    meta = header.to_json_bytes()
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
        header = BBDHeader.from_json_bytes(meta)
    except (ValueError, TypeError) as exc:
        raise fail(f"invalid header: {exc}") from None
    if expected_model_sha256 is not None:
        check_model_sha256(header, expected_model_sha256, path)
    try:
        message = cs.unflatten(np.frombuffer(payload, dtype="<u4").astype(np.uint32), header.head_shape)
    except ValueError as exc:
        raise fail(f"the payload is not a message of head shape {header.head_shape}: {exc}") from None
    return header, message
