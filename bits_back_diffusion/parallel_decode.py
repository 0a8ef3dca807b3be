"""Decoding on W ranks (`mpiexec -n W python decode.py ...`, or a SLURM job of W tasks).

A W-rank encode leaves F files, compressed.rank<e>.bbd, file e holding dataset images e, e+F, ….
Decode rank r of W takes files r, r+W, … (W must divide F, refused before anything is read), so F
ranks restore F files in the time one encode rank took. Untiled images need no one else: each rank
writes its own <i:05d>.png under their dataset numbers. Tiles of one picture are spread over all
files, so each rank hands its decoded tiles to rank 0 through a file, and rank 0 puts the pictures
together. Ranks that finish hours apart never meet in a collective that could time out: rank 0
waits for their files without a deadline, with a progress bar (the pattern of `rank_results`),
and a rank that fails while decoding leaves a file saying why, which stops rank 0 with that
reason, also when the rank was refused before decoding (its GPU model or checkpoint can differ
from rank 0's on another node). Only a refused input, the same on every rank, writes nothing.
The exchange folder (<output_dir>/.decode-ranks) is removed at the end, so the output dir holds
exactly what a one-rank decode writes.
"""
from __future__ import annotations

import io
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from improved_diffusion.atomic_io import atomic_write

from .decode_errors import DecodeError
from .decoded_pngs import write_pngs
from .decoder import open_input, pictures_of, prepare_decoder, worker_files
from .rank_results import wait_for_rank_results, write_rank_results

EXCHANGE_DIR = ".decode-ranks"
Log = Callable[[str], None]


@dataclass(frozen=True)
class DecodeRequest:
    """What decode.py was asked to do (config/decode.yaml's keys, checked)."""
    input: str
    output_dir: str
    model_path: Optional[str] = None
    device: str = ""
    levels: str = "raw"
    overwrite: bool = False
    allow_device_mismatch: bool = False


def exchange_dir(output_dir: str) -> str:
    return os.path.join(output_dir, EXCHANGE_DIR)


def clear_exchange(output_dir: str) -> None:
    """Rank 0, before any rank decodes: no file of an earlier, interrupted decode may be taken
    for this one's."""
    shutil.rmtree(exchange_dir(output_dir), ignore_errors=True)


def decode_to_dir(request: DecodeRequest, rank: int = 0, world: int = 1, log: Log = print) -> List[str]:
    """Decode this rank's share of `request.input` into `request.output_dir`; returns the PNG
    paths this rank wrote (rank 0: after every rank finished). The caller checked output_dir."""
    if world == 1:
        return _decode_all(request, log)
    inp = open_input(request.input, world, rank)  # a refusal here is every rank's: nothing is written
    try:  # the device and checkpoint checks can fail on one node only (another GPU model, a missing file)
        decoder = prepare_decoder(inp, request.model_path, request.device, log, request.allow_device_mismatch)
        paths, tiles = _decode_share(request, inp, decoder, rank, world, log)
    except BaseException as exc:  # tell rank 0, which may be waiting for this rank's tiles
        _report(request.output_dir, rank, {"failed": f"{type(exc).__name__}: {exc}"})
        raise
    _report(request.output_dir, rank, {"images": len(paths), "tiles": tiles is not None}, tiles)
    if rank != 0:
        return paths
    return paths + _finish(request, inp, world, log)


def _decode_all(request: DecodeRequest, log: Log) -> List[str]:
    inp = open_input(request.input)
    decoder = prepare_decoder(inp, request.model_path, request.device, log, request.allow_device_mismatch)
    pictures, numbers = pictures_of(inp, decoder.decode_files(range(len(inp.files)), log))
    return write_pngs(pictures, request.output_dir, inp.header.num_levels, request.levels, request.overwrite, numbers)


def _decode_share(request: DecodeRequest, inp, decoder, rank: int, world: int, log: Log):
    """(PNG paths written, None) for untiled images; ([], {file: tiles}) when the pictures were
    tiled and rank 0 must put them together."""
    mine = worker_files(len(inp.files), rank, world)
    log(f"decode rank {rank} of {world}: files {', '.join(os.path.basename(inp.files[k]) for k in mine)}")
    decoded = decoder.decode_files(mine, log)
    if inp.header.tiling is not None:
        return [], decoded
    images = [image for k in mine for image in decoded[k]]
    numbers = [n for k in mine for n in inp.numbers(k)]
    return write_pngs(images, request.output_dir, inp.header.num_levels, request.levels, request.overwrite,
                      numbers), None


def _tiles_path(output_dir: str, rank: int) -> str:
    return os.path.join(exchange_dir(output_dir), f"tiles.rank{rank}.npz")


def _report(output_dir: str, rank: int, stats: Dict, tiles: Optional[Dict[int, np.ndarray]] = None) -> None:
    """This rank's outcome (and decoded tiles) where rank 0 looks for them; the tiles first, so
    the report is never seen without them."""
    if tiles is not None:
        os.makedirs(exchange_dir(output_dir), exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, **{f"file{k}": v for k, v in tiles.items()})
        atomic_write(_tiles_path(output_dir, rank), lambda f: f.write(buffer.getvalue()))
    write_rank_results(exchange_dir(output_dir), rank, stats)


def _finish(request: DecodeRequest, inp, world: int, log: Log) -> List[str]:
    """Rank 0: wait for every rank; with tiles, put the pictures together and write them."""
    reports = wait_for_rank_results(exchange_dir(request.output_dir), world, log=log)
    failed = [(r, s["failed"]) for r, s in enumerate(reports) if "failed" in s]
    if failed:
        raise DecodeError(f"decode rank {failed[0][0]} of {world} failed: {failed[0][1]}")
    paths: List[str] = []
    if reports[0]["tiles"]:
        decoded: Dict[int, np.ndarray] = {}
        for r in range(world):
            with np.load(_tiles_path(request.output_dir, r)) as part:
                decoded.update({int(name[4:]): part[name] for name in part.files})
        pictures, numbers = pictures_of(inp, decoded)
        paths = write_pngs(pictures, request.output_dir, inp.header.num_levels, request.levels, request.overwrite,
                           numbers)
    shutil.rmtree(exchange_dir(request.output_dir), ignore_errors=True)
    log(f"all {world} decode ranks finished: {sum(int(s['images']) for s in reports) + len(paths)} images")
    return paths
