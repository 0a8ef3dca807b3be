"""Finding the checkpoint a .bbd file was coded with, by the SHA-256 its header records.

A file names its weights only by the SHA-256 of their state dict (and the encoder's file name as
a hint), never by a path, so a file moves between machines. The decoder looks in a fixed order
(`checkpoint_candidates`) and uses only a file whose SHA-256 matches: none of the places can
choose the weights, they only save the user from typing model_path=.
"""
from __future__ import annotations

import os
import pickle
from typing import Any, Dict, List, Optional, Tuple

from .decode_errors import DecodeError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def checkpoint_candidates(header, model_path: Optional[str], input_path: str) -> List[Tuple[str, str]]:
    """(path, where it came from) to look for the header's checkpoint in, first match wins:
    model_path= alone when given; else the encode run's evaluator.model_path, the encoder's file
    name beside the input, the data config's default checkpoint, and outputs/pretrained/<that
    name>. Paths in configs are relative to where encode.py ran: tried from here and from the
    repository."""
    if model_path:
        return [(model_path, "model_path=")]
    found: List[Tuple[str, str]] = []
    run_dir = input_path if os.path.isdir(input_path) else os.path.dirname(os.path.abspath(input_path))
    recorded = _config_value(os.path.join(run_dir, ".hydra", "config.yaml"), "evaluator.model_path")
    if recorded:
        found.append((recorded, f"evaluator.model_path of the encode run {run_dir}"))
    if header.checkpoint_name:
        found.append((os.path.join(run_dir, header.checkpoint_name), "beside the input"))
    default = _data_default_checkpoint(header.data_name)
    if default:
        found.append((default, f"the default checkpoint of data={header.data_name} (config/data/{header.data_name}.yaml)"))
    if header.checkpoint_name:
        found.append((os.path.join("outputs", "pretrained", header.checkpoint_name), "outputs/pretrained/"))
    out: List[Tuple[str, str]] = []
    for path, why in found:
        options = [os.path.join(base, os.path.expanduser(path)) for base in dict.fromkeys((os.getcwd(), REPO))]
        for full in [p for p in options if os.path.exists(p)] or options[:1]:
            if all(os.path.realpath(full) != os.path.realpath(p) for p, _ in out):
                out.append((full, why))
    return out


def _config_value(yaml_path: str, key: str) -> Optional[str]:
    """A string setting of a saved config, or None (missing file or key, unresolvable value)."""
    from omegaconf import OmegaConf

    if not os.path.isfile(yaml_path):
        return None
    try:
        value = OmegaConf.select(OmegaConf.load(yaml_path), key, throw_on_missing=False)
    except Exception:  # an unreadable or unresolvable config is only one place less to look
        return None
    return str(value) if isinstance(value, str) and value else None


def _data_default_checkpoint(data_name: str) -> Optional[str]:
    """evaluator.model_path of the evaluator group that config/data/<name>.yaml picks (else
    encode.yaml's default evaluator)."""
    from omegaconf import OmegaConf

    if not data_name:
        return None
    config = os.path.join(REPO, "config")
    evaluator = None
    for yaml_path, prefix in ((os.path.join(config, "data", f"{data_name}.yaml"), "override /evaluator"),
                              (os.path.join(config, "encode.yaml"), "evaluator")):
        try:
            defaults = OmegaConf.to_container(OmegaConf.load(yaml_path)).get("defaults", [])
        except Exception:  # missing or unreadable: look at the next one
            continue
        for entry in defaults:
            if isinstance(entry, dict) and prefix in entry:
                evaluator = str(entry[prefix])
                break
        if evaluator:
            break
    return _config_value(os.path.join(config, "evaluator", f"{evaluator}.yaml"), "model_path") if evaluator else None


def _checkpoint_files(path: str, wanted_name: str) -> List[str]:
    """The checkpoint file itself, or in a run dir the file with the encoder's name, else its newest EMA."""
    from .checkpoints import newest_ema_checkpoint

    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        return []
    named = os.path.join(path, wanted_name) if wanted_name else ""
    newest = newest_ema_checkpoint(path)
    return [p for p in dict.fromkeys((named, newest or "")) if p and os.path.isfile(p)]


def find_checkpoint(header, model_path: Optional[str], input_path: str, source: str) -> Tuple[str, Dict[str, Any]]:
    """(checkpoint file, its state dict) whose SHA-256 is the header's; DecodeError saying which
    SHA-256 and file name are needed and where they were looked for, when none is."""
    from improved_diffusion.checkpoint_io import CheckpointReadError

    from .checkpoints import state_dict_sha256
    from .container import check_model_sha256
    from .models import ModelLoadError, read_weights

    looked: List[str] = []
    mismatch = ""
    for where, why in checkpoint_candidates(header, model_path, input_path):
        files = _checkpoint_files(where, header.checkpoint_name)
        if not files:
            looked.append(f"{where} ({why}): no checkpoint there")
        for ckpt in files:
            try:
                state = read_weights(ckpt, f"{why}, for {source}", what="checkpoint")
            except (ModelLoadError, CheckpointReadError, OSError, EOFError, RuntimeError,
                    pickle.UnpicklingError) as exc:
                looked.append(f"{ckpt} ({why}): unreadable ({str(exc)[:200]})")
                continue
            sha = state_dict_sha256(state)
            if sha == header.model_sha256:
                return ckpt, state
            looked.append(f"{ckpt} ({why}): SHA-256 {sha}")
            mismatch = sha
    if model_path and mismatch:
        check_model_sha256(header, mismatch, source)  # the checkpoint given is for other weights
    name = f" (the encoder's file was named {header.checkpoint_name})" if header.checkpoint_name else ""
    where = "\n  ".join(looked) if looked else "nowhere: no model_path=, no encode run config, no data config default"
    raise DecodeError(f"{source} needs the checkpoint whose state dict has SHA-256 {header.model_sha256}{name}; "
                      f"looked at:\n  {where}\npass model_path=<that checkpoint file or its training run dir>")
