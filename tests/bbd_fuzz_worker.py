"""Crafted `.bbd` files against decode.py, run by test_bbd_fuzz.py in a memory-limited subprocess.

    python tests/bbd_fuzz_worker.py <work dir> <examples per strategy>

Starts from a real small file (the version-2 fixture's 3 digits, rewritten in the current version), forges
header fields and flips bytes, always with both CRCs recomputed (anyone can do that, so the CRC is
no guard), and decodes each result with the digits demo checkpoint. Every crafted file must be
refused with a .bbd error (BBDFormatError or the decoder's DecodeError), or decode to exactly the
original digits, within PER_FILE_SECONDS. Prints one JSON line of counts; a failure raises.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import sys
import time
import warnings
import zlib
from pathlib import Path
from typing import Any, Dict

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bits_back_diffusion.bbd_wire import header_to_bytes  # noqa: E402
from bits_back_diffusion import decoder  # noqa: E402
from bits_back_diffusion.container import FORMAT_VERSION, BBDFormatError, DeviceInfo, read_bbd, write_bbd  # noqa: E402

FIXTURE = REPO / "tests" / "fixtures" / "digits3_v2.bbd"
MODEL = REPO / "outputs" / "pretrained" / "digits"
PER_FILE_SECONDS = 20.0

# the issue's hostile values (#12 item 4), each of which must be refused
ISSUE_CASES: Dict[str, Dict[str, Any]] = {
    "num_images=10**12": {"num_images": 10**12},
    "batches=[[1, 10**12]]": {"num_images": 10**12, "batches": [[1, 10**12]]},
    "words_per_lane=10**9": {"initial_message": {"words_per_lane": 10**9, "seed": 7919}},
    "model num_channels=2048": {"model_flags.num_channels": 2048},
    "world_size=0": {"world_size": 0},
    "torch_threads=256": {"device.torch_threads": 256},
}


def unchecked(obj: Any, **changes: Any) -> Any:
    """A copy of a frozen header dataclass with `changes`, skipping its validation (a forger's tool)."""
    new = object.__new__(type(obj))
    for f in dataclasses.fields(obj):
        object.__setattr__(new, f.name, changes.get(f.name, getattr(obj, f.name)))
    return new


def forge_header(base, changes: Dict[str, Any]):
    """`changes` keyed by field or by 'model_flags.x' / 'diffusion_flags.x' / 'device.x'."""
    top = {k: v for k, v in changes.items() if "." not in k}
    for part in ("model_flags", "diffusion_flags", "device"):
        inner = {k.split(".", 1)[1]: v for k, v in changes.items() if k.startswith(part + ".")}
        if inner:
            top[part] = unchecked(getattr(base, part), **inner)
    return unchecked(base, **top)


def framed(meta: bytes, payload: bytes) -> bytes:
    """A file of the current version around these header and payload bytes, with correct lengths and CRCs."""
    return b"".join((struct.pack("<8sHHI", b"\x89BBD\r\n\x1a\n", FORMAT_VERSION, 0, len(meta)), meta,
                     struct.pack("<IQI", zlib.crc32(meta), len(payload) // 4, zlib.crc32(payload)), payload))


class Target:
    """The real file, its parts, and what decoding a crafted variant may produce."""

    def __init__(self, work: Path) -> None:
        header, message = read_bbd(str(FIXTURE))
        self.header = dataclasses.replace(header, device=DeviceInfo(kind="cpu", torch_threads=1))
        base = work / "base.bbd"
        write_bbd(str(base), self.header, message)
        blob = base.read_bytes()
        meta_len = struct.unpack_from("<I", blob, 12)[0]
        self.meta, self.payload = blob[16:16 + meta_len], blob[32 + meta_len:]
        self.expected = json.loads(FIXTURE.with_suffix(".json").read_text())["image_sha256"]
        self.path = work / "crafted.bbd"
        self.counts = {"refused": 0, "decoded": 0}
        self.slowest = 0.0

    def outcome(self, blob: bytes) -> str:
        """'refused' or 'decoded' (to the original digits); anything else raises."""
        self.path.write_bytes(blob)
        start = time.time()
        try:
            _, images, _ = decoder.decode_input(str(self.path), model_path=str(MODEL), log=lambda *_: None)
            result = "decoded"
        except (BBDFormatError, decoder.DecodeError):
            result = "refused"
        took = time.time() - start
        self.slowest = max(self.slowest, took)
        assert took < PER_FILE_SECONDS, f"a crafted file took {took:.1f}s"
        if result == "decoded":
            hashes = [hashlib.sha256(np.asarray(img)[0].astype(np.uint8).tobytes()).hexdigest() for img in images]
            assert hashes == self.expected, "a crafted file decoded to other images without an error"
        self.counts[result] += 1
        return result


def field_changes() -> st.SearchStrategy:
    big = st.one_of(st.integers(0, 8), st.integers(0, 2**40), st.sampled_from([10**12, 2**31, 2**63 - 1]))
    runs = st.lists(st.lists(big, min_size=2, max_size=2), max_size=4)
    one = st.one_of(
        st.builds(lambda n: {"num_images": n}, big),
        st.builds(lambda n: {"num_images": n, "batches": [[1, n]] if n else []}, big),
        st.builds(lambda r: {"batches": r}, runs),
        st.builds(lambda b: {"batch_size": b}, big),
        st.builds(lambda w, s: {"initial_message": {"words_per_lane": w, "seed": s}}, big, st.integers(0, 2**63 - 1)),
        st.builds(lambda k: {"head_shape": (k, 1, 8, 8)}, big),
        st.builds(lambda w, r: {"world_size": w, "rank": r}, st.integers(0, 4), st.integers(0, 4)),
        st.builds(lambda t: {"device.torch_threads": t}, st.sampled_from([0, 1, 2, 3, 256, 1024, 1025, 10**6])),
        st.builds(lambda k: {"device.kind": k}, st.sampled_from(["cuda", "tpu", ""])),
        st.builds(lambda c: {"model_flags.num_channels": c}, st.sampled_from([1, 16, 31, 64, 2048, 4096, 10**6])),
        st.builds(lambda c: {"model_flags.num_res_blocks": c}, st.sampled_from([0, 1, 3, 64, 10**6])),
        st.builds(lambda m: {"model_flags.channel_mult": m}, st.sampled_from(["", "1", "1,2,2", "64,64,64,64,64,64,64,64", "x"])),
        st.builds(lambda a: {"model_flags.attention_resolutions": a}, st.sampled_from(["4", "2,4", "3", "8,4,2,1"])),
        st.builds(lambda h: {"model_flags.num_heads": h, "model_flags.attention_resolutions": "4"},
                  st.sampled_from([1, 3, 7, 1024])),
        st.builds(lambda d: {"model_flags.dropout": d}, st.floats(allow_nan=True, allow_infinity=True)),
        st.builds(lambda s: {"diffusion_flags.noise_schedule": s}, st.sampled_from(["cosine", "quadratic"])),
        st.builds(lambda s: {"diffusion_flags.steps": s}, st.sampled_from([1, 10, 99, 1000, 10**9])),
        st.builds(lambda r: {"diffusion_flags.timestep_respacing": r}, st.sampled_from(["", "5", "ddim10", "vlb10", "10,10", "zzz"])),
        st.builds(lambda n: {"diffusion_flags.num_levels": n}, st.sampled_from([1, 2, 16, 256, 10**6])),
        st.builds(lambda v: {"likelihood_std_min": v}, st.floats(allow_nan=True, allow_infinity=True)),
        st.builds(lambda v: {"clip_denoised": v}, st.booleans()),
        st.builds(lambda p: {"precisions": {"prior_prec": p[0], "latent_prec": p[1], "obs_prec": p[2]}},
                  st.tuples(*[st.integers(0, 40)] * 3)),
        st.builds(lambda c: {"codec": c}, st.sampled_from(["bbans", "bitswap", "nope"])),
        st.builds(lambda s: {"model_sha256": s}, st.sampled_from(["00" * 32, "ab" * 32])),
    )
    return st.lists(one, min_size=1, max_size=2).map(lambda parts: {k: v for p in parts for k, v in p.items()})


def main(work: Path, examples: int) -> None:
    warnings.simplefilter("ignore")
    target = Target(work)
    start = time.time()
    limit = PER_FILE_SECONDS
    globals()["PER_FILE_SECONDS"] = 600.0  # the untouched file decodes (and compiles the codec's kernels once)
    assert target.outcome(framed(target.meta, target.payload)) == "decoded"
    globals()["PER_FILE_SECONDS"] = limit
    for name, changes in ISSUE_CASES.items():
        got = target.outcome(framed(header_to_bytes(forge_header(target.header, changes)), target.payload))
        assert got == "refused", f"the issue's case {name} was not refused"
    common = dict(deadline=None, database=None, derandomize=True, max_examples=examples,
                  suppress_health_check=list(HealthCheck))

    @settings(**common)
    @given(field_changes())
    def forged_fields(changes: Dict[str, Any]) -> None:
        try:
            meta = header_to_bytes(forge_header(target.header, changes))
        except (ValueError, OverflowError, struct.error, AttributeError, TypeError, KeyError, IndexError):
            return  # not expressible in the binary layout at all (e.g. negative or NaN where a uint goes)
        target.outcome(framed(meta, target.payload))

    @settings(**common)
    @given(st.data())
    def flipped_bytes(data: st.DataObject) -> None:
        meta, payload = bytearray(target.meta), bytearray(target.payload)
        for _ in range(data.draw(st.integers(1, 3))):
            part = data.draw(st.sampled_from(["header", "header", "header", "payload"]))
            buf = meta if part == "header" else payload
            buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
        if data.draw(st.booleans()):  # and sometimes a cut or an insertion inside the header
            at = data.draw(st.integers(0, len(meta)))
            meta[at:at + data.draw(st.integers(0, 3))] = data.draw(st.binary(max_size=3))
        target.outcome(framed(bytes(meta), bytes(payload)))

    forged_fields()
    flipped_bytes()
    print(json.dumps({**target.counts, "seconds": round(time.time() - start, 1),
                      "slowest_file_seconds": round(target.slowest, 1)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
