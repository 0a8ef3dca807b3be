"""Per-rank results of a multi-rank encode, handed to rank 0 through files in the run dir.

Ranks of a long encode finish hours apart (their shards code at different speeds, a rank may be
requeued), while a collective such as `all_gather_object` gives up after the process group's
timeout: the run would lose results.json although every `.bbd` file exists. So each rank writes
`rank_results/rank<r>.json` (atomically) once its file is written, and rank 0 waits for all of
them with a progress bar, without a deadline. If rank 0 is stopped while waiting, a later
`encode.py` call in the same run dir finds the finished ranks' files and waits only for the rest.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Dict, List, Optional

from tqdm.auto import tqdm

from improved_diffusion.atomic_io import atomic_write

RESULTS_DIR = "rank_results"


def rank_results_path(run_dir: str, rank: int) -> str:
    return os.path.join(run_dir, RESULTS_DIR, f"rank{rank}.json")


def write_rank_results(run_dir: str, rank: int, stats: Dict[str, Any]) -> str:
    """Store this rank's results where rank 0 will look for them."""
    path = rank_results_path(run_dir, rank)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    payload = json.dumps({"rank": rank, "stats": stats}, sort_keys=True).encode()
    atomic_write(path, lambda f: f.write(payload))
    return path


def _read(path: str, rank: int) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None  # not there yet (atomic writes never leave a partial file under the name)
    if data.get("rank") != rank:
        raise ValueError(f"{path} holds the results of rank {data.get('rank')}, not of rank {rank}")
    return data["stats"]


def wait_for_rank_results(run_dir: str, world_size: int, poll_seconds: float = 5.0, show_progress: bool = True,
                          log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                          report_every: float = 600.0) -> List[Dict[str, Any]]:
    """Every rank's results in rank order, waiting as long as it takes for the missing ones."""
    found: Dict[int, Dict[str, Any]] = {}
    waited = 0.0
    next_report = report_every
    with tqdm(total=world_size, desc="ranks finished", unit="rank", disable=not show_progress) as bar:
        while True:
            for rank in range(world_size):
                if rank not in found:
                    stats = _read(rank_results_path(run_dir, rank), rank)
                    if stats is not None:
                        found[rank] = stats
                        bar.update(1)
            if len(found) == world_size:
                return [found[r] for r in range(world_size)]
            if waited >= next_report:
                missing = sorted(set(range(world_size)) - set(found))
                log(f"waiting for ranks {missing} to finish ({waited / 60:.0f} min so far); their results will be "
                    f"{os.path.join(run_dir, RESULTS_DIR)}/rank<r>.json")
                next_report += report_every
            sleep(poll_seconds)
            waited += poll_seconds
