"""The encode and decode-check bars count model calls and end exactly at their totals, so the
time left they show follows the calls left, not the images left (growing batches make the time
per image fall several times over)."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from bits_back_diffusion import encoder
from bits_back_diffusion.bitswap import BITSWAP_PRECISIONS, BitSwapCodec
from bits_back_diffusion.data.base import ArrayImageSet
from bits_back_diffusion.encoder import DatasetCoder, EncodePlan
from bits_back_diffusion.latent_model import DiffusionLatentModel
from test_bitswap import ConvNet, process


class RecordingBar:
    """Stands in for tqdm; keeps (calls done, total, postfix) after every update."""

    made: List["RecordingBar"] = []

    def __init__(self, total: Optional[int] = None, initial: int = 0, desc: str = "", unit: str = "", disable=False):
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self.snapshots: List[tuple] = [(self.n, self.total, {})]
        RecordingBar.made.append(self)

    def update(self, n: int) -> None:
        self.n += n

    def set_postfix(self, **postfix) -> None:
        self.snapshots.append((self.n, self.total, postfix))

    def close(self) -> None:
        pass


def test_bars_count_model_calls_and_end_at_their_totals(tmp_path, monkeypatch):
    monkeypatch.setattr(encoder, "tqdm", RecordingBar)
    RecordingBar.made = []
    steps = 4
    images = np.random.default_rng(0).integers(0, 256, (14, 3, 4, 4))
    dataset = ArrayImageSet(images.astype(np.uint8), name="noise", num_levels=256)
    lm = DiffusionLatentModel(ConvNet(), process(1000, str(steps)), torch.device("cpu"))
    codec = BitSwapCodec(lm, BITSWAP_PRECISIONS)
    plan = EncodePlan.build(dataset, 4, -1, 0, 1, {"test": True}, head_images=1, grow=True)
    coder = DatasetCoder(codec, dataset, plan, str(tmp_path), save_interval=1000, seed=0)

    encoded = coder.encode()
    bar = RecordingBar.made[-1]
    sizes = coder.batch_sizes
    assert plan.batch_sizes == []  # the plan stays as built: the coder keeps the sizes it chose
    assert bar.unit == "call" and len(sizes) > 3 and max(sizes) > 1  # the batches grew
    assert bar.snapshots[0][1] is None  # nothing measured yet: no estimate rather than a wrong one
    assert bar.n == bar.total == lm.model_evals == steps * len(sizes)
    for k, (calls, total, postfix) in enumerate(bar.snapshots[1:]):
        assert calls == steps * (k + 1) and total >= calls
        assert postfix["images"] == f"{sum(sizes[:k + 1])}/{len(images)}" and postfix["batch"] == sizes[k]
    assert bar.snapshots[-2][1] - bar.snapshots[-2][0] == steps  # one batch left: one batch of calls

    coder.decode(encoded)
    bar = RecordingBar.made[-1]
    assert bar.desc == "decode" and bar.total == steps * len(sizes)  # known exactly from the start
    assert bar.n == bar.total and lm.model_evals == 2 * steps * len(sizes)
    assert [p["batch"] for _, _, p in bar.snapshots[1:]] == sizes[::-1]
