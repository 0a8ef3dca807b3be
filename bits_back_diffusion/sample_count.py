"""`evaluator.num_samples` checked once, for every script that evaluates or codes a dataset.

-1 means all images; any other value must be a positive count. Asking for more images than the
data holds is allowed (all are used) but said loudly, in the log and in results.json, so a
short dataset never passes for a full one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional


@dataclass(frozen=True)
class SampleCount:
    requested: int
    available: int

    @property
    def used(self) -> int:
        return self.available if self.requested == -1 else min(self.requested, self.available)

    @property
    def shortfall_warning(self) -> Optional[str]:
        if self.requested == -1 or self.requested <= self.available:
            return None
        return (f"WARNING: evaluator.num_samples={self.requested} but the data has only {self.available} images; "
                f"using all {self.available} (results.json: num_samples_requested / num_samples_available)")

    def results(self) -> Dict[str, int]:
        return {"num_samples_requested": self.requested, "num_samples_available": self.available}


def check_num_samples(value: Any, available: int, world_size: int = 1) -> SampleCount:
    """Refuse 0, negatives other than -1 and non-integers before any work starts; refuse a data
    set too small to give every rank an image."""
    if isinstance(value, bool) or not isinstance(value, int) or value == 0 or value < -1:
        raise ValueError(f"evaluator.num_samples={value!r} is not a number of images: use a positive count, "
                         "or -1 for all images of the data")
    count = SampleCount(int(value), int(available))
    if count.used == 0:
        raise ValueError("the data has no images to evaluate; check data.val.data_dir")
    if count.used < world_size:
        raise ValueError(f"{count.used} image(s) cannot be shared by {world_size} ranks: start at most {count.used} "
                         "ranks, or code more images (evaluator.num_samples)")
    return count
