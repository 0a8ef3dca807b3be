"""Builders that turn flat flag dictionaries into a UNet and a diffusion process.

The argument names are those of improved-diffusion's scripts, so a checkpoint's published flags
(or a run dir's saved config) rebuild exactly the network that produced it.
"""
from __future__ import annotations

import argparse
import numbers
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import gaussian_diffusion as gd
from .respace import SpacedDiffusion, space_timesteps
from .unet import UNetModel

NUM_CLASSES = 1000

# Channel multipliers the public checkpoints were trained with, by image size.
DEFAULT_CHANNEL_MULT = {256: (1, 1, 2, 2, 4, 4), 64: (1, 2, 3, 4), 32: (1, 2, 2, 2)}


def model_and_diffusion_defaults() -> Dict[str, Any]:
    """Defaults of improved-diffusion's scripts (plus this project's optional extras)."""
    return dict(
        image_size=64,
        num_channels=128,
        num_res_blocks=2,
        num_heads=4,
        num_heads_upsample=-1,
        attention_resolutions="16,8",
        dropout=0.0,
        learn_sigma=False,
        sigma_small=False,
        class_cond=False,
        diffusion_steps=1000,
        noise_schedule="linear",
        timestep_respacing="",
        use_kl=False,
        predict_xstart=False,
        rescale_timesteps=True,
        rescale_learned_sigmas=True,
        use_checkpoint=False,
        use_scale_shift_norm=True,
    )


def parse_channel_mult(channel_mult: Union[None, str, Sequence[int]], image_size: int) -> Tuple[int, ...]:
    """Channel multipliers per resolution level; None picks the public default for the image size."""
    if channel_mult is None or channel_mult == "":
        if image_size not in DEFAULT_CHANNEL_MULT:
            raise ValueError(
                f"no default channel_mult for image_size {image_size} (known: "
                f"{sorted(DEFAULT_CHANNEL_MULT)}); pass channel_mult explicitly, e.g. '1,2' for 8x8 images"
            )
        return DEFAULT_CHANNEL_MULT[image_size]
    if isinstance(channel_mult, str):
        try:
            mult = tuple(int(v) for v in channel_mult.split(","))
        except ValueError:
            raise ValueError(f"channel_mult must look like '1,2,2', got {channel_mult!r}") from None
    else:
        mult = tuple(int(v) for v in channel_mult)
    if not mult or min(mult) < 1:
        raise ValueError(f"channel_mult needs positive integers, got {channel_mult!r}")
    if image_size % (2 ** (len(mult) - 1)):
        raise ValueError(
            f"image_size {image_size} cannot be halved {len(mult) - 1} times for channel_mult {mult}"
        )
    return mult


def parse_attention_resolutions(value: Union[None, int, str, Sequence[int]]) -> List[int]:
    """Pixel sizes with attention, as users type them: 16, "16,8", [16, 8], or ""/None for none."""
    bad = ValueError(f"attention_resolutions must be pixel sizes such as 16 or \"16,8\", got {value!r}")
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str, Iterable)):
        raise bad
    items = [value] if isinstance(value, numbers.Integral) else value.split(",") if isinstance(value, str) else value
    try:
        return [int(str(r).strip()) for r in items if str(r).strip()]
    except ValueError:
        raise bad from None


def create_model(
    image_size: int,
    num_channels: int,
    num_res_blocks: int,
    learn_sigma: bool,
    class_cond: bool,
    use_checkpoint: bool,
    attention_resolutions: Union[None, int, str, Sequence[int]],
    num_heads: int,
    num_heads_upsample: int,
    use_scale_shift_norm: bool,
    dropout: float,
    channel_mult: Union[None, str, Sequence[int]] = None,
    in_channels: int = 3,
) -> UNetModel:
    """The improved-diffusion UNet; `attention_resolutions` are pixel sizes ("16,8")."""
    mult = parse_channel_mult(channel_mult, image_size)
    resolutions = parse_attention_resolutions(attention_resolutions)
    for res in resolutions:
        if res <= 0 or image_size % res:
            raise ValueError(f"attention resolution {res} does not divide image_size {image_size}")
    return UNetModel(
        in_channels=in_channels,
        model_channels=num_channels,
        out_channels=in_channels * (2 if learn_sigma else 1),
        num_res_blocks=num_res_blocks,
        attention_resolutions=tuple(image_size // r for r in resolutions),
        dropout=dropout,
        channel_mult=mult,
        num_classes=NUM_CLASSES if class_cond else None,
        use_checkpoint=use_checkpoint,
        num_heads=num_heads,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
    )


def create_gaussian_diffusion(
    *,
    steps: int = 1000,
    learn_sigma: bool = False,
    sigma_small: bool = False,
    noise_schedule: str = "linear",
    use_kl: bool = False,
    predict_xstart: bool = False,
    rescale_timesteps: bool = False,
    rescale_learned_sigmas: bool = False,
    timestep_respacing: Union[str, Sequence[int], None] = "",
    num_levels: int = 256,
) -> SpacedDiffusion:
    """The diffusion process of improved-diffusion's flags, respaced by `timestep_respacing`."""
    betas = gd.get_named_beta_schedule(noise_schedule, steps)
    if use_kl:
        loss_type = gd.LossType.RESCALED_KL
    elif rescale_learned_sigmas:
        loss_type = gd.LossType.RESCALED_MSE
    else:
        loss_type = gd.LossType.MSE
    if learn_sigma:
        var_type = gd.ModelVarType.LEARNED_RANGE
    else:
        var_type = gd.ModelVarType.FIXED_SMALL if sigma_small else gd.ModelVarType.FIXED_LARGE
    return SpacedDiffusion(
        use_timesteps=space_timesteps(steps, timestep_respacing or [steps]),
        betas=betas,
        model_mean_type=gd.ModelMeanType.START_X if predict_xstart else gd.ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
        num_levels=num_levels,
    )


def create_model_and_diffusion(
    image_size, class_cond, learn_sigma, sigma_small, num_channels, num_res_blocks, num_heads,
    num_heads_upsample, attention_resolutions, dropout, diffusion_steps, noise_schedule,
    timestep_respacing, use_kl, predict_xstart, rescale_timesteps, rescale_learned_sigmas,
    use_checkpoint, use_scale_shift_norm, channel_mult=None, in_channels=3, num_levels=256,
):
    """Both objects from one flat flag set, as improved-diffusion's scripts build them."""
    model = create_model(
        image_size, num_channels, num_res_blocks, learn_sigma=learn_sigma, class_cond=class_cond,
        use_checkpoint=use_checkpoint, attention_resolutions=attention_resolutions, num_heads=num_heads,
        num_heads_upsample=num_heads_upsample, use_scale_shift_norm=use_scale_shift_norm, dropout=dropout,
        channel_mult=channel_mult, in_channels=in_channels,
    )
    diffusion = create_gaussian_diffusion(
        steps=diffusion_steps, learn_sigma=learn_sigma, sigma_small=sigma_small, noise_schedule=noise_schedule,
        use_kl=use_kl, predict_xstart=predict_xstart, rescale_timesteps=rescale_timesteps,
        rescale_learned_sigmas=rescale_learned_sigmas, timestep_respacing=timestep_respacing,
        num_levels=num_levels,
    )
    return model, diffusion


def add_dict_to_argparser(parser: argparse.ArgumentParser, default_dict: Dict[str, Any]) -> None:
    for key, value in default_dict.items():
        kind = type(value)
        if value is None:
            kind = str
        elif isinstance(value, bool):
            kind = str2bool
        parser.add_argument(f"--{key}", default=value, type=kind)


def args_to_dict(args: argparse.Namespace, keys) -> Dict[str, Any]:
    return {k: getattr(args, k) for k in keys}


def str2bool(value: Union[str, bool]) -> bool:
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")

