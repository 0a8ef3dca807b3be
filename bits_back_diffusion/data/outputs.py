"""Checking where decoded pictures will go, before the (long) decode starts.

decode.py writes <i:05d>.png files and never replaces one unless asked; finding a clash only when
writing would waste the whole decode, so the output location is checked first.
"""
from __future__ import annotations

import os
import re

from .errors import DataError

DECODED_NAME = re.compile(r"^\d{5,}\.png$")  # decode.py's <i:05d>.png


def check_output_dir(output_dir: str, overwrite: bool = False) -> None:
    """Refuse an output_dir that is a file, lies under a file or an unwritable folder, or (unless
    `overwrite`) already holds decoded pictures (<i:05d>.png) that the decode could replace."""
    path = os.path.abspath(os.path.expanduser(output_dir))
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f"output_dir={output_dir} is an existing file, not a folder; choose a new output_dir")
    existing = path
    while not os.path.exists(existing):  # the nearest existing ancestor will hold the new folders
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise DataError(f"output_dir={output_dir} cannot be created: {existing} is a file; choose a new output_dir")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise DataError(f"output_dir={output_dir}: {existing} is not writable; choose another output_dir")
    if overwrite or existing != path:
        return
    decoded = sorted(name for name in os.listdir(path) if DECODED_NAME.match(name))
    if decoded:
        raise DataError(
            f"output_dir={output_dir} already holds decoded pictures ({os.path.join(output_dir, decoded[0])}, "
            f"{len(decoded)} in all) that this decode could replace; decode.py never replaces files: choose a new "
            "output_dir, or pass overwrite=true (to decode every rank of an MPI run into one folder, pass "
            "input=<the encode run dir>)"
        )
