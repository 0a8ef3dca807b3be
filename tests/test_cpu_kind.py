"""The CPU kernel family a file records follows the kernels torch and NumPy actually chose."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from bits_back_diffusion.cpu_kind import cpu_kind

REPO = Path(__file__).resolve().parents[1]


def kind_in_child(**env: str) -> str:
    code = "from bits_back_diffusion.cpu_kind import cpu_kind; print(cpu_kind())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, **env}, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def test_cpu_kind_names_the_kernels_in_use():
    kind = cpu_kind()
    assert f"torch:{torch.backends.cpu.get_cpu_capability()} " in kind and " numpy:" in kind
    assert kind == kind_in_child()  # the same machine gives the same family in every process


def test_lowering_torchs_kernels_changes_the_family():
    """ATEN_CPU_CAPABILITY=default makes torch run its generic kernels: another family."""
    lowered = kind_in_child(ATEN_CPU_CAPABILITY="default")
    assert "torch:DEFAULT " in lowered
    if torch.backends.cpu.get_cpu_capability() != "DEFAULT":
        assert lowered != cpu_kind()
