"""Writing a file so that readers only ever see the old or the complete new version."""
from __future__ import annotations

import os
from typing import BinaryIO, Callable


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call `write` on a temporary file in `path`'s folder, sync it, then rename it over `path`.

    A run killed mid-write (checkpoints, compressed files) leaves the previous file intact and
    no partial one under the real name; the hidden temporary is removed if anything fails."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
