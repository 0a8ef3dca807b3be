"""Shared test fixtures: locating ../shared, the reference fixture model, offline W&B; and the CUDA
simulator run started in the background once the suite is collected (tests/cuda_sim_run.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import cuda_sim_run

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

# tests/cuda_sim runs in numba's CUDA simulator only, started by tests/test_cuda_coder.py
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["cuda_sim"]

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def shared_path(*parts: str) -> Path:
    """A path under ../shared (next to the repo root); fails loudly when it is missing."""
    path = SHARED_DIR.joinpath(*parts)
    if not path.exists():
        pytest.fail(
            f"reference file {path} is missing: the tests expect the project's shared/ folder "
            f"next to the repository root ({SHARED_DIR}); check it out there",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return shared_path("fixtures")


@pytest.fixture(scope="session")
def tiny_fixture(fixtures_dir: Path):
    """The reference tiny CIFAR model: flags, loaded model, respaced diffusion, reference values."""
    import numpy as np
    import torch

    from improved_diffusion.script_util import create_gaussian_diffusion, create_model

    flags = json.loads((fixtures_dir / "tiny_cifar_vlb.json").read_text())
    model = create_model(**flags["model"])
    model.load_state_dict(torch.load(fixtures_dir / "tiny_cifar_vlb.pt", map_location="cpu", weights_only=True), strict=True)
    model.eval()
    diffusion = create_gaussian_diffusion(**flags["diffusion"], timestep_respacing=flags["timestep_respacing"])
    values = dict(np.load(fixtures_dir / "tiny_cifar_vlb.npz"))
    return flags, model, diffusion, values


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="session")
def shared_cifar_npz() -> Path:
    """The decoded CIFAR-10 test set in ../shared/data (images: (N, 32, 32, 3) uint8)."""
    return shared_path("data", "cifar10_jpeg_test.npz")


def pytest_collection_finish(session) -> None:
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return  # the simulator run itself
    if any(item.nodeid.endswith(cuda_sim_run.TEST_NAME) for item in session.items):
        cuda_sim_run.start()


def pytest_sessionfinish(session) -> None:
    cuda_sim_run.stop()
