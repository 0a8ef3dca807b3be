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

Decode must keep every step's prior and bin index until x is known and the posteriors can be
pushed. It keeps them compactly (`bbans_tape.PriorTape`): the indices in the smallest integer
type (2 bytes at prior_prec 10) and the model's float32 mean and log-variance, recomputing the
float64 prior and the latent bit for bit when each posterior is pushed: 10 bytes per dimension
per step instead of 28 (that module has the measurements and the design not chosen).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

import craystack as cs

from .bbans_tape import IndexTape, PriorTape
from .coding import Precisions, StepTrace, message_bits, on_lanes
from .latent_model import DiffusionLatentModel, Gaussian


class BitsBackCodec:
    """BB-ANS over all steps of a diffusion model (`codec=bbans`)."""

    name = "bbans"
    default_precisions = Precisions()
    shares_lanes = False  # one image per lane group: a batch needs a head of batch_size images' lanes

    def __init__(self, latent_model: DiffusionLatentModel, precisions: Precisions, track: bool = False,
                 backend: str = "numba", coder: Optional[str] = None):
        from .coders import choose_coder, coder_impl
        from .compiled_codecs import check_backend

        self.backend = check_backend(backend)  # "numba": compiled_codecs; "numpy": the reference below
        self.coder = choose_coder(self.name, latent_model.device, self.backend, coder)  # host or cuda kernels
        self._coder = coder_impl(self.coder, latent_model.device)
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

            return bbans_encode(self, message, x_levels, self._coder)
        lanes = lambda codec: on_lanes(codec, b, full)  # noqa: E731
        x = self.lm.data_to_model(x_levels)
        uniform = lanes(cs.Uniform(self.prec.prior_prec))
        pop_bits, push_bits = [], []
        prior = self._std_prior(x_levels.shape)
        indices = IndexTape(self.prec.prior_prec, x_levels.shape, self.lm.num_steps)
        z_next = None
        for t in reversed(range(self.lm.num_steps)):
            posterior = self.lm.posterior_top(x) if z_next is None else self.lm.posterior(x, z_next, t + 1)
            before = message_bits(message) if self.trace else 0.0
            message, idx = lanes(self._posterior_codec(posterior, prior)).pop(message)
            if self.trace:
                pop_bits.append(before - message_bits(message))
            indices.record(idx)
            z_next = self.lm.latent_to_model(self._latent_value(prior, idx))
            prior = self.lm.reverse(z_next, t)  # p(z_{t-1} | z_t), or the likelihood when t = 0
        before = message_bits(message) if self.trace else 0.0
        message, = lanes(self._likelihood_codec(prior)).push(message, x_levels)
        if self.trace:
            self.trace.data_bits.append(message_bits(message) - before)
        for idx in indices.bottom_up():  # z_0 first, so z_{N-1} ends on top for the decoder
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

            return bbans_decode(self, message, int(batch), self._coder)
        lanes = lambda codec: on_lanes(codec, batch, full)  # noqa: E731
        shape = (batch,) + tuple(message.head.shape[1:])
        uniform = lanes(cs.Uniform(self.prec.prior_prec))
        prior, raw = self._std_prior(shape), None
        tape = PriorTape(self, shape, self.lm.num_steps)  # indices and raw priors, compact (see bbans_tape)
        for t in reversed(range(self.lm.num_steps)):
            message, idx = uniform.pop(message)
            tape.record(idx, raw)
            z = self.lm.latent_to_model(self._latent_value(prior, idx))
            raw = self.lm.reverse_raw(z, t)
            prior = self.lm.gaussian_from_raw(raw, t)
        message, x_levels = lanes(self._likelihood_codec(prior)).pop(message)
        x = self.lm.data_to_model(x_levels)
        # Give the posterior bits back, z_0 first (the encoder popped z_0 last).
        for t, idx, prior, z_above in tape.bottom_up():
            posterior = self.lm.posterior_top(x) if z_above is None else self.lm.posterior(x, z_above, t + 1)
            message, = lanes(self._posterior_codec(posterior, prior)).push(message, idx)
        return message, x_levels.astype(np.int64)
