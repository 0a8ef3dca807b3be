"""Resumable state of a long encode/decode: the message and running statistics, one `.npz` per save.

Files are written atomically (temporary file + rename), so a run killed at any moment leaves
either the previous or the new checkpoint, never half of one. Loading checks the metadata against
the current run and refuses, with the reason, to continue from anything that would not decode.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np

import craystack as cs
from improved_diffusion.atomic_io import atomic_write

PHASES = ("encode", "decode")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used to resume (corrupt, or written by a different setup)."""


# Settings of the machine that change the model's last bits, and how to choose them on resume.
RUNTIME_KEYS = {"device": "device=cpu|cuda on the same kind of GPU",
                "torch_threads": "OMP_NUM_THREADS / torch.set_num_threads, and check_alongside as before "
                                 "(encode.py halves the count to check alongside)",
                "coder": "codec.coder=host|cuda; cuda needs numba-cuda",
                "cpu": "a machine of the same CPU family: vendor, torch's and NumPy's SIMD level"}
OLDER_DEFAULTS = {"coder": "host"}  # what checkpoints of earlier versions, which lack the key, meant
UNRECORDED_ACCEPTED = ("cpu",)  # keys earlier versions did not record and whose absence is not checked


def device_meta(device: Any, coder: str = "host") -> Dict[str, Any]:
    """The resume check's view of the device: its kind and GPU name, torch's CPU thread count, the
    codec's coder (coders.CODERS) and, where the CPU's kernels shape the message (a CPU model or
    the host coder), the CPU's kernel family (`cpu_kind`)."""
    import torch

    from .cpu_kind import cpu_kind

    kind = str(getattr(device, "type", device))
    name = torch.cuda.get_device_name(device) if kind == "cuda" and torch.cuda.is_available() else ""
    cpu = cpu_kind() if kind == "cpu" or coder == "host" else ""
    return {"device": f"{kind} {name}".strip(), "torch_threads": int(torch.get_num_threads()), "coder": coder,
            "cpu": cpu}


def checkpoint_name(phase: str, samples: int, rank: int, world_size: int) -> str:
    suffix = f".rank{rank}" if world_size > 1 else ""
    return f"{phase}-ckpt{samples}{suffix}.npz"


def list_checkpoints(run_dir: str, phase: str, rank: int, world_size: int) -> List[tuple[int, str]]:
    """(samples, path) of this rank's checkpoints of a phase, oldest first."""
    suffix = re.escape(f".rank{rank}") if world_size > 1 else ""
    pattern = re.compile(rf"^{phase}-ckpt(\d+){suffix}\.npz$")
    found = []
    if os.path.isdir(run_dir):
        for name in os.listdir(run_dir):
            match = pattern.match(name)
            if match:
                found.append((int(match.group(1)), os.path.join(run_dir, name)))
    return sorted(found)


@dataclass
class CodecState:
    """Everything needed to continue: the message, progress and statistics so far."""

    phase: str
    batches_done: int
    samples_done: int
    message: cs.Message
    meta: Dict[str, Any]
    stats: Dict[str, Any] = field(default_factory=dict)
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)

    def save(self, path: str) -> None:
        atomic_write(path, lambda f: np.savez(
            f,
            message=cs.flatten(self.message),
            head_shape=np.asarray(self.message.head.shape, dtype=np.int64),
            info=np.frombuffer(json.dumps({
                "phase": self.phase, "batches_done": self.batches_done, "samples_done": self.samples_done,
                "meta": self.meta, "stats": self.stats,
            }).encode(), dtype=np.uint8),
            **{f"array_{k}": v for k, v in self.arrays.items()},
        ))

    @classmethod
    def load(cls, path: str) -> "CodecState":
        try:
            with np.load(path, allow_pickle=False) as data:
                info = json.loads(bytes(data["info"]).decode())
                message = cs.unflatten(data["message"], tuple(int(v) for v in data["head_shape"]))
                arrays = {k[len("array_"):]: data[k] for k in data.files if k.startswith("array_")}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"checkpoint {path} is corrupt or truncated ({type(exc).__name__}: {exc}); delete it to resume "
                "from the previous checkpoint, or start a fresh run dir"
            ) from None
        if info.get("phase") not in PHASES:
            raise CheckpointError(f"checkpoint {path} has unknown phase {info.get('phase')!r}")
        return cls(info["phase"], int(info["batches_done"]), int(info["samples_done"]), message,
                   info["meta"], info.get("stats", {}), arrays)

    def check_meta(self, expected: Dict[str, Any], path: str) -> None:
        """Refuse to continue a run whose settings differ (the bits would not decode)."""
        for key, value in expected.items():
            if key not in self.meta and key in UNRECORDED_ACCEPTED:
                continue
            saved = self.meta.get(key, OLDER_DEFAULTS.get(key))
            if saved != value:
                if key not in self.meta and key not in OLDER_DEFAULTS:
                    raise CheckpointError(
                        f"checkpoint {path} does not record {key} (written by an older version), so resuming with "
                        f"{key}={value!r} might not decode; use a fresh run dir"
                    )
                if key in RUNTIME_KEYS:
                    raise CheckpointError(
                        f"checkpoint {path} was encoded with {key}={saved!r} but this run has {key}={value!r}; model "
                        f"outputs, and so the message, depend on it: resume with {key}={saved!r} "
                        f"({RUNTIME_KEYS[key]}), or use a fresh run dir"
                    )
                if key == "model_sha256":
                    raise CheckpointError(
                        f"checkpoint {path} was written with a different model (weights sha256 {str(saved)[:16]}…, "
                        f"now {str(value)[:16]}…); resume with the original evaluator.model_path, or use a fresh run dir"
                    )
                raise CheckpointError(
                    f"checkpoint {path} was written with {key}={saved!r} but this run has {key}={value!r}; "
                    "rerun with the original settings, or use a fresh run dir"
                )


def newest_state(run_dir: str, phase: str, rank: int, world_size: int) -> Optional[tuple[str, CodecState]]:
    found = list_checkpoints(run_dir, phase, rank, world_size)
    if not found:
        return None
    path = found[-1][1]
    return path, CodecState.load(path)
