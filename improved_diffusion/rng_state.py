"""The random number generators a training step draws from, captured as checkpointable values.

A resumed run reproduces an uninterrupted one bit for bit only if every generator continues
where it stopped: torch's CPU generator (noise, dropout), this device's CUDA generator, NumPy's
global generator (timestep sampling) and Python's `random`. The states are stored as tensors,
numbers and strings only, so they load with torch's weights-only unpickler.
"""

from __future__ import annotations

import random
from typing import Any, Optional

import numpy as np
import torch


def capture_rng_state(device: Optional[torch.device] = None) -> dict[str, Any]:
    """Every generator's state now; `device` adds its CUDA generator when it is a GPU."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, words, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "words": torch.tensor(words, dtype=torch.int64), "gauss_next": gauss_next},
        "cuda": None,
    }
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng_state(state: dict[str, Any], device: Optional[torch.device] = None) -> None:
    """Put every generator back to what `capture_rng_state` recorded."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), int(npy["pos"]), int(npy["has_gauss"]), float(npy["cached_gaussian"]))
    )
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(w) for w in py["words"].tolist()), py["gauss_next"]))
    if state.get("cuda") is not None and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"].to(torch.uint8).cpu(), device)
