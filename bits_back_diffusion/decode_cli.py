"""decode.py's command line: config/decode.yaml's keys checked into a DecodeRequest, the output
location checked before anything is loaded, then this rank's share decoded (`parallel_decode`).

    python decode.py input=<file.bbd or encode run dir> output_dir=<dir> [model_path=<checkpoint or run dir>]
                     [device=cpu|cuda] [allow_device_mismatch=false] [levels=raw|scaled] [overwrite=false]
    mpiexec -n W python decode.py input=<encode run dir> output_dir=<dir>   # W divides the rank files

Errors a user can fix (DecodeError, BBDFormatError, ModelLoadError, DataError: all ValueErrors)
end the command with status 2 and one line "decode.py: error: <reason and fix>".
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any, List, Mapping

from .decode_errors import DecodeError
from .decoded_pngs import LEVEL_MODES
from .parallel_decode import DecodeRequest, clear_exchange, decode_to_dir

USAGE = __doc__.split("\n\n")[1]
KEYS = ("input", "output_dir", "model_path", "device", "levels", "overwrite", "allow_device_mismatch")
_BOOL_KEYS = ("overwrite", "allow_device_mismatch")


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise DecodeError(f"{key} must be true or false, got {value!r}")


def request_from_config(cfg: Mapping[str, Any]) -> DecodeRequest:
    """The checked request; unknown keys (e.g. +foo=1) and bad values are refused by name."""
    unknown = [k for k in cfg if k not in KEYS]
    if unknown:
        raise DecodeError(f"unexpected setting {unknown[0]}=...; decode.py takes {', '.join(KEYS)}")
    for key in ("input", "output_dir"):
        if cfg.get(key) in (None, ""):
            raise DecodeError(f"missing {key}=...")
    levels = str(cfg.get("levels") or "raw")
    if levels not in LEVEL_MODES:
        raise DecodeError(f"levels must be raw or scaled, got {levels!r}")
    device = "" if cfg.get("device") is None else str(cfg.get("device"))
    if not re.fullmatch(r"(cpu|cuda(:\d+)?)?", device):
        raise DecodeError(f"device must be cpu, cuda or cuda:<index>, got {device!r}")
    model_path = cfg.get("model_path")
    return DecodeRequest(str(cfg["input"]), str(cfg["output_dir"]), str(model_path) if model_path else None, device,
                         levels, *(_flag(k, cfg.get(k, False)) for k in _BOOL_KEYS))


def _ranks():
    """(rank, world size): under mpiexec, SLURM or submitit the process group is set up (it is
    used once, right here, while all ranks start together; never again while they decode)."""
    from improved_diffusion import dist_util

    if not dist_util.under_launcher():
        return 0, 1
    dist_util.setup_dist("gloo")  # one barrier over TCP is all decode needs (NCCL refuses two ranks on one GPU)
    return dist_util.get_rank(), dist_util.get_world_size()


def run(request: DecodeRequest) -> List[str]:
    """Decode the request on this process's rank; the PNG paths it wrote."""
    from .data.outputs import check_output_dir

    check_output_dir(request.output_dir, request.overwrite)  # before the model and the long decode
    rank, world = _ranks()
    if world > 1:
        from improved_diffusion import dist_util

        if rank == 0:
            clear_exchange(request.output_dir)
        dist_util.barrier()  # every rank is starting: nothing of an earlier decode is left to mistake
    log = print if rank == 0 else (lambda line: print(f"[rank {rank}] {line}"))
    paths = decode_to_dir(request, rank, world, log)
    where = "" if world == 1 else f" (decode rank {rank} of {world})"
    print(f"wrote {len(paths)} images to {request.output_dir}{where}")
    return paths


def run_config(cfg: Mapping[str, Any]) -> int:
    """decode.py's body: 0 when decoded, 2 (with the reason on stderr) when refused."""
    try:
        run(request_from_config(cfg))
    except ValueError as exc:  # DecodeError, BBDFormatError, ModelLoadError, DataError
        print(f"decode.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: List[str]) -> int:
    """decode.py's command line in this process (tests, notebooks): config/decode.yaml with the
    key=value overrides of `argv`, as Hydra composes it for the script."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    from .checkpoint_lookup import REPO

    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    try:
        with initialize_config_dir(config_dir=os.path.join(REPO, "config"), version_base="1.3"):
            cfg = compose(config_name="decode", overrides=list(argv))
    except HydraException as exc:
        print(f"decode.py: error: {exc}", file=sys.stderr)
        return 2
    return run_config(OmegaConf.to_container(cfg))
