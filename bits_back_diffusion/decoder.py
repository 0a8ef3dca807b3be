"""Decoding .bbd files: the one decode loop and the one header-driven model loader.

Everything that turns a message back into images goes through here: encode.py's roundtrip check
(`DatasetCoder.decode`), decode.py (`decode_input`, and per rank `parallel_decode`), and the
benches. `pop_batches` is the loop itself: batches come off the message last-first (it is a
stack), each with the message left after it, so callers add only what is theirs (compare with
the input and checkpoint; refuse a message that runs dry; time a bench).

A file's header names the codec, precisions, process, model flags and device, so the checkpoint
is the only other input (`checkpoint_lookup`); before any model is built every header field is
checked against bounds and the payload, the rank set against itself, the device and thread count
against this machine (`decode_device`), and the model's parameter count from the header's flags
against the checkpoint's.

An encode run dir as input decodes its compressed.bbd, or all of its compressed.rank<r>.bbd
(written by `mpiexec -n F python encode.py`; rank r holds images r, r+F, …) into one numbering.
A single rank file decodes to its own images under their dataset numbers, unless the pictures
were tiled: their tiles are spread over all ranks, so the run dir is needed then.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

import craystack as cs

from .checkpoint_lookup import checkpoint_candidates, find_checkpoint  # noqa: F401 - part of the decoder's API
from .decode_device import (check_coder, check_threads, choose_device, encoder_threads,  # noqa: F401 - API
                            file_coder)
from .decode_errors import DecodeError
from .decoded_pngs import LEVEL_MODES, to_pixels, write_pngs  # noqa: F401 - part of the decoder's API
from .models import parameter_count  # noqa: F401 - part of the decoder's API

Log = Callable[[str], None]
_DECODE_FAILURES = (ValueError, ArithmeticError, RuntimeError, IndexError)


# ------------------------------------------------------------------------------ the decode loop

class BatchDecodeError(ValueError):
    """The codec could not pop a batch: the message is not what this codec and model pushed."""

    def __init__(self, index: int, count: int, cause: BaseException):
        self.index, self.count, self.cause = index, count, cause
        super().__init__(f"batch {index + 1} of {count} does not decode ({str(cause)[:300]})")


@dataclass
class DecodedBatch:
    index: int           # position in coding order (0: the first batch the encoder pushed)
    images: np.ndarray   # (size, C, H, W) int64 levels
    message: "cs.Message"  # the message once this batch is popped


def pop_batches(codec, message, sizes: Sequence[int], done: int = 0) -> Iterator[DecodedBatch]:
    """Pop the batches of `sizes` (coding order) last-first, skipping the `done` already popped
    (a resumed decode passes the message it saved after them)."""
    for popped in range(done, len(sizes)):
        index = len(sizes) - 1 - popped
        batch = pop_batch(codec, message, int(sizes[index]), index, len(sizes))
        message = batch.message
        yield batch


def pop_batch(codec, message, size: int, index: int, count: int) -> DecodedBatch:
    """Pop one batch of `size` images, the `index`-th of `count` in coding order."""
    try:
        message, images = codec.decode(message, int(size))
    except _DECODE_FAILURES as exc:
        raise BatchDecodeError(index, count, exc) from None
    return DecodedBatch(index, images, message)


def decode_message(codec, header, message, source: str, log: Log = print) -> np.ndarray:
    """Pop every batch of one file's message; returns (num_images, C, H, W) int64 levels in coding
    order, after checking that the message ended exactly where the encoder started.

    A message that cannot hold the batches the header claims is refused as soon as it runs dry:
    encoding only ever adds generator words it borrowed (craystack's empty_pops), so a decode that
    has to borrow beyond the file's count is past the encoder's start, and stops there instead of
    decoding noise for every claimed image."""
    from .container import BBDFormatError

    sizes = header.batch_sizes()
    borrowed = cs.empty_pops(message)
    batches: List[np.ndarray] = []
    start = time.time()
    try:
        for batch in pop_batches(codec, message, sizes):
            if cs.empty_pops(batch.message) > borrowed:
                raise BBDFormatError(
                    f"{source}: the message ran dry in batch {batch.index + 1} of {len(sizes)}: the file holds fewer "
                    f"images than its header claims ({header.num_images}), or was made with other settings; it was "
                    "altered or damaged")
            batches.append(batch.images)
            message = batch.message
            log(f"{os.path.basename(source)}: decoded batch {batch.index + 1}/{len(sizes)} ({len(batch.images)} "
                f"images, {time.time() - start:.1f}s)")
    except BatchDecodeError as exc:
        raise BBDFormatError(f"{source}: {exc}; the file was not made by this encoder with these weights and "
                             "settings, or was altered") from None
    if header.initial_message is not None and not cs.message_equal(message, expected_initial(header)):
        raise BBDFormatError(
            f"{source}: decoding did not end at the encoder's initial message, so the images are not trustworthy; "
            "decode with the same software version and device type as the encoder"
        )
    return np.concatenate(batches[::-1]) if batches else np.zeros((0,) + tuple(header.data_shape), np.int64)


def expected_initial(header):
    """The message the encoder started from (coding.initial_message_for)."""
    from .coding import initial_message_for

    init = header.initial_message
    return initial_message_for(tuple(header.head_shape), int(init["words_per_lane"]), int(init["seed"]))


# ------------------------------------------------------------------------- model and codec

def load_coding_model(header, ckpt: str, state, device, source: str):
    """The encoder's UNet and process from the header's flags (models.build_model, the loader
    every script shares), once the flags are known to fit the checkpoint: a forged header cannot
    make the decoder build a huge model."""
    from .container import BBDFormatError
    from .models import WeightsMismatch, build_model

    try:
        expected = parameter_count(header.model_flags.as_kwargs())
    except Exception as exc:  # create_model asserts, or raises any of several types, for flags it cannot build
        raise BBDFormatError(f"{source}: the model flags do not describe a model ({type(exc).__name__}: "
                             f"{str(exc)[:200]})") from None
    stored = sum(t.numel() for t in state.values())
    if expected != stored:
        raise BBDFormatError(f"{source}: the model flags describe {expected:,} parameters but checkpoint {ckpt} holds "
                             f"{stored:,}; the header does not belong to these weights")
    try:
        model, diffusion = build_model(header.model_flags.as_kwargs(), header.diffusion_flags.as_kwargs(), state,
                                       device)
    except WeightsMismatch as exc:
        raise BBDFormatError(f"{source}: the model flags do not fit checkpoint {ckpt}: {str(exc)[:400]}") from None
    except (ValueError, TypeError) as exc:
        raise BBDFormatError(f"{source}: the diffusion flags do not describe a process ({exc})") from None
    if diffusion.num_timesteps != header.num_steps:
        raise BBDFormatError(
            f"{source}: the process has {diffusion.num_timesteps} steps but the file was coded with {header.num_steps}"
        )
    return model, diffusion


def codec_settings(header, source: str):
    """(codec class, Precisions) the file names, checked before any model is loaded."""
    from .codec_registry import codec_class
    from .coding import Precisions
    from .container import BBDFormatError

    try:
        cls = codec_class(header.codec)
    except ValueError as exc:
        raise DecodeError(f"{source} uses codec {header.codec!r}, unknown here ({exc})") from None
    try:
        return cls, Precisions(**header.precisions)
    except ValueError as exc:
        raise BBDFormatError(f"{source}: invalid codec precisions ({exc})") from None


def build_codec(cls, precisions, latent_model, source: str, coder: str = "host"):
    from .container import BBDFormatError

    try:
        return cls(latent_model, precisions, coder=coder)
    except ValueError as exc:  # settings this codec refuses for this process
        raise BBDFormatError(f"{source}: the codec settings do not fit the process ({exc})") from None


# ------------------------------------------------------------------------------ the input

_SHARED_FIELDS = ("codec", "precisions", "respacing", "steps", "num_steps", "data_shape", "num_levels", "batch_size",
                  "model_sha256", "model_flags", "diffusion_flags", "clip_denoised", "likelihood_std_min", "tiling")
_RANK_FILE = re.compile(r"^compressed\.rank(\d+)\.bbd$")


def find_inputs(path: str) -> List[str]:
    """The .bbd files `input=` names: the file itself, or an encode run dir's compressed file(s)."""
    if not os.path.isdir(path):
        return [path]
    single = os.path.join(path, "compressed.bbd")
    ranks = sorted((int(m.group(1)), name) for name in os.listdir(path) if (m := _RANK_FILE.match(name)))
    if os.path.isfile(single) and ranks:
        raise DecodeError(f"{path} holds both compressed.bbd and compressed.rank<r>.bbd files; pass one file as input")
    if os.path.isfile(single):
        return [single]
    if not ranks:
        raise DecodeError(f"{path} holds no compressed.bbd or compressed.rank<r>.bbd; run encode.py into it first")
    return [os.path.join(path, name) for _, name in ranks]


def check_workers(path: str, files: int, workers: int) -> None:
    """W decode ranks share F files only when W divides F (rank r takes files r, r+W, …)."""
    if workers > 1 and files % workers:
        divisors = [d for d in range(1, files + 1) if files % d == 0]
        raise DecodeError(
            f"{workers} decode ranks cannot share the {files} compressed file(s) of {path}: the number of ranks must "
            f"divide the number of files (rank r decodes files r, r+{workers}, …); run with mpiexec -n "
            f"{' or '.join(str(d) for d in divisors)}" + (" (one file decodes on one rank)" if files == 1 else ""))


def rank_of(header) -> Tuple[int, int]:
    """(rank, world size) of the encoder process that wrote this file; (0, 1) for single files."""
    return header.rank, header.world_size


def check_rank_set(parts: List[Tuple[str, object]], source: str) -> None:
    """Several files decode together only as all ranks of one encode run, each holding the images
    encode.py's sharding gives it (rank r: r, r + F, …)."""
    if len(parts) == 1:
        return
    first = parts[0][1]
    world = rank_of(first)[1]
    ranks = sorted(rank_of(h)[0] for _, h in parts)
    if ranks != list(range(world)) or any(rank_of(h)[1] != world for _, h in parts):
        raise DecodeError(f"{source}: expected the files of ranks 0..{world - 1} of one run, found ranks {ranks}")
    for path, header in parts[1:]:
        for name in _SHARED_FIELDS:
            if getattr(header, name) != getattr(first, name):
                raise DecodeError(f"{path}: {name} differs from {parts[0][0]}'s; these files are not from one run")
    total = sum(int(h.num_images) for _, h in parts)
    for _, header in parts:
        rank = rank_of(header)[0]
        share = len(range(rank, total, world))
        if int(header.num_images) != share:
            raise DecodeError(f"rank {rank} holds {header.num_images} images, but {total} images over {world} ranks "
                              f"give it {share}")


@dataclass
class DecodeInput:
    """The files of one `input=`, read and checked, in encoder-rank order."""
    path: str
    files: List[str]
    headers: List[object]
    messages: List[Optional[object]]  # None: another decode rank's file (see `open_input`)

    @property
    def header(self):
        return self.headers[0]

    @property
    def source(self) -> str:
        return self.files[0]

    @property
    def complete(self) -> bool:
        """Whether these are all ranks of the encode (a single rank file of several is not)."""
        return len(self.files) == rank_of(self.header)[1]

    def numbers(self, k: int) -> List[int]:
        """Dataset numbers of file k's images (encoder rank e of F holds e, e + F, …)."""
        rank, world = rank_of(self.headers[k])
        return [rank + i * world for i in range(int(self.headers[k].num_images))]


def worker_files(files: int, rank: int, world: int) -> List[int]:
    """The files decode rank `rank` of `world` takes: rank, rank + world, …"""
    return list(range(rank, files, world))


def open_input(path: str, workers: int = 1, rank: int = 0) -> DecodeInput:
    """Find, read and check the files of `input=`: every header field against bounds and the
    payload, the rank set, and (before anything is read) that `workers` ranks can share them.

    Every rank checks every file, so a damaged file is refused by all ranks before any decodes;
    but rank `rank` keeps only the messages of its own files (`worker_files`), the others' are
    None: W ranks hold one copy of the data between them, not W."""
    from .container import read_bbd

    files = find_inputs(path)
    check_workers(path, len(files), workers)
    mine = set(worker_files(len(files), rank, workers))
    headers, messages = [], []
    for k, f in enumerate(files):
        header, message = read_bbd(f)
        headers.append(header)
        messages.append(message if k in mine else None)
    check_rank_set(list(zip(files, headers)), path)
    return DecodeInput(path, files, headers, messages)


@dataclass
class Decoder:
    """A checked input with the codec and device that decode it."""
    input: DecodeInput
    codec: object
    device: object

    def decode_files(self, which: Sequence[int], log: Log = print) -> Dict[int, np.ndarray]:
        """File k's images (coding order) for each k in `which`, in the encoder's thread count."""
        missing = [self.input.files[k] for k in which if self.input.messages[k] is None]
        if missing:
            raise ValueError(f"{', '.join(missing)}: read by another decode rank (open_input's rank), not this one")
        with encoder_threads(self.input.header, self.device, log):
            return {k: decode_message(self.codec, self.input.headers[k], self.input.messages[k], self.input.files[k],
                                      log) for k in which}


def prepare_decoder(inp: DecodeInput, model_path: Optional[str] = None, device: str = "", log: Log = print,
                    allow_device_mismatch: bool = False) -> Decoder:
    """Device, threads, codec settings and checkpoint, each refused with its reason before the model
    is built; then the model and the codec."""
    from .latent_model import DiffusionLatentModel
    from .runtime import set_determinism

    header, source = inp.header, inp.source
    set_determinism()
    torch_device = choose_device(header, device, allow_device_mismatch, source, log)
    check_coder(header, torch_device, source)
    check_threads(header, torch_device, allow_device_mismatch, source)
    codec_cls, precisions = codec_settings(header, source)
    ckpt, state = find_checkpoint(header, model_path, inp.path, source)
    model, diffusion = load_coding_model(header, ckpt, state, torch_device, source)
    latent_model = DiffusionLatentModel(model, diffusion, torch_device, clip_denoised=header.clip_denoised,
                                        likelihood_std_min=header.likelihood_std_min)
    codec = build_codec(codec_cls, precisions, latent_model, source, file_coder(header))
    return Decoder(inp, codec, torch_device)


def interleave(parts: List[np.ndarray], world: int) -> np.ndarray:
    """Rank r's i-th image is dataset image r + i * world (encode.py's sharding)."""
    total = sum(len(p) for p in parts)
    out = np.zeros((total,) + parts[0].shape[1:], np.int64)
    for rank, images in enumerate(parts):
        if len(out[rank::world]) != len(images):
            raise DecodeError(f"rank {rank} holds {len(images)} images, but {total} images over {world} ranks "
                              f"give it {len(out[rank::world])}")
        out[rank::world] = images
    return out


def pictures_of(inp: DecodeInput, decoded: Dict[int, np.ndarray]) -> Tuple[List[np.ndarray], List[int]]:
    """(pictures as (C, H, W) levels, their dataset numbers) from every file's decoded images:
    interleaved into dataset order, tiles put back together."""
    from .data.tiles import TilingInfo, reassemble

    if len(inp.files) > 1:
        images = list(interleave([decoded[k] for k in range(len(inp.files))], len(inp.files)))
        numbers = list(range(len(images)))
    else:
        images, numbers = list(decoded[0]), inp.numbers(0)
    if inp.header.tiling is None:
        return images, numbers
    if not inp.complete:
        rank, world = rank_of(inp.header)
        raise DecodeError(f"{inp.source} is rank {rank} of {world}: the tiles of the pictures are spread over all "
                          "ranks; pass input=<the encode run dir> holding every compressed.rank<r>.bbd")
    pictures = reassemble(np.asarray(images), TilingInfo.from_dict(inp.header.tiling))
    return pictures, list(range(len(pictures)))


def decode_input(path: str, model_path: Optional[str] = None, device: str = "", log: Log = print,
                 allow_device_mismatch: bool = False) -> Tuple[object, List[np.ndarray], List[int]]:
    """Decode a .bbd file or an encode run dir in this process; returns (header, pictures as
    (C, H, W) int64 levels, their numbers in the encoded dataset). `device` "" means the encoder's."""
    inp = open_input(path)
    decoder = prepare_decoder(inp, model_path, device, log, allow_device_mismatch)
    pictures, numbers = pictures_of(inp, decoder.decode_files(range(len(inp.files)), log))
    return inp.header, pictures, numbers


def decode_file(path: str, model_path: Optional[str] = None, device: str = "",
                log: Log = print) -> Tuple[object, List[np.ndarray]]:
    """Decode every image of a .bbd file (or run dir); returns (header, list of (C, H, W) int64 levels)."""
    header, images, _ = decode_input(path, model_path, device, log)
    return header, images
