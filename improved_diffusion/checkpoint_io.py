"""Reading checkpoint files without ever running code stored in them.

A ``.pt`` file is a pickle, and an ordinary unpickler calls whatever functions the file names.
Checkpoint paths come from configs, run dirs and even ``.bbd`` headers, so every checkpoint is
read with torch's restricted ("weights only") unpickler, which accepts tensors and plain
containers only. The argument is passed explicitly, so neither an old torch default nor
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` can turn it off. Anything saved next to the weights
(optimizer, sampler, RNG and data-position state) is therefore kept as tensors and plain types.
"""

from __future__ import annotations

import pickle
from typing import Any, BinaryIO, Union


class CheckpointReadError(ValueError):
    """A checkpoint file exists but cannot be used: damaged (`unsafe` False) or refused (`unsafe` True)."""

    def __init__(self, path: str, message: str, unsafe: bool):
        super().__init__(message)
        self.path = path
        self.unsafe = unsafe


def _is_refused_pickle(exc: BaseException) -> bool:
    """torch's weights-only unpickler rejected a global or an opcode (the file holds arbitrary objects)."""
    return isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower()


def _refusal_reason(message: str) -> str:
    """The line of torch's refusal that names what was refused, without its advice to allow it."""
    for line in message.splitlines():
        if "WeightsUnpickler error" in line:
            return line.split(". Please use")[0].strip()[:300]
    return "not a weights-only file"


def load_weights_only(source: Union[str, BinaryIO], path: str, map_location: Any = "cpu") -> Any:
    """torch.load(`source`, weights_only=True); failures become a CheckpointReadError naming `path`."""
    import torch

    try:
        return torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises many types for damaged files
        if _is_refused_pickle(exc):
            first_line = _refusal_reason(str(exc))
            raise CheckpointReadError(
                path,
                f"checkpoint {path} holds pickled objects other than tensors and plain containers; refusing to "
                f"load it, because unpickling them could run code ({first_line}). Use a checkpoint saved as a "
                "plain state dict (e.g. torch.save(model.state_dict(), path)) from a source you trust.",
                unsafe=True,
            ) from None
        raise CheckpointReadError(
            path,
            f"checkpoint {path} is unreadable (truncated?): {type(exc).__name__}: {str(exc)[:300]}. "
            "Copy or download it again.",
            unsafe=False,
        ) from None
