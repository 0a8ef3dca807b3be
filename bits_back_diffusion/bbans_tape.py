"""What BB-ANS decode keeps between its two passes, and nothing more.

Decode pops z_{N-1}, …, z_0 with their priors and x with the likelihood; only then, with x known,
can it push every latent back with its posterior q(z_t | z_{t+1}, x), whose bins are the prior's
bins. So each step's prior and bin index must survive until the end of the batch. Kept naively
(float64 mean and std, int64 index, float32 latent) that is 28 bytes per dimension per step:
at 4000 steps and a batch of 16 CIFAR images, 5.5 GB per rank.

The tape keeps, per step and dimension:
  * the bin index in the smallest unsigned type that holds 2**prior_prec values (2 bytes at the
    default prior_prec 10), instead of int64;
  * the prior as the network produced it: float32 mean and log-variance (8 bytes), instead of
    the float64 mean and std (16 bytes). `DiffusionLatentModel.gaussian_from_raw` turns them
    into the float64 pair with elementwise NumPy on an exact widening, so calling it again on
    the same arrays gives the same bits the encoder and the prior pass saw;
  * no latent: z_t is the prior's bin centre of its index, a table lookup recomputed when the
    posterior of the step below needs it.
That is 10 bytes per dimension per step (1.97 GB at 4000 steps, batch 16, CIFAR; nothing on the
model's device, where the former list of latents lived), in two arrays made for all steps at once
and let go when the batch is decoded.

Measured on this 2-core CPU (`/usr/bin/time -v python bench/bbans_memory.py --images 16
--respacing vlb1000`: the CIFAR-shaped fixture, 16 images as one batch, encode + decode check):
peak RSS 2181 -> 1537 MiB on the compiled backend, 2225 -> 1457 MiB on the NumPy one; the kept
state 1312 -> 468 MiB. Recomputing costs 0.13 ms per step for the prior and 0.24 ms for the
latent at batch 16, against 60-120 ms per step for that decode (model included). Keeping the
float32 latent would save the 0.24 ms for 4 more bytes per dimension (0.79 GB per rank at 4000
steps): memory is the scarcer of the two. The design not chosen: spilling the former state to a
temporary memmap in the run dir. It is exact trivially, but moves 28 bytes per dimension per step
through the page cache (1.5 ms per step to write and read back at batch 16, 5.5 GB of disk per
rank at 4000 steps), its dirty pages count as resident until written back, and a killed run
leaves the file behind.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional, Tuple

import numpy as np
import torch

from .latent_model import Gaussian, RawGaussian

if TYPE_CHECKING:
    from .codec import BitsBackCodec


def index_dtype(prior_prec: int) -> np.dtype:
    """The smallest unsigned integer type holding every bin index in [0, 2**prior_prec)."""
    return np.min_scalar_type((1 << int(prior_prec)) - 1)


class IndexTape:
    """The bin index of every step of one batch, one array for all steps in `index_dtype` (2 bytes
    per dimension per step at prior_prec 10, instead of int64's 8). Encode pops them top-down and
    pushes them bottom-up with the uniform prior once the data is on (0.39 GB instead of 1.57 GB at
    4000 steps, batch 16, CIFAR); decode's `PriorTape` keeps its indices here too."""

    def __init__(self, prior_prec: int, shape: Tuple[int, ...], steps: int):
        self._shape = tuple(shape)
        self._indices = np.empty((int(steps),) + self._shape, index_dtype(prior_prec))
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def step_nbytes(self) -> int:
        """Bytes one recorded step takes."""
        return self._indices[0].nbytes

    def record(self, idx: np.ndarray) -> None:
        self._indices[self._count] = np.asarray(idx).reshape(self._shape)  # in range: 2**prior_prec bins
        self._count += 1

    def at(self, k: int) -> np.ndarray:
        """The k-th recorded (top-down) indices as int64, what the coders take."""
        return self._indices[k].astype(np.int64)

    def bottom_up(self) -> Iterator[np.ndarray]:
        """The indices, last recorded first."""
        for k in reversed(range(self._count)):
            yield self.at(k)


class PriorTape:
    """Per-step bin indices and raw priors of one decoded batch, read back bottom-up.

    `codec` is a `codec.BitsBackCodec`: its latent model recomputes the priors, with the very
    functions of `coder` (compiled_codecs.HostCoder by default) that the prior pass used. Each field is
    one array for all steps, made up front (its pages are touched as steps arrive). With one small
    array per step instead, kept among the short-lived ones of the model and the coder, a vlb1000
    decode peaked at 14 GB once (numpy backend; 6 GB once on numba) where it otherwise took
    1.5 GB, most likely the C heap fragmenting; the arrays made up front never did."""

    def __init__(self, codec: "BitsBackCodec", shape: Tuple[int, ...], steps: int, coder=None):
        self._codec = codec
        if coder is None:
            from .compiled_codecs import HOST as coder
        self._coder = coder  # compiled_codecs.HostCoder or cuda_codecs.CudaCoder: where priors are rebuilt
        self._shape = tuple(shape)
        self._steps = int(steps)
        self._indices: Optional[IndexTape] = IndexTape(codec.prec.prior_prec, self._shape, self._steps)
        self._raw: Optional[np.ndarray] = None  # (steps - 1, 2, *shape): mean, log-variance below the top
        self._count = 0
        self.nbytes = 0
        self.peak_nbytes = 0

    def record(self, idx: np.ndarray, raw: Optional[RawGaussian]) -> None:
        """Keep the next step's (top-down) bin indices and the raw prior they were popped with
        (None for the top step, whose prior is the standard normal)."""
        k = self._count
        if self._indices is None or k >= self._steps:
            raise ValueError(f"the tape holds {self._steps} steps and is full or already read back")
        if (raw is None) != (k == 0):
            raise ValueError("only the top step has the standard normal prior (raw=None)")
        self._indices.record(idx)
        self.nbytes += self._indices.step_nbytes
        if raw is not None:
            if self._raw is None:
                self._raw = np.empty((self._steps - 1, 2) + self._shape, raw[0].dtype)
            if raw[0].dtype != self._raw.dtype or raw[1].dtype != self._raw.dtype:
                raise ValueError(f"raw prior of dtype {raw[0].dtype}/{raw[1].dtype}; the tape holds {self._raw.dtype}")
            self._raw[k - 1, 0] = raw[0]
            self._raw[k - 1, 1] = raw[1]
            self.nbytes += self._raw[k - 1].nbytes
        self._count += 1
        self.peak_nbytes = max(self.peak_nbytes, self.nbytes)

    def _prior(self, k: int) -> Gaussian:
        if k == 0:
            return self._coder.std_prior(self._codec, self._shape)
        raw = (self._raw[k - 1, 0], self._raw[k - 1, 1])
        return self._coder.prior_from_raw(self._codec.lm, raw, self._codec.lm.num_steps - k)

    def bottom_up(self) -> Iterator[Tuple[int, np.ndarray, Gaussian, Optional[torch.Tensor]]]:
        """(t, bin indices, prior, z_{t+1} on the model's device or None at the top) for t = 0 .. N-1,
        the order the posterior pushes need; the tape lets its arrays go at the end."""
        n = self._count
        prior = self._prior(n - 1) if n else None
        for k in reversed(range(n)):
            above = self._prior(k - 1) if k > 0 else None
            z_above = None if k == 0 else self._coder.model_latent(self._codec, above, self._indices.at(k - 1))
            yield n - 1 - k, self._indices.at(k), prior, z_above
            prior = above
        self._indices = self._raw = None
        self.nbytes = 0
