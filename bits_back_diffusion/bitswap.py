"""Bit-Swap coding of images with a diffusion model (`codec=bitswap`).

Why not BB-ANS: the reference scheme (`codec.BitsBackCodec`) pops all N latents before it
pushes anything, so every ANS lane must start with about N x latent_prec bits of initial
(random) bits, which a real file has to contain. The forward process of a diffusion model is a
Markov chain, q(z_t | z_{t-1}) = N(sqrt(1 - b_t) z_{t-1}, b_t I) over the respaced betas b_t
(z_{-1} = x in model space, so q(z_0 | x) uses b_0), which allows the interleaving of Bit-Swap
(Kingma, Abbeel & Ho, ICML 2019):

    encode x: for t = 0 .. N-1: pop z_t with q(z_t | z_{t-1}), then push z_{t-1} with
              p(z_{t-1} | z_t) (for t = 0: push x with the discretized likelihood p(x | z_0));
              finally push z_{N-1} with N(0, I).
    decode:   pop z_{N-1} with N(0, I); for t = N-1 .. 0: pop z_{t-1} with p(. | z_t), push z_t
              back with q(z_t | z_{t-1}).

The message is never short of more than about one pop beyond what was already pushed, so the
borrowed (initial) bits stay near one step's worth whatever N is; the expected net cost is
still the negative ELBO. Both directions call the model once per step (`reverse(z_t, t)`).

Lanes. The message head may hold fewer images' lanes than a batch has images (encode.py: one,
`codec.lane_images`); the batch is then coded in groups that take the lanes in turn within each
step (`lane_groups`), still with one model call per step for the whole batch. A file pays per
lane for the heads and for the first image's borrowed bits, so one image's lanes cost 1/16 of a
batch of 16's; with batches that grow from one image (`batch_schedule`) nothing else is borrowed.

Discretization. z_t is coded by q(z_t | z_{t-1}) (known to the encoder only) and by
p(z_t | z_{t+1}) (known to the decoder only), so its bins may depend on neither: every latent
uses the same 2**bin_prec bins of equal mass under N(0, 1), and a latent's value is its bin
centre. The top prior N(0, I) is then exactly uniform over the bins.

Three details keep the net rate at the VLB (without them it measured 1-470% above it):

* q has no frequency floor (`_unfloored_codec`): q is only ever popped from before the decoder
  pushes the same symbol, so a bin of zero frequency is never needed. The model's code
  (`model_latent_codec`) must take any bin, so every bin gets a frequency >= 1 there.
* Both are coded in two levels, a coarse bin (COARSE_PREC = 8 bits) and a sub-bin inside it,
  each at latent_prec bits. One level of 2**20 bins at 28 bits leaves 2**8 counts per bin: the
  model's floor would then cost 2**(20 - 28) / ln 2 bits per push, and q's rounded CDF gives a
  count of 1 to tail bins of far smaller mass, each draw of which costs its log-ratio (measured:
  1% of the rate of the demo model). With two levels the floor costs 2 * 2**(-16) / ln 2.
* Keyed slots (`slot_key`): a pop reads the bits that the previous push just wrote, i.e. the
  quantile of z_{t-2} under the model; drawn from directly, z_t would be correlated with the
  chain and not distributed as q. q's slots are rotated by a hash of the ANS state's quotient,
  which permutes the code without changing any state's size.

Precisions. `Precisions.prior_prec` is the bin precision (in BB-ANS it also sets the number of
bins per latent), `latent_prec` the coding precision of the latent Gaussians, `obs_prec` that of
the data. Defaults `BITSWAP_PRECISIONS` = (20, 28, 24):

* A bin of N(0, 1) around z is sqrt(2 pi) exp(z^2 / 2) / 2**bin_prec wide. The narrowest Gaussian
  coded is q(z_0 | x) of the 4000-step cosine schedule, sigma = sqrt(b_0) = 3.14e-3, centred within
  |z| <= 1 + 3 sigma, where 20 bits give bins of <= 4.0e-6 (790 bins per sigma); coding with bins
  of width d instead of densities changes a step's cost by O((d / sigma)^2). `check_bin_precision`
  asks for `MIN_BINS_PER_SIGMA` = 32 bins per sigma at every step, at the 3-sigma edge of z_t: for
  vlb100 of 4000 steps that needs 16 bits, for all 4000 steps 19 (steps near t = 2843); 20 covers
  both. More bits would only add borrowed bits per lane and larger bin tables (2**bin_prec floats).
* latent_prec = 28 < 32: rANS with 32-bit renormalization loses precision as the coding precision
  approaches 32 bits (the sampled latents were measurably biased at 32).
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, List, Optional, Tuple

import numpy as np
from scipy.special import ndtr, ndtri

import craystack as cs

from . import compiled_codecs
from .coding import Precisions, StepTrace, message_bits, on_lanes
from .coders import choose_coder, coder_impl
from .compiled_codecs import check_backend
from .latent_model import DiffusionLatentModel, Gaussian

__all__ = [
    "BITSWAP_PRECISIONS",
    "COARSE_PREC",
    "MIN_BINS_PER_SIGMA",
    "BitSwapCodec",
    "bins_per_sigma",
    "check_bin_precision",
    "lane_groups",
    "model_latent_codec",
    "sampled_latent_codec",
    "peak_deficit_bits",
    "slot_key",
    "std_bin_width",
]

BITSWAP_PRECISIONS = Precisions(prior_prec=20, latent_prec=28, obs_prec=24)
MIN_BINS_PER_SIGMA = 32.0
COARSE_PREC = 8  # bits of the first level of the model's bin index (see model_latent_codec)
_U32 = np.uint64(32)
_LOW = np.uint64(0xFFFFFFFF)
_MAX_BIN_PREC = 24  # craystack's limit for equal-mass bin tables
_MIN_MASS = 1e-250  # below this a sub-bin distribution is taken as uniform
_CDF_EPS = 2.0 ** -40  # uniform admixture that absorbs last-bit non-monotonicity of ndtr


def _hash32(values: np.ndarray, salt: int) -> np.ndarray:
    """A 32-bit mix (splitmix64 finalizer) of uint64 values, as uint64 below 2**32."""
    with np.errstate(over="ignore"):
        z = values * np.uint64(0x9E3779B97F4A7C15) + np.uint64((salt * 0xD1B54A32D192ED03 + 1) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return z >> _U32


CdfFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (symbols, lanes) -> CDF in [0, 1]


def _std_bins_cdf(mean: np.ndarray, std: np.ndarray, bin_prec: int) -> Tuple[CdfFn, CdfFn, Tuple[int, ...]]:
    """CDF of N(mean, std) at the edges of the 2**bin_prec equal-mass bins of N(0, 1), and an
    approximate inverse (a guess of the bin holding quantile u), per lane."""
    edges = cs.std_gaussian_buckets(bin_prec)
    n = 1 << bin_prec
    shape = np.broadcast_shapes(np.shape(mean), np.shape(std))
    mu = np.broadcast_to(np.asarray(mean, dtype=np.float64), shape).reshape(-1)
    sd = np.broadcast_to(np.asarray(std, dtype=np.float64), shape).reshape(-1)

    def cdf(idx: np.ndarray, lanes: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            g = ndtr((edges[idx] - mu[lanes]) / sd[lanes])
        return (g + idx * _CDF_EPS) / (1.0 + n * _CDF_EPS)  # non-decreasing despite ndtr's last bit

    def guess(u: np.ndarray, lanes: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            return ndtr(mu[lanes] + sd[lanes] * ndtri(u)) * n

    return cdf, guess, shape


def _sub_bins_cdf(mean: np.ndarray, std: np.ndarray, coarse: np.ndarray, bin_prec: int,
                  fine_bits: int) -> Tuple[CdfFn, CdfFn, Tuple[int, ...]]:
    """CDF of N(mean, std) restricted to coarse bin `coarse`, at the edges of its 2**fine_bits
    sub-bins (the bins of precision bin_prec inside it), and an approximate inverse. The CDF is
    taken on the side of the bin away from the mean, where it keeps its relative accuracy; a
    bin with no representable mass is uniform."""
    edges = cs.std_gaussian_buckets(bin_prec)
    n = 1 << fine_bits
    shape = np.broadcast_shapes(np.shape(mean), np.shape(std), np.shape(coarse))
    mu, sd, c = (np.broadcast_to(a, shape).reshape(-1) for a in (
        np.asarray(mean, dtype=np.float64), np.asarray(std, dtype=np.float64), np.asarray(coarse, dtype=np.int64)))
    base = c << fine_bits
    with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
        lo = (edges[base] - mu) / sd
        hi = (edges[base + n] - mu) / sd
        upper = lo > 0
        ref = np.where(upper, ndtr(-lo), ndtr(lo))
        mass = np.where(upper, ref - ndtr(-hi), ndtr(hi) - ref)
    flat = ~(mass > _MIN_MASS)
    mass = np.where(flat, 1.0, mass)

    def cdf(idx: np.ndarray, lanes: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore", under="ignore", invalid="ignore"):
            z = (edges[base[lanes] + idx] - mu[lanes]) / sd[lanes]
            g = np.where(upper[lanes], (ref[lanes] - ndtr(-z)) / mass[lanes], (ndtr(z) - ref[lanes]) / mass[lanes])
        g = np.clip(np.where(flat[lanes], idx / n, g), 0.0, 1.0)
        return (g + idx * _CDF_EPS) / (1.0 + n * _CDF_EPS)  # strictly increasing despite rounding

    def guess(u: np.ndarray, lanes: np.ndarray) -> np.ndarray:
        up, r, m = upper[lanes], ref[lanes], mass[lanes]
        with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
            target = np.where(up, r - u * m, r + u * m)
            z = np.where(up, -ndtri(target), ndtri(target))
            g = ndtr(mu[lanes] + sd[lanes] * z) * float(1 << bin_prec) - base[lanes]
        return np.where(flat[lanes], u * n, g)

    return cdf, guess, shape


def _sub_bin_codec(mean: np.ndarray, std: np.ndarray, coarse: np.ndarray, bin_prec: int, fine_bits: int,
                   coding_prec: int) -> cs.Codec:
    """The model's code for a sub-bin given its coarse bin: every sub-bin gets a frequency >= 1."""
    cdf, guess, shape = _sub_bins_cdf(mean, std, coarse, bin_prec, fine_bits)
    all_lanes = np.arange(int(np.prod(shape)))

    def lane_params(lanes_shape):
        if tuple(lanes_shape) != tuple(shape):
            raise ValueError(f"sub-bin codec built for lanes of shape {shape}, used on {tuple(lanes_shape)}")
        return (all_lanes,)

    return cs.quantized_cdf_codec("bitswap sub-bins", 1 << fine_bits, coding_prec, lane_params,
                                  lambda idx, p: cdf(idx, p[0]), lambda u, p: guess(u, p[0]))


def _search(cum: Callable[[np.ndarray, np.ndarray], np.ndarray], cf: np.ndarray, n: int) -> np.ndarray:
    """Per lane, the largest i in [0, n) with cum(i, lanes) <= cf (binary search)."""
    lanes = np.arange(cf.size)
    lo = np.zeros(cf.size, dtype=np.int64)
    size = n
    while size > 1:
        half = size >> 1
        mid = lo + half
        lo = np.where(cum(mid, lanes) <= cf, mid, lo)
        size -= half
    return lo


def _unfloored_codec(cdf: CdfFn, guess: CdfFn, n: int, shape: Tuple[int, ...], coding_prec: int,
                     key: Optional[cs.SlotKey] = None) -> cs.Codec:
    """A distribution over n symbols given by its CDF, each symbol's frequency its rounded-down
    cumulative mass, which may be 0.

    Only for q: the encoder pops from it before the decoder pushes the same symbol, so a symbol
    of zero frequency is never needed, and no symbol far in the tails is ever drawn (craystack's
    codecs give every symbol a frequency >= 1, i.e. n / 2**coding_prec of the mass to such
    symbols, and each such draw costs its log-ratio to the true mass)."""
    total = 1 << coding_prec

    def cum(idx: np.ndarray, lanes: np.ndarray) -> np.ndarray:
        c = np.floor(cdf(np.clip(idx, 0, n), lanes) * total).astype(np.uint64)
        c[idx <= 0] = 0
        c[idx >= n] = total
        return c

    def check_shape(message: cs.Message) -> None:
        if message.head.shape != shape:
            raise ValueError(f"latent codec built for lanes of shape {shape}, used on {message.head.shape}")

    def push(message: cs.Message, symbol: np.ndarray):
        check_shape(message)
        s = np.asarray(symbol, dtype=np.int64).reshape(-1)
        if s.size and (s.min() < 0 or s.max() >= n):
            raise ValueError(f"latent bin index out of range [0, {n})")
        lanes = np.arange(s.size)
        start, end = cum(s, lanes), cum(s + 1, lanes)
        if not np.all(end > start):
            raise ValueError(
                "bitswap: a latent has zero probability under q(z_t | z_(t-1)); the message does not come "
                "from this encoder, model or file"
            )
        return (cs.push_freqs(message, start.reshape(shape), (end - start).reshape(shape), coding_prec, key),)

    def pop(message: cs.Message):
        check_shape(message)
        cf = (cs.peek(message, coding_prec) if key is None else cs.peek_keyed(message, coding_prec, key)).reshape(-1)
        lanes = np.arange(cf.size)
        first = np.nan_to_num(np.floor(guess((cf + 0.5) / total, lanes)), nan=0.0)
        sym = np.clip(first, 0, n - 1).astype(np.int64)
        start, end = cum(sym, lanes), cum(sym + 1, lanes)
        miss = np.flatnonzero((cf < start) | (cf >= end))
        if miss.size:
            sub = lambda idx, where: cum(idx, miss[where])  # noqa: E731
            sym[miss] = _search(sub, cf[miss], n)
            start[miss], end[miss] = cum(sym[miss], miss), cum(sym[miss] + 1, miss)
        message = cs.pop_freqs(message, cf.reshape(shape), start.reshape(shape), (end - start).reshape(shape),
                               coding_prec)
        return message, sym.reshape(shape)

    return cs.Codec(push, pop)


def slot_key(salt: int) -> cs.SlotKey:
    """The rotation of q's slots at step `salt` (see `craystack.push_freqs`): a hash of each lane's
    quotient head >> latent_prec and of its position, which both sides know before the slot is
    read or written.

    Without it, a pop of z_t reads the low bits that the push of z_{t-2} just wrote, i.e. the
    quantile of z_{t-2} under the model, and draws latents correlated with the chain instead of
    from q (measured: 5.7x the VLB on the demo model). Rotating slots inside a quotient is a valid
    rANS code with the same state sizes, so unlike scrambling the head's bits it costs nothing.
    The position matters for the bare initial message, whose heads are all equal."""
    def key(quotients: np.ndarray) -> np.ndarray:
        position = np.arange(quotients.size, dtype=np.uint64) << np.uint64(37)  # quotients < 2**36
        return _hash32(quotients ^ position, salt + 104729)

    return key


def sampled_latent_codec(mean: np.ndarray, std: np.ndarray, bin_prec: int, coding_prec: int,
                         salt: Optional[int] = None, coarse_prec: int = COARSE_PREC) -> cs.Codec:
    """q(z_t | z_{t-1}) over the 2**bin_prec equal-mass bins of N(0, 1): a coarse bin, then a
    sub-bin inside it, both without a frequency floor (see `_unfloored_codec`).

    Two levels because one level of 2**20 bins at coding_prec = 28 leaves only 2**8 counts per
    bin: in q's tails, bins whose mass is far below 2**-28 get a count of 1 wherever the
    rounded CDF steps, and drawing them costs log2(1 / (mass * 2**28)) bits each (measured: 1%
    of the rate on the demo model). With `salt`, each level's slots are rotated by
    `slot_key` (see there)."""
    fine_bits = max(0, bin_prec - coarse_prec)
    coarse_bits = bin_prec - fine_bits
    coarse_cdf, coarse_guess, shape = _std_bins_cdf(mean, std, coarse_bits)
    coarse = _unfloored_codec(coarse_cdf, coarse_guess, 1 << coarse_bits, shape, coding_prec,
                              None if salt is None else slot_key(2 * salt))

    def fine(c: np.ndarray) -> cs.Codec:
        cdf, guess, _ = _sub_bins_cdf(mean, std, c, bin_prec, fine_bits)
        return _unfloored_codec(cdf, guess, 1 << fine_bits, shape, coding_prec,
                                None if salt is None else slot_key(2 * salt + 1))

    return _two_level(coarse, fine, coarse_bits, fine_bits)


def model_latent_codec(mean: np.ndarray, std: np.ndarray, bin_prec: int, coding_prec: int,
                       coarse_prec: int = COARSE_PREC) -> cs.Codec:
    """p(z_{t-1} | z_t) over the same bins, coded as a coarse bin (equal mass at coarse_prec) and
    a sub-bin inside it.

    The model's code must take any bin however improbable, so every symbol gets a frequency >= 1,
    which takes 2**(alphabet bits - coding_prec) of the mass from the probable ones and costs that
    much / ln 2 bits per push; two levels keep it at 2 * 2**(-16) / ln 2 ~ 4.4e-5 bits."""
    fine_bits = max(0, bin_prec - coarse_prec)
    coarse_bits = bin_prec - fine_bits
    coarse = cs.DiagGaussian_StdBins(mean, std, coding_prec, coarse_bits)

    def fine(c: np.ndarray) -> cs.Codec:
        return _sub_bin_codec(mean, std, c, bin_prec, fine_bits, coding_prec)

    return _two_level(coarse, fine, coarse_bits, fine_bits)


def _two_level(coarse: cs.Codec, fine: Callable[[np.ndarray], cs.Codec], coarse_bits: int,
               fine_bits: int) -> cs.Codec:
    """A bin index as its top coarse_bits (by `coarse`) and then, given those, its low fine_bits
    (by `fine(coarse index)`); pushed fine first so that pops read the coarse bin first."""
    mask = (1 << fine_bits) - 1

    def push(message: cs.Message, idx: np.ndarray):
        if fine_bits:
            idx = np.asarray(idx)
            if idx.dtype.kind not in "iu":
                raise ValueError(f"latent bin indices must be integers, got dtype {idx.dtype}")
            idx = idx.astype(np.int64)
            c = idx >> fine_bits
            message, = fine(np.clip(c, 0, (1 << coarse_bits) - 1)).push(message, idx & mask)
            idx = c
        return coarse.push(message, idx)

    def pop(message: cs.Message):
        message, c = coarse.pop(message)
        if not fine_bits:
            return message, c
        message, f = fine(c).pop(message)
        return message, (c << fine_bits) | f

    return cs.Codec(push, pop)


def peak_deficit_bits(pop_bits: np.ndarray, push_bits: np.ndarray, data_bits: float) -> float:
    """Most bits a Bit-Swap encode of one batch was behind its start (one `StepTrace` entry),
    i.e. the initial bits it needs, summed over lanes. Order: pop z_0, push x, then for t >= 1
    pop z_t, push z_{t-1}, and finally push z_{N-1}; the peak is right after a pop, with
    z_{t-1} and z_t both out."""
    level, low = 0.0, 0.0
    for t in range(len(pop_bits)):
        level -= pop_bits[t]
        low = min(low, level)
        level += data_bits if t == 0 else push_bits[t - 1]
    return -low


def std_bin_width(z: np.ndarray, bin_prec: int) -> np.ndarray:
    """Width of the equal-mass N(0, 1) bin around z: 1 / (2**bin_prec * phi(z))."""
    z = np.asarray(z, dtype=np.float64)
    return math.sqrt(2.0 * math.pi) * np.exp(0.5 * z * z) / float(2 ** int(bin_prec))


def bins_per_sigma(betas: np.ndarray, bin_prec: int) -> np.ndarray:
    """Per step t: std of q(z_t | z_{t-1}) over the bin width at the upper 3-sigma edge of z_t
    for data in [-1, 1] (where the bins coding that step are widest in practice)."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas_cumprod = np.cumprod(1.0 - betas)
    z_edge = np.sqrt(alphas_cumprod) + 3.0 * np.sqrt(1.0 - alphas_cumprod)
    return np.sqrt(betas) / std_bin_width(z_edge, bin_prec)


def check_bin_precision(betas: np.ndarray, bin_prec: int) -> None:
    """Refuse a bin precision too coarse for the process: the rate would drift from the VLB."""
    ratio = bins_per_sigma(betas, bin_prec)
    worst = int(np.argmin(ratio))
    if ratio[worst] >= MIN_BINS_PER_SIGMA:
        return
    needed = int(bin_prec) + int(math.ceil(math.log2(MIN_BINS_PER_SIGMA / ratio[worst])))
    fix = (
        f"set codec.prior_prec={needed} (or more, up to {_MAX_BIN_PREC})"
        if needed <= _MAX_BIN_PREC
        else f"this process needs {needed} bits, beyond craystack's limit of {_MAX_BIN_PREC}; use fewer, "
        "coarser steps (a respacing)"
    )
    raise ValueError(
        f"codec=bitswap: prior_prec={bin_prec} (the latent bin precision) resolves step {worst} "
        f"(sigma = {math.sqrt(float(np.asarray(betas)[worst])):.3g}) with only {ratio[worst]:.3g} bins per "
        f"sigma, fewer than {MIN_BINS_PER_SIGMA:g}; {fix}. Default for bitswap: prior_prec="
        f"{BITSWAP_PRECISIONS.prior_prec}, latent_prec={BITSWAP_PRECISIONS.latent_prec}"
    )


class BitSwapCodec:
    """Bit-Swap over the steps of a diffusion model; same interface as `BitsBackCodec`."""

    name = "bitswap"
    default_precisions = BITSWAP_PRECISIONS
    shares_lanes = True  # any batch fits any head: groups of head images coded in turn (`lane_groups`)

    def __init__(self, latent_model: DiffusionLatentModel, precisions: Precisions, track: bool = False,
                 keyed_slots: bool = True, backend: str = "numba", coder: Optional[str] = None):
        self.backend = check_backend(backend)  # "numba": compiled_codecs; "numpy": the reference below
        if not isinstance(precisions, Precisions):
            raise TypeError(f"precisions must be a coding.Precisions, got {type(precisions).__name__}")
        if precisions.prior_prec > _MAX_BIN_PREC:
            raise ValueError(
                f"codec=bitswap: prior_prec={precisions.prior_prec} (the latent bin precision) exceeds "
                f"craystack's limit of {_MAX_BIN_PREC}; set codec.prior_prec={BITSWAP_PRECISIONS.prior_prec}"
            )
        betas = np.asarray(latent_model.diffusion.betas, dtype=np.float64)
        check_bin_precision(betas, precisions.prior_prec)
        self.lm = latent_model
        self.prec = precisions
        self.coder = choose_coder(self.name, latent_model.device, self.backend, coder)  # host or cuda kernels
        self._coder = coder_impl(self.coder, latent_model.device)
        self.trace: Optional[StepTrace] = StepTrace() if track else None
        self._keep = np.sqrt(1.0 - betas)  # q(z_t | z_{t-1}) = N(keep_t z_{t-1}, noise_t^2)
        self._noise = np.sqrt(betas)
        self._centres = cs.std_gaussian_centres(precisions.prior_prec)
        self._top = cs.Uniform(precisions.prior_prec)  # N(0, I) over its own equal-mass bins
        self.keyed_slots = keyed_slots  # False only to measure what the keys are for

    # --- the discretization shared by encoder and decoder ------------------------------------
    def _value(self, idx: np.ndarray) -> np.ndarray:
        return self._centres[idx]

    def _data_value(self, x_levels: np.ndarray) -> np.ndarray:
        """Levels -> [-1, 1] in float64, so q(z_0 | x) is computed identically on both sides."""
        return np.asarray(x_levels, dtype=np.float64) * (2.0 / (self.lm.num_levels - 1)) - 1.0

    def _forward_codec(self, z_prev: np.ndarray, t: int) -> cs.Codec:
        """q(z_t | z_{t-1}) over the shared bins."""
        return sampled_latent_codec(self._keep[t] * z_prev, self._noise[t], self.prec.prior_prec,
                                    self.prec.latent_prec, salt=t if self.keyed_slots else None)

    def _reverse_codec(self, gaussian: Gaussian) -> cs.Codec:
        """p(z_{t-1} | z_t) over the shared bins."""
        return model_latent_codec(gaussian[0], gaussian[1], self.prec.prior_prec, self.prec.latent_prec)

    def _likelihood_codec(self, gaussian: Gaussian) -> cs.Codec:
        return cs.DiscretizedGaussian(gaussian[0], gaussian[1], self.lm.num_levels, self.prec.obs_prec)

    def initial_words_per_lane(self) -> int:
        """0: start from the bare message (see `coding.initial_message_for`). The deficit is one
        step's worth whatever the number of steps (while z_t is popped, z_{t-1} is still out, each
        about bin_prec bits; `peak_deficit_bits` measures it); the bare heads cover the first 8
        bits per lane and craystack's generator words the rest, of which a file stores only the
        count."""
        return 0

    # --- encode ---------------------------------------------------------------------------------
    def _check_batch(self, message: cs.Message, x_levels: np.ndarray) -> np.ndarray:
        x_levels = np.asarray(x_levels)
        head = message.head.shape
        if x_levels.ndim != 4 or x_levels.shape[1:] != head[1:] or x_levels.shape[0] < 1:
            raise ValueError(
                f"batch of shape {x_levels.shape} does not fit a message head of shape {head}: expected "
                f"(b, {', '.join(map(str, head[1:]))}) with b >= 1"
            )
        if x_levels.dtype.kind not in "iu":
            raise ValueError(f"images must be integer levels, got dtype {x_levels.dtype}")
        k = self.lm.num_levels
        if x_levels.size and (x_levels.min() < 0 or x_levels.max() >= k):
            raise ValueError(
                f"image levels must lie in [0, {k - 1}] (the model's num_levels={k}), found "
                f"[{x_levels.min()}, {x_levels.max()}]"
            )
        return x_levels.astype(np.int64)

    def encode(self, message: cs.Message, x_levels: np.ndarray) -> cs.Message:
        """Push a batch of images (integer levels, shape (b, C, H, W)) onto the message. A message
        whose head holds K < b images' lanes takes the batch in groups of K, one after another
        within each step (see `lane_groups`)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cs.EmptyTailWarning)  # borrowing is by design here
            return self._encode(message, x_levels)

    def _encode(self, message: cs.Message, x_levels: np.ndarray) -> cs.Message:
        x_levels = self._check_batch(message, x_levels)
        if self.backend == "numba":
            return compiled_codecs.bitswap_encode(self, message, x_levels, self._coder)
        groups = lane_groups(x_levels.shape[0], message.head.shape[0])
        tracking = self.trace is not None
        n = self.lm.num_steps
        pop_bits, push_bits = np.zeros(n), np.zeros(n)
        data_bits = 0.0
        z_prev = self._data_value(x_levels)
        idx_prev = None
        for t in range(n):
            before = message_bits(message) if tracking else 0.0
            idx = np.empty(x_levels.shape, dtype=np.int64)
            for sl, lanes in groups:
                message, idx[sl] = lanes(self._forward_codec(z_prev[sl], t)).pop(message)
            z = self._value(idx)
            reverse = self.lm.reverse(self.lm.latent_to_model(z), t)  # p(z_{t-1} | z_t), or p(x | z_0)
            middle = message_bits(message) if tracking else 0.0
            for sl, lanes in groups:
                part = _rows(reverse, sl, x_levels.shape)
                if t == 0:
                    message, = lanes(self._likelihood_codec(part)).push(message, x_levels[sl])
                else:
                    message, = lanes(self._reverse_codec(part)).push(message, idx_prev[sl])
            if tracking:
                pop_bits[t] = before - middle
                if t == 0:
                    data_bits = message_bits(message) - middle
                else:
                    push_bits[t - 1] = message_bits(message) - middle
            z_prev, idx_prev = z, idx
        before = message_bits(message) if tracking else 0.0
        for sl, lanes in groups:
            message, = lanes(self._top).push(message, idx_prev[sl])
        if tracking:
            push_bits[n - 1] = message_bits(message) - before
            self.trace.pop_bits.append(pop_bits)  # index t: bits taken popping z_t
            self.trace.push_bits.append(push_bits)  # index t: bits added pushing z_t
            self.trace.data_bits.append(data_bits)
        return message

    # --- decode ---------------------------------------------------------------------------------
    def decode(self, message: cs.Message, batch: int) -> Tuple[cs.Message, np.ndarray]:
        """Pop the most recently pushed batch of `batch` images; returns their integer levels."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", cs.EmptyTailWarning)
            return self._decode(message, batch)

    def _decode(self, message: cs.Message, batch: int) -> Tuple[cs.Message, np.ndarray]:
        if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
            raise ValueError(f"cannot decode a batch of {batch!r} images; need a positive int")
        if self.backend == "numba":
            return compiled_codecs.bitswap_decode(self, message, int(batch), self._coder)
        shape = (int(batch),) + tuple(message.head.shape[1:])
        groups = lane_groups(int(batch), message.head.shape[0])[::-1]  # the encoder's order, reversed
        idx = np.empty(shape, dtype=np.int64)
        for sl, lanes in groups:
            message, idx[sl] = lanes(self._top).pop(message)
        x_levels = np.empty(shape, dtype=np.int64)
        for t in reversed(range(self.lm.num_steps)):
            reverse = self.lm.reverse(self.lm.latent_to_model(self._value(idx)), t)
            idx_prev = None if t == 0 else np.empty(shape, dtype=np.int64)
            for sl, lanes in groups:
                part = _rows(reverse, sl, shape)
                if t == 0:
                    message, x_levels[sl] = lanes(self._likelihood_codec(part)).pop(message)
                else:
                    message, idx_prev[sl] = lanes(self._reverse_codec(part)).pop(message)
            z_prev = self._data_value(x_levels) if t == 0 else self._value(idx_prev)
            for sl, lanes in groups:
                message, = lanes(self._forward_codec(z_prev[sl], t)).push(message, idx[sl])
            idx = idx_prev
        return message, x_levels


def lane_groups(batch: int, head_images: int) -> List[Tuple[slice, Callable[[cs.Codec], cs.Codec]]]:
    """How a batch of `batch` images is laid on a message with lanes for `head_images` images:
    consecutive groups of head_images images (the last may be smaller), each coded on the first
    lanes of the whole head, in order within every step.

    Why share lanes: everything a file holds besides the information (the heads' 64 bits, the
    bits the first image borrows) is paid per lane, so a head of one image's lanes costs 1/16 of a
    head of 16 images' lanes; the images of a batch still share each model evaluation."""
    if head_images < 1:
        raise ValueError(f"a message head must hold at least one image's lanes, got {head_images}")
    out = []
    for start in range(0, batch, head_images):
        size = min(head_images, batch - start)
        out.append((slice(start, start + size),
                    lambda codec, size=size: on_lanes(codec, size, head_images)))
    return out


def _rows(gaussian: Gaussian, sl: slice, shape: Tuple[int, ...]) -> Gaussian:
    """The images `sl` of a batch's (mean, std), either of which may be broadcast."""
    return tuple(np.broadcast_to(np.asarray(a), shape)[sl] for a in gaussian)
