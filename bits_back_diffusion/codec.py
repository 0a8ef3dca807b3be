"""Bits-back coding of images with a diffusion model (BB-ANS over the steps of the process).

`BitsBackCodec` (codec=bbans) is the reference scheme of Townsend et al. applied to the
hierarchy z_{N-1} -> … -> z_0 -> x of `DiffusionLatentModel`:

    encode: pop z_{N-1}, …, z_0 from the posterior (top-down), push x with p(x | z_0),
            push z_0, …, z_{N-1} with the prior (z_{N-1} lands on top);
    decode: the same lines in reverse order, with push and pop swapped.

Every latent is discretized into 2^prior_prec bins of equal mass under its own prior, so
prior codes are uniform over bin indices; the posterior is coded against those bins at
latent_prec, the data at obs_prec. The model is called once per step in encode and in decode.
The expected net cost per image is the negative ELBO, i.e. the VLB in bits.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

import craystack as cs

from .latent_model import DiffusionLatentModel, Gaussian


@dataclass(frozen=True)
class Precisions:
    prior_prec: int = 10
    latent_prec: int = 18
    obs_prec: int = 24

    def __post_init__(self) -> None:
        if not 1 <= self.prior_prec < self.latent_prec <= 32:
            raise ValueError(
                f"need 1 <= prior_prec < latent_prec <= 32, got prior_prec={self.prior_prec}, "
                f"latent_prec={self.latent_prec}"
            )
        if not 8 <= self.obs_prec <= 32:
            raise ValueError(f"obs_prec must lie in [8, 32], got {self.obs_prec}")


def message_bits(message: cs.Message) -> float:
    """Information held by a message: 32 bits per tail word plus log2 of every head lane, less 32
    bits per word borrowed from craystack's generator (a debt: the decoder gives them back)."""
    words = cs.tail_length(message) - cs.empty_pops(message)
    return 32.0 * words + float(np.log2(message.head.astype(np.float64)).sum())


@dataclass
class StepTrace:
    """Bits taken from (pop) and added to (push) the message at each respaced step, per batch."""

    pop_bits: List[np.ndarray] = field(default_factory=list)
    push_bits: List[np.ndarray] = field(default_factory=list)
    data_bits: List[float] = field(default_factory=list)

    def as_arrays(self) -> dict:
        return {
            "pop_bits": np.stack(self.pop_bits) if self.pop_bits else np.zeros((0, 0)),
            "push_bits": np.stack(self.push_bits) if self.push_bits else np.zeros((0, 0)),
            "data_bits": np.asarray(self.data_bits),
        }


BARE_HEAD = 1 << 40


def initial_message(codec, head_shape: Tuple[int, ...], seed: int) -> cs.Message:
    """The message the first batch starts from (see `initial_message_for`)."""
    return initial_message_for(head_shape, codec.initial_words_per_lane(), seed)


def initial_message_for(head_shape: Tuple[int, ...], words_per_lane: int, seed: int) -> cs.Message:
    """Random bits for the first batch to pop: a random head plus `words_per_lane` tail words per
    lane, reproducible from the seed; with 0 words, a bare message (every head BARE_HEAD = 2**40,
    no tail), whose pops borrow craystack's generator words, which a file does not store. Not
    the floor 2**32: the first pop from a head whose quotient is only 2**4 would take up to
    log2(1 + 2**-4) bits less than its symbol's information; at 2**40 that is 3.5e-4 bits, and
    the 8 bits above the floor are popped as the first random bits (Bit-Swap's first step takes
    more).

    A file holds the final message, so every random bit the encoder started from is in it; a
    codec whose deficit is small (Bit-Swap) starts bare and pays only for the bits it borrowed."""
    if words_per_lane == 0:
        bare = cs.base_message(head_shape)
        head = np.full(bare.head.shape, BARE_HEAD, dtype=np.uint64)
        head.flags.writeable = False
        return cs.Message(head, bare.tail)
    header = len(cs.flatten(cs.base_message(head_shape)))  # head words plus bookkeeping
    return cs.random_message(header + int(words_per_lane) * int(np.prod(head_shape)), head_shape, seed=seed)


def on_lanes(codec: cs.Codec, batch: int, full_batch: int) -> cs.Codec:
    """Run a codec on the first `batch` images' lanes of a message sized for `full_batch`."""
    if batch == full_batch:
        return codec
    return cs.substack(codec, lambda head: head[:batch])


class BitsBackCodec:
    """BB-ANS over all steps of a diffusion model (`codec=bbans`)."""

    name = "bbans"
    default_precisions = Precisions()
    shares_lanes = False  # one image per lane group: a batch needs a head of batch_size images' lanes

    def __init__(self, latent_model: DiffusionLatentModel, precisions: Precisions, track: bool = False,
                 backend: str = "numba"):
        from .compiled_codecs import check_backend

        self.backend = check_backend(backend)  # "numba": compiled_codecs; "numpy": the reference below
        self.lm = latent_model
        self.prec = precisions
        self.trace: Optional[StepTrace] = StepTrace() if track else None

    # --- the discretization shared by encoder and decoder ------------------------------------
    def _latent_value(self, prior: Gaussian, idx: np.ndarray) -> np.ndarray:
        return cs.gaussian_bin_centres(prior[0], prior[1], idx, self.prec.prior_prec)

    def _posterior_codec(self, posterior: Gaussian, prior: Gaussian) -> cs.Codec:
        return cs.DiagGaussian_GaussianBins(
            posterior[0], posterior[1], prior[0], prior[1], self.prec.latent_prec, self.prec.prior_prec
        )

    def _likelihood_codec(self, likelihood: Gaussian) -> cs.Codec:
        return cs.DiscretizedGaussian(likelihood[0], likelihood[1], self.lm.num_levels, self.prec.obs_prec)

    @staticmethod
    def _std_prior(shape) -> Gaussian:
        return np.zeros(shape), np.ones(shape)

    def initial_words_per_lane(self) -> int:
        """Tail words per lane that cover the worst case of one batch's posterior pops
        (at most latent_prec bits per latent dimension per step)."""
        return -(-self.lm.num_steps * self.prec.latent_prec // 32) + 1

    # --- encode ---------------------------------------------------------------------------------
    def encode(self, message: cs.Message, x_levels: np.ndarray) -> cs.Message:
        """Push a batch of images (integer levels, shape (b, C, H, W)) onto the message."""
        b, full = x_levels.shape[0], message.head.shape[0]
        if message.head.shape[1:] != x_levels.shape[1:] or b > full:
            raise ValueError(f"batch of shape {x_levels.shape} does not fit a message head of shape {message.head.shape}")
        if self.backend == "numba":
            from .compiled_codecs import bbans_encode

            return bbans_encode(self, message, x_levels)
        lanes = lambda codec: on_lanes(codec, b, full)  # noqa: E731
        x = self.lm.data_to_model(x_levels)
        uniform = lanes(cs.Uniform(self.prec.prior_prec))
        pop_bits, push_bits = [], []
        prior = self._std_prior(x_levels.shape)
        indices = []
        z_next = None
        for t in reversed(range(self.lm.num_steps)):
            posterior = self.lm.posterior_top(x) if z_next is None else self.lm.posterior(x, z_next, t + 1)
            before = message_bits(message) if self.trace else 0.0
            message, idx = lanes(self._posterior_codec(posterior, prior)).pop(message)
            if self.trace:
                pop_bits.append(before - message_bits(message))
            indices.append(idx)
            z_next = self.lm.latent_to_model(self._latent_value(prior, idx))
            prior = self.lm.reverse(z_next, t)  # p(z_{t-1} | z_t), or the likelihood when t = 0
        before = message_bits(message) if self.trace else 0.0
        message, = lanes(self._likelihood_codec(prior)).push(message, x_levels)
        if self.trace:
            self.trace.data_bits.append(message_bits(message) - before)
        for idx in reversed(indices):  # z_0 first, so z_{N-1} ends on top for the decoder
            before = message_bits(message) if self.trace else 0.0
            message, = uniform.push(message, idx)
            if self.trace:
                push_bits.append(message_bits(message) - before)
        if self.trace:
            self.trace.pop_bits.append(np.asarray(pop_bits[::-1]))  # index = step t
            self.trace.push_bits.append(np.asarray(push_bits))
        return message

    # --- decode ---------------------------------------------------------------------------------
    def decode(self, message: cs.Message, batch: int) -> Tuple[cs.Message, np.ndarray]:
        """Pop the most recently pushed batch of `batch` images; returns their integer levels."""
        full = message.head.shape[0]
        if batch > full:
            raise ValueError(f"cannot decode {batch} images from a message with {full} image lanes")
        if self.backend == "numba":
            from .compiled_codecs import bbans_decode

            return bbans_decode(self, message, int(batch))
        lanes = lambda codec: on_lanes(codec, batch, full)  # noqa: E731
        shape = (batch,) + tuple(message.head.shape[1:])
        uniform = lanes(cs.Uniform(self.prec.prior_prec))
        prior = self._std_prior(shape)
        priors, indices, latents = [], [], []
        for t in reversed(range(self.lm.num_steps)):
            message, idx = uniform.pop(message)
            priors.append(prior)
            indices.append(idx)
            z = self.lm.latent_to_model(self._latent_value(prior, idx))
            latents.append(z)
            prior = self.lm.reverse(z, t)
        message, x_levels = lanes(self._likelihood_codec(prior)).pop(message)
        x = self.lm.data_to_model(x_levels)
        # Give the posterior bits back, z_0 first (the encoder popped z_0 last).
        for k in reversed(range(self.lm.num_steps)):  # k indexes top-down lists; t = N-1-k
            t = self.lm.num_steps - 1 - k
            posterior = self.lm.posterior_top(x) if k == 0 else self.lm.posterior(x, latents[k - 1], t + 1)
            message, = lanes(self._posterior_codec(posterior, priors[k])).push(message, indices[k])
        return message, x_levels.astype(np.int64)


CODECS: Dict[str, type] = {"bbans": BitsBackCodec}
# Codecs defined in modules that import this one (bitswap.py needs Precisions, StepTrace, …), so they
# cannot be imported here at load time; `codec_class` imports and registers them on first use.
_LAZY_CODECS: Dict[str, Tuple[str, str]] = {"bitswap": (".bitswap", "BitSwapCodec")}


def codec_names() -> List[str]:
    """Every codec name `codec=<name>` accepts."""
    return sorted(set(CODECS) | set(_LAZY_CODECS))


def codec_class(name: str) -> type:
    """The codec class registered as `name`; raises ValueError listing the choices otherwise."""
    if name not in CODECS and name in _LAZY_CODECS:
        module, attr = _LAZY_CODECS[name]
        CODECS[name] = getattr(importlib.import_module(module, __package__), attr)
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(codec_names())} (codec=<name>)")
    return CODECS[name]


def build_codec(name: str, latent_model: DiffusionLatentModel, precisions: Precisions, track: bool = False,
                backend: str = "numba"):
    """The codec `name`; `backend` (codec.backend) picks the compiled path ("numba") or the NumPy
    reference ("numpy"): the same messages either way."""
    return codec_class(name)(latent_model, precisions, track=track, backend=backend)
