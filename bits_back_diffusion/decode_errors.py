"""The error every decode refusal raises (besides the file format's own BBDFormatError)."""
from __future__ import annotations


class DecodeError(ValueError):
    """A decode request that cannot be carried out; the message says how to fix it."""
