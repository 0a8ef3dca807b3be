"""The typed header of a `.bbd` file, and every bound a decoder checks before it allocates or builds.

A header comes from a file anyone can rewrite (the CRC only catches accidents), so each field is
typed and bounded here, and `check_payload` ties the claimed work (images, lanes, initial words) to
the size of the message actually stored. A decoder that has passed both checks allocates at most
a small multiple of the file's size and builds no model larger than the checkpoint it was given.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

__all__ = ["BBDHeader", "DeviceInfo", "DiffusionFlags", "HeaderError", "ModelFlags", "LIMITS", "name_hints"]

PRECISION_KEYS = ("prior_prec", "latent_prec", "obs_prec")
NOISE_SCHEDULES = ("linear", "cosine")
DEVICE_KINDS = ("cpu", "cuda")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-z0-9_]{1,32}$")


@dataclass(frozen=True)
class Limits:
    """Hard caps on header fields: far beyond any real run, small enough that a hostile header
    cannot make the decoder allocate gigabytes or build a huge model before anything is checked."""

    image_side: int = 1024          # data_shape H, W and model image_size
    channels: int = 4               # data channels (gray, RGB, RGBA)
    steps: int = 100_000            # diffusion steps before respacing
    batch_size: int = 1 << 16
    images: int = 1 << 31
    dims_per_payload_bit: int = 64  # images may claim at most 64 dims per stored bit (>= 1/64 bits/dim)
    initial_words_per_payload_word: int = 2
    world_size: int = 1 << 16
    torch_threads: int = 1024
    model_width: int = 4096         # num_channels
    res_blocks: int = 64
    levels: int = 8                 # entries of channel_mult / attention_resolutions
    channel_mult: int = 64
    heads: int = 1024
    string: int = 255               # bytes of any string field
    tiling_names: int = 4096        # bytes of one picture name


LIMITS = Limits()


class HeaderError(ValueError):
    """A header field is missing, of the wrong type, out of bounds or inconsistent with another."""


def need(ok: bool, what: str) -> None:
    if not ok:
        raise HeaderError(what)


def is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _int_in(name: str, value: Any, lo: int, hi: int) -> None:
    need(is_int(value) and lo <= value <= hi, f"{name} must be an int in [{lo}, {hi}], got {value!r}"[:300])


def _text(name: str, value: Any, limit: int = LIMITS.string) -> None:
    need(isinstance(value, str) and len(value.encode("utf-8")) <= limit and value.isprintable(),
         f"{name} must be printable text of at most {limit} bytes, got {value!r}"[:300])


def _bools(obj: Any, names: Tuple[str, ...]) -> None:
    for name in names:
        need(isinstance(getattr(obj, name), bool), f"{name} must be a bool, got {getattr(obj, name)!r}")


def _int_list(text: str) -> List[int]:
    """'16,8' -> [16, 8]; '' -> []."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    need(all(re.fullmatch(r"\d{1,6}", p) for p in parts), f"expected comma-separated ints, got {text!r}"[:200])
    return [int(p) for p in parts]


def _canonical_list(value: Any) -> str:
    """A resolution or multiplier list as the flags spell it ('16,8'), whatever the config held."""
    if value is None:
        return ""
    if is_int(value):
        return str(int(value))
    if isinstance(value, str):
        return value.replace(" ", "")
    return ",".join(str(int(v)) for v in value)


def name_hints(checkpoint_path: str, data_name: str) -> Tuple[str, str]:
    """(checkpoint base name, data config name) as a header may store them, "" for one it cannot
    (they only help decode.py look for the checkpoint, which it then verifies by SHA-256)."""
    base = os.path.basename(str(checkpoint_path))
    file_ok = base.isprintable() and 0 < len(base.encode("utf-8")) <= LIMITS.string and base not in (".", "..")
    return (base if file_ok and "\\" not in base else ""), (data_name if _NAME_RE.match(str(data_name)) else "")


@dataclass(frozen=True)
class ModelFlags:
    """`create_model` arguments (improved-diffusion UNet); lists are canonical strings ('16,8')."""

    image_size: int
    num_channels: int
    num_res_blocks: int
    learn_sigma: bool
    class_cond: bool
    use_checkpoint: bool
    attention_resolutions: str
    num_heads: int
    num_heads_upsample: int
    use_scale_shift_norm: bool
    dropout: float
    channel_mult: str
    in_channels: int

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ModelFlags":
        """From a model config (config/model/*.yaml, a run dir's, or a v1/v2 header), with
        create_model's defaults for the optional arguments; unknown keys are refused."""
        data = dict(cfg)
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        need(not unknown, f"model flags {unknown} are unknown to create_model")
        data.setdefault("channel_mult", None)
        data.setdefault("in_channels", 3)
        missing = sorted({f.name for f in dataclasses.fields(cls)} - set(data))
        need(not missing, f"model flags {missing} are missing")
        data["attention_resolutions"] = _canonical_list(data["attention_resolutions"])
        data["channel_mult"] = _canonical_list(data["channel_mult"])
        if is_int(data["dropout"]):
            data["dropout"] = float(data["dropout"])
        return cls(**data)

    def __post_init__(self) -> None:
        _int_in("model image_size", self.image_size, 1, LIMITS.image_side)
        _int_in("model num_channels", self.num_channels, 1, LIMITS.model_width)
        _int_in("model num_res_blocks", self.num_res_blocks, 0, LIMITS.res_blocks)
        _int_in("model num_heads", self.num_heads, 1, LIMITS.heads)
        need(self.num_heads_upsample == -1 or (is_int(self.num_heads_upsample)
                                               and 1 <= self.num_heads_upsample <= LIMITS.heads),
             f"model num_heads_upsample must be -1 or in [1, {LIMITS.heads}], got {self.num_heads_upsample!r}")
        _int_in("model in_channels", self.in_channels, 1, LIMITS.channels)
        _bools(self, ("learn_sigma", "class_cond", "use_checkpoint", "use_scale_shift_norm"))
        need(isinstance(self.dropout, float) and 0.0 <= self.dropout <= 1.0,
             f"model dropout must be a float in [0, 1], got {self.dropout!r}")
        _text("model attention_resolutions", self.attention_resolutions)
        _text("model channel_mult", self.channel_mult)
        resolutions = _int_list(self.attention_resolutions)
        need(len(resolutions) <= LIMITS.levels and all(1 <= r <= self.image_size for r in resolutions),
             f"model attention_resolutions {self.attention_resolutions!r} must list at most {LIMITS.levels} sizes "
             f"in [1, image_size={self.image_size}]")
        mult = _int_list(self.channel_mult)
        need(len(mult) <= LIMITS.levels and all(1 <= m <= LIMITS.channel_mult for m in mult),
             f"model channel_mult {self.channel_mult!r} must list at most {LIMITS.levels} ints in "
             f"[1, {LIMITS.channel_mult}]")

    def as_kwargs(self) -> Dict[str, Any]:
        """Arguments for create_model."""
        kwargs = dataclasses.asdict(self)
        kwargs["channel_mult"] = self.channel_mult or None
        return kwargs


@dataclass(frozen=True)
class DiffusionFlags:
    """`create_gaussian_diffusion` arguments, the respacing included (as a string)."""

    steps: int
    learn_sigma: bool
    sigma_small: bool
    noise_schedule: str
    use_kl: bool
    predict_xstart: bool
    rescale_timesteps: bool
    rescale_learned_sigmas: bool
    timestep_respacing: str
    num_levels: int

    # create_gaussian_diffusion's defaults, for v1/v2 headers that left a key out
    _DEFAULTS = dict(steps=1000, learn_sigma=False, sigma_small=False, noise_schedule="linear", use_kl=False,
                     predict_xstart=False, rescale_timesteps=False, rescale_learned_sigmas=False,
                     timestep_respacing="", num_levels=256)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "DiffusionFlags":
        data = dict(cfg)
        unknown = sorted(set(data) - set(cls._DEFAULTS))
        need(not unknown, f"diffusion flags {unknown} are unknown to create_gaussian_diffusion")
        data = {**cls._DEFAULTS, **data}
        data["timestep_respacing"] = _canonical_list(data["timestep_respacing"]) \
            if not isinstance(data["timestep_respacing"], str) else data["timestep_respacing"]
        return cls(**data)

    def __post_init__(self) -> None:
        _int_in("diffusion steps", self.steps, 1, LIMITS.steps)
        _int_in("diffusion num_levels", self.num_levels, 2, 256)
        need(self.noise_schedule in NOISE_SCHEDULES,
             f"diffusion noise_schedule must be one of {', '.join(NOISE_SCHEDULES)}, got {self.noise_schedule!r}"[:200])
        _text("diffusion timestep_respacing", self.timestep_respacing, 64)
        _bools(self, ("learn_sigma", "sigma_small", "use_kl", "predict_xstart", "rescale_timesteps",
                      "rescale_learned_sigmas"))

    def as_kwargs(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DeviceInfo:
    """Where the encoder's model ran. Decoding needs bit-identical model outputs, which only the
    same kind of device, the same kernels and the same CPU thread count give; the versions are
    kept for the diagnosis when a decode fails anyway. Empty strings: unknown (v1/v2 files; `cpu`,
    the CPU's kernel family (`cpu_kind`), before version 5)."""

    kind: str
    name: str = ""
    torch_version: str = ""
    cuda_version: str = ""
    cudnn_version: int = 0
    deterministic: bool = True
    tf32: bool = False
    torch_threads: int = 0  # 0: unknown (v1/v2 files without it)
    coder: str = "host"  # which kernels coded the message (coders.CODERS); files before v4: host
    cpu: str = ""  # the CPU's kernel family (cpu_kind.cpu_kind()); "" before v5

    @classmethod
    def of(cls, device: Any, coder: str = "host") -> "DeviceInfo":
        """This process's device (torch.device or its type name) and determinism settings, and the
        coder that codes on it (`coders.choose_coder`)."""
        import torch

        from .cpu_kind import cpu_kind

        kind = str(getattr(device, "type", device))
        cuda = kind == "cuda" and torch.cuda.is_available()
        return cls(
            kind=kind,
            name=torch.cuda.get_device_name(device) if cuda else "",
            torch_version=str(torch.__version__),
            cuda_version=str(torch.version.cuda or "") if cuda else "",
            cudnn_version=int(torch.backends.cudnn.version() or 0) if cuda else 0,
            deterministic=bool(torch.are_deterministic_algorithms_enabled()),
            tf32=bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
            torch_threads=int(torch.get_num_threads()),
            coder=coder,
            cpu=cpu_kind(),
        )

    def __post_init__(self) -> None:
        need(self.kind in DEVICE_KINDS, f"device kind must be one of {', '.join(DEVICE_KINDS)}, got {self.kind!r}"[:200])
        for name in ("name", "torch_version", "cuda_version", "cpu"):
            _text(f"device {name}", getattr(self, name), 128)
        _int_in("device cudnn_version", self.cudnn_version, 0, 1 << 31)
        _int_in("device torch_threads", self.torch_threads, 0, LIMITS.torch_threads)
        _bools(self, ("deterministic", "tf32"))
        need(self.coder in ("host", "cuda"), f"device coder must be host or cuda, got {self.coder!r}"[:200])

    @property
    def cpu_matters(self) -> bool:
        """Whether the CPU's kernels shaped the message: the model ran on it, or the host coder did
        the codec's float math (the CUDA coder does it on the GPU)."""
        return self.kind == "cpu" or self.coder == "host"

    def describe(self) -> str:
        """'cuda (NVIDIA H100, torch 2.5.1, CUDA 12.4, cuDNN 90100, 8 threads)' for messages (with
        the CPU's kernel family where it shaped the message)."""
        cpu = self.cpu if self.cpu and self.cpu_matters else ""
        parts = [p for p in (self.name, cpu, self.torch_version and f"torch {self.torch_version}",
                             self.cuda_version and f"CUDA {self.cuda_version}",
                             self.cudnn_version and f"cuDNN {self.cudnn_version}",
                             self.torch_threads and f"{self.torch_threads} threads",
                             self.coder != "host" and f"{self.coder} coder") if p]
        return f"{self.kind} ({', '.join(parts)})" if parts else self.kind


@dataclass(frozen=True)
class BBDHeader:
    """What a decoder needs to rebuild the codec and undo the message, batch by batch.

    `data_shape` is one coded image (a tile when `tiling` is set); `num_images` counts coded
    images. `model_flags` / `diffusion_flags` rebuild the model and process, so the file plus the
    checkpoint suffice; the checkpoint is named by the SHA-256 of its state dict, with its file's
    base name as a hint for finding it (never a path: a file says nothing about the sender's
    machine). `initial_message` ({"words_per_lane", "seed"}) lets the decoder check that it ended
    exactly at the encoder's start. `batches` lists the batch sizes in coding order as [size,
    count] runs (None: full batches of `batch_size`, then the rest); `head_shape` is (images'
    worth of lanes, *data_shape). `rank` / `world_size` place a rank's file among its run's;
    `device` is where the encoder ran (None: unknown, v1/v2 files).
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
    model_flags: ModelFlags
    diffusion_flags: DiffusionFlags
    clip_denoised: bool = True
    likelihood_std_min: float = 1e-6
    tiling: Optional[Dict[str, Any]] = None
    initial_message: Optional[Dict[str, int]] = None
    batches: Optional[List[List[int]]] = None
    checkpoint_name: str = ""
    data_name: str = ""
    rank: int = 0
    world_size: int = 1
    device: Optional[DeviceInfo] = None

    def __post_init__(self) -> None:
        if isinstance(self.data_shape, (list, tuple)):
            object.__setattr__(self, "data_shape", tuple(int(v) if is_int(v) else v for v in self.data_shape))
        if isinstance(self.head_shape, (list, tuple)):
            object.__setattr__(self, "head_shape", tuple(int(v) if is_int(v) else v for v in self.head_shape))
        if is_int(self.likelihood_std_min):
            object.__setattr__(self, "likelihood_std_min", float(self.likelihood_std_min))
        self.validate()

    @property
    def image_dims(self) -> int:
        return int(np.prod(self.data_shape))

    def batch_sizes(self) -> List[int]:
        """Images per batch in encoding order (bounded: `validate` caps num_images and
        `check_payload` ties it to the stored message)."""
        if self.batches is not None:
            return [int(size) for size, count in self.batches for _ in range(int(count))]
        full, rest = divmod(self.num_images, self.batch_size)
        return [self.batch_size] * full + ([rest] if rest else [])

    def validate(self) -> None:
        """Raise HeaderError naming the first field out of bounds or inconsistent with another."""
        need(isinstance(self.codec, str) and bool(_NAME_RE.match(self.codec)),
             f"codec must be a codec name ([a-z0-9_], at most 32), got {self.codec!r}"[:200])
        need(isinstance(self.precisions, dict) and set(self.precisions) == set(PRECISION_KEYS)
             and all(is_int(v) and 1 <= v <= 32 for v in self.precisions.values()),
             f"precisions must map {', '.join(PRECISION_KEYS)} to ints in [1, 32], got {self.precisions!r}"[:300])
        need(isinstance(self.model_flags, ModelFlags), "model_flags must be ModelFlags")
        need(isinstance(self.diffusion_flags, DiffusionFlags), "diffusion_flags must be DiffusionFlags")
        flags = self.diffusion_flags
        _int_in("steps", self.steps, 1, LIMITS.steps)
        _int_in("num_steps", self.num_steps, 1, self.steps)
        need(flags.steps == self.steps, f"diffusion_flags.steps {flags.steps} differs from steps {self.steps}")
        need(isinstance(self.respacing, str) and flags.timestep_respacing == self.respacing,
             f"diffusion_flags.timestep_respacing {flags.timestep_respacing!r} differs from respacing "
             f"{self.respacing!r}"[:300])
        _int_in("num_levels", self.num_levels, 2, 256)
        need(flags.num_levels == self.num_levels,
             f"diffusion_flags.num_levels {flags.num_levels} differs from num_levels {self.num_levels}")
        need(isinstance(self.data_shape, tuple) and len(self.data_shape) == 3 and all(map(is_int, self.data_shape)),
             f"data_shape must be (C, H, W) ints, got {self.data_shape!r}"[:200])
        c, h, w = self.data_shape
        _int_in("data_shape channels", c, 1, LIMITS.channels)
        _int_in("data_shape height", h, 1, LIMITS.image_side)
        _int_in("data_shape width", w, 1, LIMITS.image_side)
        model = self.model_flags
        need((model.in_channels, model.image_size, model.image_size) == self.data_shape,
             f"data_shape {self.data_shape} differs from the model's (in_channels, image_size, image_size) = "
             f"{(model.in_channels, model.image_size, model.image_size)}")
        _int_in("batch_size", self.batch_size, 1, LIMITS.batch_size)
        _int_in("num_images", self.num_images, 0, LIMITS.images)
        need(isinstance(self.head_shape, tuple) and len(self.head_shape) == 4 and self.head_shape[1:] == self.data_shape
             and is_int(self.head_shape[0]) and 1 <= self.head_shape[0] <= self.batch_size,
             f"head_shape {self.head_shape} must be (k,) + data_shape {self.data_shape} with 1 <= k <= batch_size "
             f"({self.batch_size})"[:300])
        self._validate_batches()
        need(isinstance(self.model_sha256, str) and bool(_SHA_RE.match(self.model_sha256)),
             f"model_sha256 must be 64 lowercase hex digits, got {self.model_sha256!r}"[:200])
        need(isinstance(self.clip_denoised, bool), "clip_denoised must be a bool")
        need(isinstance(self.likelihood_std_min, float) and 0 < self.likelihood_std_min < 1e3,
             f"likelihood_std_min must be a float in (0, 1000), got {self.likelihood_std_min!r}")
        if self.initial_message is not None:
            init = self.initial_message
            need(isinstance(init, dict) and set(init) == {"words_per_lane", "seed"}
                 and all(is_int(v) and 0 <= v < 1 << 63 for v in init.values()),
                 f"initial_message must be {{'words_per_lane': int, 'seed': int}} (>= 0), got {init!r}"[:300])
        _text("checkpoint_name", self.checkpoint_name)
        need(os.path.basename(self.checkpoint_name) == self.checkpoint_name and "\\" not in self.checkpoint_name
             and self.checkpoint_name not in (".", ".."),
             f"checkpoint_name must be a file's base name, not a path: {self.checkpoint_name!r}")
        need(isinstance(self.data_name, str) and (self.data_name == "" or bool(_NAME_RE.match(self.data_name))),
             f"data_name must be a data config name ([a-z0-9_]), got {self.data_name!r}"[:200])
        _int_in("world_size", self.world_size, 1, LIMITS.world_size)
        _int_in("rank", self.rank, 0, self.world_size - 1)
        need(self.device is None or isinstance(self.device, DeviceInfo), "device must be DeviceInfo or None")
        if self.tiling is not None:
            self._validate_tiling()

    def _validate_batches(self) -> None:
        if self.batches is None:
            return
        runs = self.batches
        need(isinstance(runs, list) and len(runs) <= LIMITS.images and all(
            isinstance(r, (list, tuple)) and len(r) == 2 and all(is_int(v) and 1 <= v <= LIMITS.images for v in r)
            for r in runs),
            f"batches must be a list of [size, count] pairs of positive ints, got {runs!r}"[:300])
        need(all(size <= self.batch_size for size, _ in runs),
             f"batches has a batch larger than batch_size ({self.batch_size})")
        total = sum(size * count for size, count in runs)
        need(total == self.num_images, f"batches add up to {total} images, not num_images ({self.num_images})")

    def _validate_tiling(self) -> None:
        from .data.errors import DataError
        from .data.tiles import TilingInfo

        need(isinstance(self.tiling, dict), "tiling must be a dict (TilingInfo.to_dict())")
        try:
            info = TilingInfo.from_dict(self.tiling)
        except DataError as exc:
            raise HeaderError(str(exc)) from None
        need(info.tile_size == self.data_shape[1] and info.channels == self.data_shape[0],
             f"tiling of {info.channels}-channel {info.tile_size}-pixel tiles differs from data_shape {self.data_shape}")
        share = len(range(self.rank, info.num_tiles, self.world_size))  # rank r of W holds tiles r, r+W, ...
        need(share == self.num_images,
             f"tiling covers {info.num_tiles} tiles" + (f", {share} of them rank {self.rank} of {self.world_size}'s"
                                                         if self.world_size > 1 else "")
             + f", but the file holds num_images={self.num_images}")
        need(info.names is None or all(isinstance(n, str) and len(n.encode()) <= LIMITS.tiling_names
                                       and not os.path.isabs(n) for n in info.names),
             "tiling names must be relative picture names")

    def check_payload(self, words: int) -> None:
        """Refuse claims the stored message cannot back: the head's lanes must fit in it, the
        initial message may be at most twice its size, and the images at most 64 dims per stored
        bit (1/64 bits/dim; the rates measured here are 100x higher). This caps everything the
        decoder allocates to a small multiple of the file's size."""
        lanes = int(np.prod(self.head_shape))
        need(words >= 1 + 2 * lanes,
             f"the payload's {words} words cannot hold a message head of {lanes} lanes (head_shape {self.head_shape})")
        if self.initial_message is not None:
            initial = self.initial_message["words_per_lane"] * lanes
            need(initial <= LIMITS.initial_words_per_payload_word * words,
                 f"initial_message.words_per_lane={self.initial_message['words_per_lane']} claims {initial} words "
                 f"of initial message for a payload of {words} words")
        dims = self.num_images * self.image_dims
        need(dims <= LIMITS.dims_per_payload_bit * 32 * words,
             f"num_images={self.num_images} ({dims} dims) cannot be coded in a payload of {32 * words} bits "
             f"(at most {LIMITS.dims_per_payload_bit} dims per bit)")
