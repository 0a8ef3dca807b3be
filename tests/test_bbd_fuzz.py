"""Hostile .bbd files (issue #12 item 4): forged header fields and flipped bytes, with the CRCs
recomputed so the CRC is no guard, are each refused with a .bbd error or decode to exactly the
original images, in a subprocess limited to 3 GiB of address space and within a time bound.

The crafting and checking is in tests/bbd_fuzz_worker.py (hypothesis, derandomized so CI runs the
same files every time); the worker also asserts that the issue's cases (num_images=10**12,
batches=[[1, 10**12]], words_per_lane=10**9, num_channels=2048, world_size=0, torch_threads=256)
are refused.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys

from helpers import REPO_ROOT, script_env

MEMORY_BYTES = 3 << 30
EXAMPLES_PER_STRATEGY = 40


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))


def test_crafted_files_are_refused_or_decode_exactly(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "bbd_fuzz_worker.py"), str(tmp_path), str(EXAMPLES_PER_STRATEGY)],
        cwd=REPO_ROOT, env=script_env({"OMP_NUM_THREADS": "1"}), preexec_fn=_limit_memory, capture_output=True,
        text=True, timeout=600,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    counts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert counts["refused"] >= 6 + EXAMPLES_PER_STRATEGY  # the cases, and most crafted files
    assert counts["decoded"] >= 1  # the untouched file, at least
