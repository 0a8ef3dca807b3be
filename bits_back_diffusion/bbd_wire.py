"""The bytes of a `.bbd` header: the compact binary layout of versions 3-5, and the JSON of versions 1-2.

Version 4 is version 3 with the coder (DeviceInfo.coder) after the device's other fields, and
version 5 is version 4 with the CPU's kernel family (DeviceInfo.cpu) after the coder. Version 3 writes the fields of `BBDHeader` in one fixed order (`_LAYOUT` below): unsigned ints as
LEB128 varints, signed ones zigzag-encoded, bools as one byte 0/1, floats as IEEE-754 float64,
strings as a varint byte length + UTF-8, the SHA-256 as its 32 raw bytes, optional parts behind a
0/1 byte and lists behind a varint count. Fields a decoder can derive (respacing, steps and levels
from the diffusion flags; the head's image shape from data_shape) are stored once. The reader
never trusts a length: counts and string lengths are checked against the bytes that are left, so
parsing allocates at most the header's size, and every value is then validated by `BBDHeader`.
"""
from __future__ import annotations

import json
import struct
from typing import Any, Callable, Dict, List, Optional

from .bbd_header import BBDHeader, DeviceInfo, DiffusionFlags, HeaderError, ModelFlags, need

__all__ = ["header_from_bytes", "header_from_json", "header_to_bytes"]

_F64 = struct.Struct("<d")


class _Writer:
    def __init__(self) -> None:
        self.out = bytearray()

    def uint(self, value: int) -> None:
        value = int(value)
        need(value >= 0, f"cannot store negative {value} as an unsigned varint")
        while True:
            byte, value = value & 0x7F, value >> 7
            self.out.append(byte | (0x80 if value else 0))
            if not value:
                return

    def sint(self, value: int) -> None:
        value = int(value)
        self.uint(2 * value if value >= 0 else -2 * value - 1)

    def flag(self, value: bool) -> None:
        self.out.append(1 if value else 0)

    def real(self, value: float) -> None:
        self.out += _F64.pack(float(value))

    def text(self, value: str) -> None:
        raw = value.encode("utf-8")
        self.uint(len(raw))
        self.out += raw

    def raw(self, value: bytes) -> None:
        self.out += value


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def _take(self, n: int, what: str) -> bytes:
        need(0 <= n <= len(self.data) - self.pos, f"the header ends inside {what}")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def uint(self, what: str = "a number") -> int:
        value = shift = 0
        while True:
            byte = self._take(1, what)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
            need(shift < 64, f"{what}: varint longer than 64 bits")

    def sint(self, what: str = "a number") -> int:
        value = self.uint(what)
        return value >> 1 if not value & 1 else -((value + 1) >> 1)

    def flag(self, what: str = "a flag") -> bool:
        byte = self._take(1, what)[0]
        need(byte in (0, 1), f"{what}: expected a 0/1 byte, got {byte}")
        return bool(byte)

    def real(self, what: str = "a float") -> float:
        return _F64.unpack(self._take(8, what))[0]

    def text(self, what: str = "a string") -> str:
        raw = self._take(self.uint(what), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise HeaderError(f"{what} is not UTF-8") from None

    def count(self, what: str, min_bytes_each: int) -> int:
        """A list length that the remaining bytes can actually hold."""
        n = self.uint(what)
        need(n * min_bytes_each <= len(self.data) - self.pos, f"{what}: {n} entries cannot fit in the header")
        return n

    def done(self) -> None:
        need(self.pos == len(self.data), f"{len(self.data) - self.pos} unexpected bytes after the header fields")


# (field, writer method, reader method) per flag dataclass, in stored order
_MODEL = (("image_size", "uint"), ("num_channels", "uint"), ("num_res_blocks", "uint"), ("learn_sigma", "flag"),
          ("class_cond", "flag"), ("use_checkpoint", "flag"), ("attention_resolutions", "text"),
          ("num_heads", "uint"), ("num_heads_upsample", "sint"), ("use_scale_shift_norm", "flag"),
          ("dropout", "real"), ("channel_mult", "text"), ("in_channels", "uint"))
_DIFFUSION = (("steps", "uint"), ("learn_sigma", "flag"), ("sigma_small", "flag"), ("noise_schedule", "text"),
              ("use_kl", "flag"), ("predict_xstart", "flag"), ("rescale_timesteps", "flag"),
              ("rescale_learned_sigmas", "flag"), ("timestep_respacing", "text"), ("num_levels", "uint"))
_DEVICE_V3 = (("kind", "text"), ("name", "text"), ("torch_version", "text"), ("cuda_version", "text"),
              ("cudnn_version", "uint"), ("deterministic", "flag"), ("tf32", "flag"), ("torch_threads", "uint"))
_DEVICE_V4 = _DEVICE_V3 + (("coder", "text"),)
_DEVICE = _DEVICE_V4 + (("cpu", "text"),)  # version 5
_DEVICE_BY_VERSION = {3: _DEVICE_V3, 4: _DEVICE_V4, 5: _DEVICE}


def _put(w: _Writer, obj: Any, layout) -> None:
    for name, kind in layout:
        getattr(w, kind)(getattr(obj, name))


def _get(r: _Reader, cls, layout, prefix: str):
    return cls(**{name: getattr(r, kind)(f"{prefix}.{name}") for name, kind in layout})


def _optional(w: _Writer, value: Any, put: Callable[[Any], None]) -> None:
    w.flag(value is not None)
    if value is not None:
        put(value)


def header_to_bytes(h: BBDHeader) -> bytes:
    """The version-5 bytes of a header (see the module doc)."""
    w = _Writer()
    w.text(h.codec)
    for key in ("prior_prec", "latent_prec", "obs_prec"):
        w.uint(h.precisions[key])
    _put(w, h.model_flags, _MODEL)
    _put(w, h.diffusion_flags, _DIFFUSION)
    w.uint(h.num_steps)
    for v in h.data_shape:
        w.uint(v)
    w.uint(h.batch_size)
    w.uint(h.num_images)
    w.uint(h.head_shape[0])
    w.raw(bytes.fromhex(h.model_sha256))
    w.flag(h.clip_denoised)
    w.real(h.likelihood_std_min)
    _optional(w, h.initial_message, lambda m: (w.uint(m["words_per_lane"]), w.uint(m["seed"])))
    _optional(w, h.batches, lambda runs: _put_runs(w, runs))
    _optional(w, h.tiling, lambda t: _put_tiling(w, t))
    w.text(h.checkpoint_name)
    w.text(h.data_name)
    w.uint(h.rank)
    w.uint(h.world_size)
    _optional(w, h.device, lambda d: _put(w, d, _DEVICE))
    return bytes(w.out)


def _put_runs(w: _Writer, runs: List[List[int]]) -> None:
    w.uint(len(runs))
    for size, count in runs:
        w.uint(size)
        w.uint(count)


def _put_tiling(w: _Writer, tiling: Dict[str, Any]) -> None:
    """Only the pictures' sizes: their grids follow from the tile size (TilingInfo.from_dict)."""
    w.uint(tiling["tile_size"])
    w.uint(tiling["channels"])
    w.uint(len(tiling["images"]))
    for row in tiling["images"]:
        w.uint(row[0])
        w.uint(row[1])
    _optional(w, tiling.get("names"), lambda names: [w.text(n) for n in names])


def _get_tiling(r: _Reader) -> Dict[str, Any]:
    from .data.errors import DataError
    from .data.tiles import tile_grid

    tile, channels = r.uint("tiling.tile_size"), r.uint("tiling.channels")
    need(1 <= tile <= 1 << 16, f"tiling.tile_size {tile} is out of range")
    images = []
    for _ in range(r.count("tiling.images", 2)):
        height, width = r.uint("tiling height"), r.uint("tiling width")
        need(1 <= height < 1 << 31 and 1 <= width < 1 << 31, f"tiling picture size {height}x{width} is out of range")
        try:
            g = tile_grid(height, width, tile)
        except DataError as exc:
            raise HeaderError(str(exc)) from None
        images.append([g.height, g.width, g.rows, g.cols, g.pad_bottom, g.pad_right])
    out: Dict[str, Any] = {"tile_size": tile, "channels": channels, "images": images}
    if r.flag("tiling.names present"):
        out["names"] = [r.text("tiling name") for _ in range(len(images))]
    return out


def header_from_bytes(data: bytes, version: int = 5) -> BBDHeader:
    """Parse and validate version-3, -4 or -5 header bytes; HeaderError names the first bad field."""
    r = _Reader(data)
    codec = r.text("codec")
    precisions = {key: r.uint(key) for key in ("prior_prec", "latent_prec", "obs_prec")}
    model = _get(r, ModelFlags, _MODEL, "model")
    diffusion = _get(r, DiffusionFlags, _DIFFUSION, "diffusion")
    num_steps = r.uint("num_steps")
    data_shape = tuple(r.uint("data_shape") for _ in range(3))
    batch_size, num_images, head_images = r.uint("batch_size"), r.uint("num_images"), r.uint("lane images")
    sha = r._take(32, "model_sha256").hex()
    clip, std_min = r.flag("clip_denoised"), r.real("likelihood_std_min")
    initial = {"words_per_lane": r.uint("words_per_lane"), "seed": r.uint("seed")} if r.flag("initial_message") else None
    batches = None
    if r.flag("batches present"):
        batches = [[r.uint("batch size"), r.uint("batch count")] for _ in range(r.count("batches", 2))]
    tiling = _get_tiling(r) if r.flag("tiling present") else None
    checkpoint_name, data_name = r.text("checkpoint_name"), r.text("data_name")
    rank, world_size = r.uint("rank"), r.uint("world_size")
    layout = _DEVICE_BY_VERSION[version]
    device = _get(r, DeviceInfo, layout, "device") if r.flag("device present") else None
    r.done()
    return BBDHeader(
        codec=codec, precisions=precisions, respacing=diffusion.timestep_respacing, steps=diffusion.steps,
        num_steps=num_steps, data_shape=data_shape, num_levels=diffusion.num_levels, batch_size=batch_size,
        num_images=num_images, head_shape=(head_images,) + data_shape, model_sha256=sha, model_flags=model,
        diffusion_flags=diffusion, clip_denoised=clip, likelihood_std_min=std_min, tiling=tiling,
        initial_message=initial, batches=batches, checkpoint_name=checkpoint_name, data_name=data_name, rank=rank,
        world_size=world_size, device=device,
    )


_LEGACY_FIELDS = {"codec", "precisions", "respacing", "steps", "num_steps", "data_shape", "num_levels", "batch_size",
                  "num_images", "head_shape", "model_sha256", "model_flags", "diffusion_flags", "clip_denoised",
                  "likelihood_std_min", "tiling", "initial_message", "batches", "extra"}
_LEGACY_REQUIRED = _LEGACY_FIELDS - {"clip_denoised", "likelihood_std_min", "tiling", "initial_message", "batches",
                                     "extra"}


def header_from_json(raw: bytes) -> BBDHeader:
    """A version 1/2 header (UTF-8 JSON with a free `extra` dict) as a typed header. The recorded
    checkpoint path is reduced to its base name: a file never chooses what is loaded."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeaderError(f"the header is not JSON ({exc})") from None
    need(isinstance(data, dict), "the header is not a JSON object")
    unknown = sorted(set(data) - _LEGACY_FIELDS)
    need(not unknown, f"unknown header fields {unknown} (written by a newer version?)")
    missing = sorted(_LEGACY_REQUIRED - set(data))
    need(not missing, f"missing header fields {missing}")
    extra = data.pop("extra", None) or {}
    need(isinstance(extra, dict), "extra must be a dict")
    need(isinstance(data["model_flags"], dict) and data["model_flags"],
         "this old file records no model flags; it cannot be decoded by this version")
    need(isinstance(data["diffusion_flags"], dict), "diffusion_flags must be a dict")
    data["model_flags"] = ModelFlags.from_config(data["model_flags"])
    diffusion = dict(data["diffusion_flags"])
    diffusion.setdefault("timestep_respacing", data["respacing"])
    diffusion.setdefault("steps", data["steps"])
    diffusion.setdefault("num_levels", data["num_levels"])
    data["diffusion_flags"] = DiffusionFlags.from_config(diffusion)
    checkpoint = extra.get("checkpoint") or ""
    need(isinstance(checkpoint, str), "extra.checkpoint must be a string")
    threads = extra.get("torch_threads") or 0
    kind: Optional[str] = extra.get("device")
    return BBDHeader(
        **data,
        checkpoint_name=checkpoint.replace("\\", "/").rsplit("/", 1)[-1],
        data_name=str(extra.get("data") or ""),
        rank=extra.get("rank", 0), world_size=extra.get("world_size", 1),
        device=DeviceInfo(kind=kind, torch_threads=threads) if kind is not None else None,
    )
