"""The codec modules import the shared coding pieces, not each other; the registry knows both."""
import subprocess
import sys

import pytest

from bits_back_diffusion.bitswap import BitSwapCodec
from bits_back_diffusion.codec import BitsBackCodec
from bits_back_diffusion.codec_registry import codec_class, codec_names


def test_bitswap_loads_without_the_bbans_module():
    # A fresh interpreter: importing Bit-Swap must not pull in codec.py (the old import cycle).
    code = ("import sys, bits_back_diffusion.bitswap; "
            "assert 'bits_back_diffusion.codec' not in sys.modules, 'bitswap imports codec.py'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_registry_names_both_codecs_and_refuses_others():
    assert codec_names() == ["bbans", "bitswap"]
    assert codec_class("bbans") is BitsBackCodec and codec_class("bitswap") is BitSwapCodec
    with pytest.raises(ValueError, match="choose one of bbans, bitswap"):
        codec_class("bitswop")
