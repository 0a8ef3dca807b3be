"""Argument validation shared by the codecs.

Every check raises ``ValueError`` whose text starts with the codec's name and
names the offending argument, value and index, e.g.
``"DiagGaussian_GaussianBins: stdd contains nan at index (0, 3)"``.
"""

from __future__ import annotations

import numpy as np


def _index_str(mask: np.ndarray) -> str:
    idx = np.argwhere(mask)[0] if mask.ndim else ()
    return "(" + ", ".join(str(int(i)) for i in idx) + ("," if len(idx) == 1 else "") + ")"


def float_param(value, name: str, who: str, positive: bool = False) -> np.ndarray:
    """``value`` as a finite float64 array (strictly positive if asked)."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic inputs
        raise ValueError(f"{who}: {name} is not an array of numbers ({exc})") from None
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number)
                                   or arr.dtype == np.bool_):
        raise ValueError(f"{who}: {name} must be numeric, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise ValueError(f"{who}: {name} must be real, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = ~finite
        first = arr[tuple(np.argwhere(bad)[0])] if arr.ndim else arr[()]
        kind = "nan" if np.isnan(first) else ("inf" if first > 0 else "-inf")
        raise ValueError(f"{who}: {name} contains {kind} at index {_index_str(bad)}")
    if positive:
        bad = ~(arr > 0)
        if bad.any():
            first = arr[tuple(np.argwhere(bad)[0])] if arr.ndim else arr[()]
            raise ValueError(
                f"{who}: {name} must be > 0, got {float(first)!r} at index {_index_str(bad)}")
    return arr


def float_scalar(value, name: str, who: str) -> float:
    arr = float_param(value, name, who)
    if arr.ndim != 0:
        raise ValueError(f"{who}: {name} must be a scalar, got shape {arr.shape}")
    return float(arr)


def int_scalar(value, name: str, who: str, lo: int, hi: int) -> int:
    """An int in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{who}: {name} must be an int, got {value!r}")
    value = int(value)
    if not lo <= value <= hi:
        raise ValueError(f"{who}: {name} must be in [{lo}, {hi}], got {value}")
    return value


def symbols(value, shape, n: int, who: str) -> np.ndarray:
    """Symbols as an int64 array of exactly ``shape`` with values in [0, n)."""
    arr = np.asarray(value)
    if arr.shape != tuple(shape):
        raise ValueError(
            f"{who}: symbol shape {arr.shape} does not match the head shape {tuple(shape)}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.int64)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size:
            bad = (arr < 0) | (arr >= n)
            if bad.any():
                first = arr[tuple(np.argwhere(bad)[0])] if arr.ndim else arr[()]
                raise ValueError(
                    f"{who}: symbol {int(first)} out of range [0, {n}) at index "
                    f"{_index_str(bad)}")
        return arr.astype(np.int64, copy=False)
    if np.issubdtype(arr.dtype, np.floating):
        bad = ~(np.isfinite(arr) & (arr == np.floor(arr)) & (arr >= 0) & (arr < n))
        if bad.any():
            first = arr[tuple(np.argwhere(bad)[0])] if arr.ndim else arr[()]
            raise ValueError(
                f"{who}: symbol {float(first)!r} is not an integer in [0, {n}) at index "
                f"{_index_str(bad)}")
        return arr.astype(np.int64)
    raise ValueError(f"{who}: symbols must be integers, got dtype {arr.dtype}")


def broadcast_lanes(arr: np.ndarray, shape, name: str, who: str) -> np.ndarray:
    """``arr`` broadcast to the head ``shape`` and flattened (1-D)."""
    if arr.shape == tuple(shape):
        return arr.reshape(-1)
    try:
        return np.broadcast_to(arr, shape).reshape(-1)
    except ValueError:
        raise ValueError(
            f"{who}: {name} of shape {arr.shape} does not broadcast to the head "
            f"shape {tuple(shape)}") from None
