"""Run outputs: results.json, per-timestep curves (npz + PNG) and W&B mirrors of both."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Sequence

import numpy as np


def write_json_atomic(path: str, data: Dict[str, Any]) -> None:
    """Write JSON via a temporary file so a killed run never leaves half a results file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_results(run_dir: str, results: Dict[str, Any]) -> str:
    path = os.path.join(run_dir, "results.json")
    write_json_atomic(path, results)
    return path


def plot_curves(
    png_path: str,
    x: Sequence[float],
    curves: Dict[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str,
    logy: bool = False,
) -> str:
    """Line plot of one or more curves over a shared x axis, saved as PNG (headless backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for label, y in curves.items():
        ax.plot(np.asarray(x), np.asarray(y), label=label, lw=1.2)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def log_results_to_wandb(results: Dict[str, Any], images: Optional[Dict[str, str]] = None) -> None:
    """Mirror final numbers (as the run summary) and plots to the active W&B run, if any."""
    import wandb

    if wandb.run is None:
        return
    for key, value in results.items():
        if isinstance(value, (int, float, str, bool)):
            wandb.run.summary[key] = value
    for name, path in (images or {}).items():
        wandb.run.log({name: wandb.Image(path)})
