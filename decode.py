"""Restore the images of a compressed .bbd file as PNG files.

    python decode.py input=<file.bbd> output_dir=<dir> [model_path=<checkpoint or run dir>]
                     [device=cpu|cuda] [levels=raw|scaled] [overwrite=false]

The file's header names the codec, precisions, process and model flags, so the checkpoint is
the only other input (default: the one the encoder recorded). Batches are decoded last-first
(the message is a stack), tiles are put back together, and image i is written as <i:05d>.png
(mode L for one channel, RGB for three).

Levels: with num_levels = 256 the pixel values are the levels. With fewer levels, `raw`
(default) writes the level values 0..K-1 themselves, which is what `data=folder` reads back, so
re-encoding the output gives the same file; `scaled` writes round(k * 255 / (K - 1)) for viewing
(also exactly invertible, but not what the folder reader expects).
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict, List, Optional, Tuple

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
    from bits_back_diffusion.bitswap import BitSwapCodec
    from bits_back_diffusion.codec import CODECS, Precisions

    registry = dict(CODECS)
    registry.setdefault(BitSwapCodec.name, BitSwapCodec)
    if header.codec not in registry:
        raise DecodeError(f"the file uses codec {header.codec!r}, unknown here (known: {', '.join(sorted(registry))})")
    return registry[header.codec](latent_model, Precisions(**header.precisions))


def decode_file(path: str, model_path: Optional[str] = None, device: str = "cpu",
                log=print) -> Tuple[object, List[np.ndarray]]:
    """Decode every image of a .bbd file; returns (header, list of (C, H, W) int64 level arrays)."""
    import torch

    import craystack as cs
    from bits_back_diffusion.container import read_bbd
    from bits_back_diffusion.data.tiles import TilingInfo, reassemble
    from bits_back_diffusion.latent_model import DiffusionLatentModel
    from bits_back_diffusion.runtime import set_determinism

    header, message = read_bbd(path)
    set_determinism()
    torch_device = torch.device(device)
    model, diffusion = _load_model(header, model_path, torch_device, path)
    latent_model = DiffusionLatentModel(model, diffusion, torch_device, clip_denoised=header.clip_denoised,
                                        likelihood_std_min=header.likelihood_std_min)
    codec = _build_codec(header, latent_model)
    sizes = header.batch_sizes()
    batches = []
    start = time.time()
    for k, size in enumerate(reversed(sizes)):
        message, x = codec.decode(message, size)
        batches.append(x)
        log(f"decoded batch {len(sizes) - k}/{len(sizes)} ({size} images, {time.time() - start:.1f}s)")
    images = np.concatenate(batches[::-1]) if batches else np.zeros((0,) + header.data_shape, np.int64)
    init = header.initial_message
    if init is not None:
        lanes = int(np.prod(header.head_shape))  # as codec.initial_message builds it: random head, then tail
        flat = len(cs.flatten(cs.base_message(header.head_shape))) + init["words_per_lane"] * lanes
        expected = cs.random_message(flat, header.head_shape, seed=init["seed"])
        if not cs.message_equal(message, expected):
            raise DecodeError(
                f"{path}: decoding did not end at the encoder's initial message, so the images are not trustworthy; "
                "decode with the same software version and device type as the encoder"
            )
    if header.tiling is not None:
        return header, reassemble(images, TilingInfo.from_dict(header.tiling))
    return header, list(images)


def to_pixels(levels: np.ndarray, num_levels: int, mode: str) -> np.ndarray:
    """(C, H, W) levels to (H, W) or (H, W, 3) uint8 pixels (see the module doc for `mode`)."""
    levels = np.asarray(levels, dtype=np.int64)
    if mode == "scaled" and num_levels < 256:
        levels = (levels * 255 + (num_levels - 1) // 2) // (num_levels - 1)
    pixels = levels.astype(np.uint8)
    return pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)


def write_pngs(images: List[np.ndarray], output_dir: str, num_levels: int, mode: str, overwrite: bool) -> List[str]:
    from PIL import Image

    os.makedirs(output_dir, exist_ok=True)
    paths = [os.path.join(output_dir, f"{i:05d}.png") for i in range(len(images))]
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
        header, images = decode_file(args["input"], args["model_path"], args["device"])
        paths = write_pngs(images, args["output_dir"], header.num_levels, args["levels"],
                           args["overwrite"].lower() == "true")
    except ValueError as exc:  # DecodeError, BBDFormatError, ModelLoadError, DataError
        print(f"decode.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} images to {args['output_dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
