"""atomic_write completes a file before a stop signal's handler runs (a preempted job that exits
from its handler inside torch.save used to die with the zip writer's error instead)."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from improved_diffusion.atomic_io import atomic_write


class Preempted(SystemExit):
    pass


@pytest.fixture
def exiting_on_usr2():
    def handler(signum, frame):
        raise Preempted(0)

    previous = signal.signal(signal.SIGUSR2, handler)
    yield handler
    signal.signal(signal.SIGUSR2, previous)


def test_a_stop_signal_during_torch_save_exits_after_the_file_is_complete(tmp_path, exiting_on_usr2):
    path = tmp_path / "model.pt"
    state = {"w": torch.arange(100000, dtype=torch.float32)}

    def write(f):
        os.kill(os.getpid(), signal.SIGUSR2)  # the scheduler preempts the job mid-write
        torch.save(state, f)

    with pytest.raises(Preempted):
        atomic_write(str(path), write)
    assert torch.equal(torch.load(path, weights_only=True)["w"], state["w"])  # complete, under its name
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary left
    assert signal.getsignal(signal.SIGUSR2) is exiting_on_usr2  # the job's handler is back


def test_handlers_are_untouched_when_no_signal_comes(tmp_path, exiting_on_usr2):
    atomic_write(str(tmp_path / "a.bin"), lambda f: f.write(b"abc"))
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert signal.getsignal(signal.SIGUSR2) is exiting_on_usr2
