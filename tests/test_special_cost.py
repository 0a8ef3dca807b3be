"""`bench/special_cost.py` counts the special-function calls that the codec speed floor in the
README rests on. Its count of the compiled path's calls (kernels run as Python in a child
process) must be positive and never above the NumPy reference's count on the same images: the
compiled path evaluates the reference's CDF values, only never twice and only on the branch it
takes. For Bit-Swap, whose reference evaluates both branches of its np.where, it is lower."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import special_cost  # noqa: E402

MODEL, RESPACING, STEPS, IMAGES = "tiny", "vlb100", 2, 2


@pytest.fixture(scope="module")
def counted():
    return {name: (special_cost.count_calls(name, "numpy", special_cost.count_reference_calls, MODEL, RESPACING,
                                            STEPS, IMAGES, IMAGES),
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
