"""What an image file really holds (container, colour type, bits per sample), read from the file.

Pillow's mode is not enough to decide whether a picture can come back exactly: it opens a 16-bit
RGB PNG as 'RGB' (keeping the high bytes only) and a 4-bit gray PNG as 'L' (values stretched to
0..255). For PNG the colour type and bit depth therefore come from the IHDR chunk itself.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional, Tuple

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_HEAD_BYTES = 33  # signature (8) + IHDR length and type (8) + IHDR data (13) + CRC (4)

_PNG_COLOURS = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}
_PILLOW_COLOURS = {"1": "gray", "L": "gray", "LA": "gray+alpha", "La": "gray+alpha", "P": "palette", "PA": "palette",
                   "RGB": "RGB", "RGBA": "RGBA", "RGBa": "RGBA", "CMYK": "CMYK", "YCbCr": "YCbCr", "LAB": "LAB",
                   "HSV": "HSV", "I": "32-bit integer", "F": "32-bit float"}

# decode.py writes 8-bit gray (one channel) or 8-bit RGB (three): only these come back exactly.
EXACT_COLOURS = {1: "gray", 3: "RGB"}
EXACT_PILLOW_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class FileFormat:
    """The samples as stored in the file, independent of how Pillow presents them."""

    container: str  # "PNG", "JPEG", or the format Pillow recognised
    colour: str  # "gray", "RGB", "palette", "gray+alpha", "RGBA", "CMYK", ...
    bits: int  # bits per sample on disk
    pillow_mode: str
    transparency: bool = False  # a PNG tRNS chunk: a colour that means "transparent"
    frames: int = 1

    def describe(self) -> str:
        extra = ", with a transparent colour (tRNS)" if self.transparency else ""
        extra += f", {self.frames} frames" if self.frames > 1 else ""
        return f"{self.container} {self.colour} {self.bits}-bit (Pillow mode {self.pillow_mode}){extra}"


def exact_format_name(channels: int) -> str:
    """How the one format that is restored exactly for `channels` is called in messages."""
    return f"8-bit {EXACT_COLOURS[channels]} (Pillow mode {EXACT_PILLOW_MODES[channels]}) PNG or JPEG"


def read_png_ihdr(head: bytes) -> Optional[Tuple[int, int, int, int]]:
    """(width, height, bit depth, colour type) from a PNG's first bytes; None when they hold no PNG IHDR."""
    if len(head) < PNG_HEAD_BYTES or not head.startswith(PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", head[16:26])
    return width, height, depth, colour


def file_format(img: Image.Image, head: bytes) -> FileFormat:
    """The format of an opened image, `head` being the first PNG_HEAD_BYTES bytes of its file."""
    frames = int(getattr(img, "n_frames", 1) or 1)
    ihdr = read_png_ihdr(head)
    if img.format == "PNG" and ihdr is not None:
        _, _, depth, colour = ihdr
        name = _PNG_COLOURS.get(colour, f"colour type {colour}")
        return FileFormat("PNG", name, int(depth), img.mode, "transparency" in img.info, frames)
    bits = int(getattr(img, "bits", 8) or 8)
    if img.mode.startswith("I;16"):
        bits = 16
    elif img.mode == "1":
        bits = 1
    colour = _PILLOW_COLOURS.get(img.mode.split(";")[0], img.mode)
    return FileFormat(str(img.format or "unknown"), colour, bits, img.mode, "transparency" in img.info, frames)


def format_problem(fmt: FileFormat, channels: int) -> Optional[Tuple[str, str]]:
    """Why a file of format `fmt` cannot be restored exactly by a `channels`-channel model, as
    (reason, kind of fix), or None when it can."""
    if fmt.container not in ("PNG", "JPEG"):
        return f"a {fmt.container} file; only PNG and JPEG are read", "convert"
    if fmt.frames > 1:
        return "an animation; only its first frame would be coded", "convert"
    if fmt.colour not in ("gray", "RGB"):
        return f"{fmt.colour} picture; decode.py can only write {EXACT_COLOURS[channels]}", "convert"
    if fmt.bits != 8:
        kind = "deep" if fmt.bits > 8 else "convert"
        return f"{fmt.bits}-bit samples; the models code 8-bit samples", kind
    if fmt.colour != EXACT_COLOURS[channels]:
        return f"{fmt.colour} picture, but data.channels={channels} codes {EXACT_COLOURS[channels]}", "channels"
    if fmt.pillow_mode != EXACT_PILLOW_MODES[channels]:
        return f"Pillow reads it as mode {fmt.pillow_mode}, not {EXACT_PILLOW_MODES[channels]}", "convert"
    if fmt.transparency:
        return "has a transparent colour that decode.py cannot write back", "convert"
    return None
