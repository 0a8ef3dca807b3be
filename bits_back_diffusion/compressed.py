"""The result of `encode.py` as standalone `.bbd` files that `decode.py` turns back into pictures.

One file per message: `compressed.bbd` for a single process, `compressed.rank<r>.bbd` under
`mpiexec -n W` (rank r codes images r, r+W, …, exactly as its checkpoints
`encode-ckpt<N>.rank<r>.npz` hold them). Each header records the rank and world size, so
`decode.py input=<run dir>` can interleave the ranks' images back into dataset order, and the
tiling of pictures larger than the model (the same in every rank's header) can be undone only
once all tiles are back.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import craystack as cs

from .batch_schedule import run_lengths
from .bbd_header import name_hints
from .coding import Precisions
from .container import BBDHeader, DeviceInfo, DiffusionFlags, ModelFlags, write_bbd
from .data import ImageSet
from .data.tiles import TiledImageSet, TilingInfo
from .encoder import EncodePlan
from .models import LoadedModel

__all__ = ["compressed_name", "encode_header", "tiling_of", "write_compressed"]


def compressed_name(rank: int, world_size: int) -> str:
    """File name of one rank's message, named like the rank's codec checkpoints."""
    return f"compressed.rank{rank}.bbd" if world_size > 1 else "compressed.bbd"


def tiling_of(dataset: ImageSet, num_samples: int) -> Optional[TilingInfo]:
    """The tiling of the pictures being coded (None when the images already have the model's size).

    Raises DataError when `num_samples` ends inside a picture: its other tiles would be lost."""
    if isinstance(dataset, TiledImageSet):
        return dataset.tiling_info(num_samples)
    return None


def encode_header(loaded: LoadedModel, codec_name: str, precisions: Precisions, plan: EncodePlan,
                  batch_sizes: Sequence[int], num_levels: int, initial_message: Dict[str, int],
                  tiling: Optional[TilingInfo], clip_denoised: bool, likelihood_std_min: float, data_name: str,
                  device: DeviceInfo) -> BBDHeader:
    """Everything decode.py needs besides the weights: codec, process, shapes, batch layout (the
    `batch_sizes` the coder used; the plan has them up front only for a fixed schedule), where
    the message started, the device, and the model's SHA-256 (decoding with other weights must be
    refused) with the checkpoint's base name as a hint: no path of this machine goes into the file."""
    respacing = str(loaded.diffusion_cfg.get("timestep_respacing") or "")
    checkpoint_name, data_hint = name_hints(loaded.checkpoint, data_name)
    diffusion_flags = DiffusionFlags.from_config({**loaded.diffusion_cfg, "timestep_respacing": respacing})
    return BBDHeader(
        codec=codec_name, precisions=dict(vars(precisions)), respacing=respacing,
        steps=int(loaded.diffusion_cfg["steps"]), num_steps=int(loaded.diffusion.num_timesteps),
        data_shape=plan.image_shape, num_levels=int(num_levels), batch_size=plan.batch_size,
        num_images=plan.samples, head_shape=plan.head_shape, model_sha256=loaded.sha256,
        model_flags=ModelFlags.from_config(loaded.model_cfg), diffusion_flags=diffusion_flags,
        clip_denoised=bool(clip_denoised), likelihood_std_min=float(likelihood_std_min),
        tiling=tiling.to_dict() if tiling is not None else None, initial_message=dict(initial_message),
        batches=run_lengths(batch_sizes), checkpoint_name=checkpoint_name, data_name=data_hint,
        rank=plan.rank, world_size=plan.world_size, device=device,
    )


def write_compressed(run_dir: str, header: BBDHeader, message: cs.Message) -> Tuple[str, int]:
    """Write this rank's final message; returns (path, size in bytes)."""
    path = os.path.join(run_dir, compressed_name(header.rank, header.world_size))
    return path, write_bbd(path, header, message)
