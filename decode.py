"""Restore the images of a compressed .bbd file as PNG files.

    python decode.py input=<file.bbd or encode run dir> output_dir=<dir> [model_path=<checkpoint or run dir>]
                     [device=cpu|cuda] [levels=raw|scaled] [overwrite=false]

The file's header names the codec, precisions, process and model flags, so the checkpoint is
the only other input (default: the one the encoder recorded). Batches are decoded last-first
(the message is a stack), tiles are put back together, and image i is written as <i:05d>.png
(mode L for one channel, RGB for three).

An encode run dir as input decodes its compressed.bbd, or all of its compressed.rank<r>.bbd
(written by `mpiexec -n W python encode.py`; rank r holds images r, r+W, …) into one numbering.
A single rank file decodes to its own images under their dataset numbers, unless the pictures
were tiled: their tiles are spread over all ranks, so pass the run dir then.

Levels: with num_levels = 256 the pixel values are the levels. With fewer levels, `raw`
(default) writes the level values 0..K-1 themselves, which is what `data=folder` reads back, so
re-encoding the output gives the same file; `scaled` writes round(k * 255 / (K - 1)) for viewing
(also exactly invertible, but not what the folder reader expects).
"""
from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np

USAGE = __doc__.split("\n\n")[1]
_KEYS = {"input": None, "output_dir": None, "model_path": None, "device": "cpu", "levels": "raw", "overwrite": "false"}


class DecodeError(ValueError):
    """A decode request that cannot be carried out; the message says how to fix it."""


def parse_args(argv: List[str]) -> Dict[str, str]:
    """key=value arguments (Hydra style) into a dict with defaults; unknown keys are refused."""
    args = dict(_KEYS)
    for token in argv:
        key, sep, value = token.partition("=")
        if not sep or key not in _KEYS:
            raise DecodeError(f"unexpected argument {token!r}; expected key=value with key in {', '.join(_KEYS)}")
        args[key] = value
    for key in ("input", "output_dir"):
        if not args[key]:
            raise DecodeError(f"missing {key}=...")
    if args["levels"] not in ("raw", "scaled"):
        raise DecodeError(f"levels must be raw or scaled, got {args['levels']!r}")
    if args["overwrite"].lower() not in ("true", "false"):
        raise DecodeError(f"overwrite must be true or false, got {args['overwrite']!r}")
    return args


def _load_model(header, model_path: Optional[str], device, source: str):
    """The encoder's UNet and process, from the header's flags (or a run dir's config)."""
    import torch

    from bits_back_diffusion.checkpoints import state_dict_sha256, strip_module_prefix
    from bits_back_diffusion.container import check_model_sha256
    from bits_back_diffusion.models import resolve_checkpoint, run_dir_config
    from improved_diffusion import dist_util
    from improved_diffusion.script_util import create_gaussian_diffusion, create_model
    from omegaconf import OmegaConf

    model_path = model_path or header.extra.get("checkpoint")
    if not model_path:
        raise DecodeError(f"{source} does not record its checkpoint; pass model_path=<checkpoint file or run dir>")
    ckpt, run_dir = resolve_checkpoint(model_path)
    model_flags, diffusion_flags = dict(header.model_flags), dict(header.diffusion_flags)
    if not model_flags or not diffusion_flags:
        saved = run_dir_config(run_dir) if run_dir else None
        if saved is None:
            raise DecodeError(
                f"{source} stores no model/diffusion flags and {model_path} is not a run dir with "
                ".hydra/config.yaml; pass model_path=<the training run dir>"
            )
        model_flags = model_flags or OmegaConf.to_container(saved.model, resolve=True)
        if not diffusion_flags:
            diffusion_flags = OmegaConf.to_container(saved.diffusion, resolve=True)
            diffusion_flags.update(timestep_respacing=header.respacing, num_levels=header.num_levels)
    try:
        state = strip_module_prefix(dist_util.load_state_dict(ckpt, map_location="cpu"))
    except Exception as exc:  # torch raises many types for a damaged file
        raise DecodeError(f"cannot read checkpoint {ckpt}: {exc}") from None
    check_model_sha256(header, state_dict_sha256(state), source)
    model = create_model(**model_flags)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    diffusion = create_gaussian_diffusion(**diffusion_flags)
    if diffusion.num_timesteps != header.num_steps:
        raise DecodeError(
            f"{source}: the process has {diffusion.num_timesteps} steps but the file was coded with {header.num_steps}"
        )
    return model, diffusion


def _build_codec(header, latent_model):
    from bits_back_diffusion.codec import Precisions, codec_class

    try:
        cls = codec_class(header.codec)
    except ValueError as exc:
        raise DecodeError(f"the file uses codec {header.codec!r}, unknown here ({exc})") from None
    return cls(latent_model, Precisions(**header.precisions))


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


def rank_of(header) -> Tuple[int, int]:
    """(rank, world size) of the encoder process that wrote this file; (0, 1) for single files."""
    return int(header.extra.get("rank", 0)), int(header.extra.get("world_size", 1))


def check_rank_set(parts: List[Tuple[str, object]], source: str) -> None:
    """Several files decode together only as all ranks of one encode run."""
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


def _expected_initial(header):
    """The message the encoder started from (codec.initial_message_for)."""
    from bits_back_diffusion.codec import initial_message_for

    init = header.initial_message
    return initial_message_for(tuple(header.head_shape), int(init["words_per_lane"]), int(init["seed"]))


def decode_message(codec, header, message, source: str, log=print) -> np.ndarray:
    """Pop every batch of one file's message (last first); returns (num_images, C, H, W) int64 levels
    in coding order, after checking that the message ended exactly where the encoder started."""
    import craystack as cs

    sizes = header.batch_sizes()
    batches = []
    start = time.time()
    for k, size in enumerate(reversed(sizes)):
        message, x = codec.decode(message, size)
        batches.append(x)
        log(f"{os.path.basename(source)}: decoded batch {len(sizes) - k}/{len(sizes)} ({size} images, "
            f"{time.time() - start:.1f}s)")
    if header.initial_message is not None and not cs.message_equal(message, _expected_initial(header)):
        raise DecodeError(
            f"{source}: decoding did not end at the encoder's initial message, so the images are not trustworthy; "
            "decode with the same software version and device type as the encoder"
        )
    return np.concatenate(batches[::-1]) if batches else np.zeros((0,) + header.data_shape, np.int64)


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


@contextmanager
def encoder_threads(header, device, log=print) -> Iterator[None]:
    """On CPU, torch's intra-op thread count changes how sums are split and so the last bits of the
    model's outputs; decoding needs them bit-identical, so use the encoder's count (then restore)."""
    import torch

    wanted = header.extra.get("torch_threads")
    before = torch.get_num_threads()
    if device.type != "cpu" or not wanted or int(wanted) == before:
        yield
        return
    log(f"using {wanted} torch threads, as the encoder did (bit-identical model outputs on CPU)")
    torch.set_num_threads(int(wanted))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def decode_input(path: str, model_path: Optional[str] = None, device: str = "cpu",
                 log=print) -> Tuple[object, List[np.ndarray], List[int]]:
    """Decode a .bbd file or an encode run dir; returns (header, pictures as (C, H, W) int64 levels,
    their numbers in the encoded dataset)."""
    import torch

    from bits_back_diffusion.container import read_bbd
    from bits_back_diffusion.data.tiles import TilingInfo, reassemble
    from bits_back_diffusion.latent_model import DiffusionLatentModel
    from bits_back_diffusion.runtime import set_determinism

    files = find_inputs(path)
    read = [(f, read_bbd(f)) for f in files]
    check_rank_set([(f, h) for f, (h, _) in read], path)
    header = read[0][1][0]
    set_determinism()
    torch_device = torch.device(device)
    model, diffusion = _load_model(header, model_path, torch_device, files[0])
    latent_model = DiffusionLatentModel(model, diffusion, torch_device, clip_denoised=header.clip_denoised,
                                        likelihood_std_min=header.likelihood_std_min)
    codec = _build_codec(header, latent_model)
    with encoder_threads(header, torch_device, log):
        decoded = {rank_of(h)[0]: decode_message(codec, h, m, f, log) for f, (h, m) in read}
    rank, world = rank_of(header)
    if len(read) > 1:
        images, numbers = interleave([decoded[r] for r in range(world)], world), None
    else:
        images = decoded[rank]
        numbers = [rank + i * world for i in range(len(images))]
    if header.tiling is None:
        return header, list(images), numbers if numbers is not None else list(range(len(images)))
    if len(read) == 1 and world > 1:
        raise DecodeError(f"{files[0]} is rank {rank} of {world}: the tiles of the pictures are spread over all "
                          "ranks; pass input=<the encode run dir> holding every compressed.rank<r>.bbd")
    pictures = reassemble(images, TilingInfo.from_dict(header.tiling))
    return header, pictures, list(range(len(pictures)))


def decode_file(path: str, model_path: Optional[str] = None, device: str = "cpu",
                log=print) -> Tuple[object, List[np.ndarray]]:
    """Decode every image of a .bbd file (or run dir); returns (header, list of (C, H, W) int64 levels)."""
    header, images, _ = decode_input(path, model_path, device, log)
    return header, images


def to_pixels(levels: np.ndarray, num_levels: int, mode: str) -> np.ndarray:
    """(C, H, W) levels to (H, W) or (H, W, 3) uint8 pixels (see the module doc for `mode`)."""
    levels = np.asarray(levels, dtype=np.int64)
    if mode == "scaled" and num_levels < 256:
        levels = (levels * 255 + (num_levels - 1) // 2) // (num_levels - 1)
    pixels = levels.astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


def write_pngs(images: List[np.ndarray], output_dir: str, num_levels: int, mode: str, overwrite: bool,
               numbers: Optional[List[int]] = None) -> List[str]:
    """Image k as <numbers[k]:05d>.png (default numbers: 0, 1, …)."""
    from PIL import Image

    os.makedirs(output_dir, exist_ok=True)
    numbers = list(range(len(images))) if numbers is None else numbers
    paths = [os.path.join(output_dir, f"{i:05d}.png") for i in numbers]
    if not overwrite:
        existing = [p for p in paths if os.path.exists(p)]
        if existing:
            raise DecodeError(f"{existing[0]} exists ({len(existing)} files would be replaced); "
                              "choose an empty output_dir or pass overwrite=true")
    for path, image in zip(paths, images):
        Image.fromarray(to_pixels(image, num_levels, mode)).save(path)
    return paths


def main(argv: List[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        args = parse_args(argv)
        header, images, numbers = decode_input(args["input"], args["model_path"], args["device"])
        paths = write_pngs(images, args["output_dir"], header.num_levels, args["levels"],
                           args["overwrite"].lower() == "true", numbers)
    except ValueError as exc:  # DecodeError, BBDFormatError, ModelLoadError, DataError
        print(f"decode.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} images to {args['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
