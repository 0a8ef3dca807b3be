"""`bench/special_cost.py` counts the special-function calls that the codec speed floor in the
README rests on. Its count of the compiled path's calls (kernels run as Python in a child
process) must be positive and never above the NumPy reference's count on the same images: the
compiled path evaluates the reference's CDF values, only never twice and only on the branch it
takes. For Bit-Swap, whose reference evaluates both branches of its np.where, it is lower."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import codec_speed  # noqa: E402
import special_cost  # noqa: E402
from bits_back_diffusion.codec_registry import build_codec, codec_class  # noqa: E402
from bits_back_diffusion.coding import initial_message  # noqa: E402

MODEL, RESPACING, STEPS, IMAGES = "tiny", "vlb100", 2, 2


def reference_counts(name: str) -> dict:
    """NumPy reference calls per latent per step on special_cost's images, as codec_speed counts them."""
    flags, model, diffusion = codec_speed.bench_model(MODEL, RESPACING, torch.device("cpu"))
    shape = (IMAGES, flags.get("in_channels", 3), flags["image_size"], flags["image_size"])
    x = codec_speed.bench_batch(shape)
    lm = codec_speed.RecordingModel(model, diffusion, torch.device("cpu"), steps=STEPS)
    codec = build_codec(name, lm, codec_class(name).default_precisions, backend="numpy", coder="host")
    head = (1,) + x.shape[1:] if codec.shares_lanes else x.shape
    out = {}
    with torch.no_grad():
        with special_cost.count_reference_calls() as counts:
            encoded = codec.encode(initial_message(codec, head, seed=0), x)
        out["encode"] = {k: v / STEPS / x.size for k, v in counts.items()}
        with special_cost.count_reference_calls() as counts:
            codec.decode(encoded, x.shape[0])
        out["decode"] = {k: v / STEPS / x.size for k, v in counts.items()}
    return out


@pytest.fixture(scope="module")
def counted():
    return {name: (reference_counts(name),
                   special_cost.compiled_calls_per_latent(name, MODEL, RESPACING, STEPS, IMAGES, IMAGES))
            for name in ("bbans", "bitswap")}


@pytest.mark.parametrize("name", ["bbans", "bitswap"])
def test_compiled_path_makes_some_but_not_more_calls_than_the_reference(counted, name):
    reference, compiled = counted[name]
    for direction in ("encode", "decode"):
        for fn in ("ndtr", "ndtri"):
            assert 0 < compiled[direction][fn] <= reference[direction][fn]


def test_bitswap_compiled_path_makes_fewer_calls_than_the_reference(counted):
    reference, compiled = counted["bitswap"]
    for direction in ("encode", "decode"):
        assert compiled[direction]["ndtr"] < reference[direction]["ndtr"]
