"""The codecs `codec=<name>` accepts, by name: the one place that imports every codec module."""
from __future__ import annotations

from typing import Dict, List, Optional

from .bitswap import BitSwapCodec
from .codec import BitsBackCodec
from .coding import Precisions
from .latent_model import DiffusionLatentModel

CODECS: Dict[str, type] = {"bbans": BitsBackCodec, "bitswap": BitSwapCodec}


def codec_names() -> List[str]:
    """Every codec name `codec=<name>` accepts."""
    return sorted(CODECS)


def codec_class(name: str) -> type:
    """The codec class registered as `name`; raises ValueError listing the choices otherwise."""
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(codec_names())} (codec=<name>)")
    return CODECS[name]


def build_codec(name: str, latent_model: DiffusionLatentModel, precisions: Precisions, track: bool = False,
                backend: str = "numba", coder: Optional[str] = None):
    """The codec `name`; `backend` (codec.backend) picks the compiled path ("numba") or the NumPy
    reference ("numpy"): the same messages either way. `coder` (coders.CODERS; None: the default
    for the model's device) picks the compiled path's kernels."""
    return codec_class(name)(latent_model, precisions, track=track, backend=backend, coder=coder)
