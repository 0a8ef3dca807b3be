"""Writing `.bbd` files of format versions 1 and 2 (a JSON header), which the current writer no
longer makes, to test that they still read."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any, Dict

import numpy as np

import craystack as cs
from bits_back_diffusion.container import MAGIC


def write_legacy_bbd(path: Path, version: int, header: Dict[str, Any], message: cs.Message) -> None:
    """The version 1/2 layout: the same framing as today's, with sorted-key JSON as the header."""
    meta = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    payload = np.ascontiguousarray(cs.flatten(message), dtype="<u4").tobytes()
    Path(path).write_bytes(b"".join((
        struct.pack("<8sHHI", MAGIC, version, 0, len(meta)), meta,
        struct.pack("<IQI", zlib.crc32(meta), len(payload) // 4, zlib.crc32(payload)), payload,
    )))
