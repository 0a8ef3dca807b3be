"""The compiled codec (`codec.backend=numba`, the default): every step's coding of a batch as a
constant number of compiled passes over the ANS lanes, for Bit-Swap and BB-ANS.

Per diffusion step and whatever the batch size and number of lane groups, Bit-Swap encode is
two compiled calls (pop z_t from q for every lane group; push z_{t-1} with p, or x with the data
likelihood at t = 0, for every group) plus one for the top prior at the end; decode mirrors it.
BB-ANS is one call per pop or push of a whole batch. Inside a call the lane groups are coded in
order; within a group the per-lane work (CDF values, guesses, symbol searches) runs in parallel
over lanes (numba prange), and each CDF value is computed once, on the branch that is taken.

Design, and why:

* Same message format as the NumPy path (`codec.backend=numpy`), bit for bit: one shared tail,
  words moved in lane order. Per-lane word stacks (what GPU rANS coders use) would remove the
  ordering between lanes, but a file would then need per-lane lengths and a new layout, and
  each lane's partly filled last word would cost overhead; on the CPU the ordered part, one
  sequential scan per codec level that copies the overflowing lanes' words, is a short integer
  loop next to the CDF work of the parallel passes, and on a GPU it is a block-wide prefix sum
  (craystack.compiled.cuda_message), so it is kept. The NumPy path stays the
  reference: tests check equal symbols, equal messages and equal traces on hostile inputs,
  empty tails (borrowing and giving back) and any lane groups.
* Speed: the special functions set the floor for both paths (12-14 ndtr/ndtri calls per lane
  per Bit-Swap step here, 23 on the NumPy path, which evaluates both branches of its np.where;
  `bench/special_cost.py` counts both); exactness forbids cheaper approximations of them.
  Helpers that take tables are inlined (a call that passes an array costs two atomic
  reference-count updates, which measured about half the time of a whole pass).
* Determinism: the compiled code performs the reference's float operations in the same order
  (IEEE +, -, *, /, floor, no fastmath, so no contraction into fused multiply-adds) and calls
  scipy's own ndtr/ndtri C functions (craystack.compiled.special), so the decoder computes the
  very same CDF values as the encoder and as the NumPy path. Lanes never share a float
  computation and the word scans are sequential, so results do not depend on the number of
  threads (numba.set_num_threads; tested with 1 and 2).
* State: a craystack Message is converted once per batch to buffers
  (craystack.compiled.CompiledMessage; the untouched bottom of the tail is not copied) and back
  at the end, so checkpoints, files and every caller keep working on Messages.
* Validation stays in Python before each phase (cheap whole-array checks; on failure the
  reference's own checks run on the offending group to raise its exact error), so bad model
  outputs are refused with the same messages as on the NumPy path.
* Devices: the drivers below take a coder, the arrays and kernels they run on: `HostCoder`
  (NumPy arrays, the threaded CPU kernels here) or `cuda_codecs.CudaCoder` (device arrays, CUDA
  kernels running the same per-lane functions: `bitswap_lanes`, `craystack.compiled.phases`).
  `coders.choose_coder` picks one per codec and device; a file records which.
* Memory: Bit-Swap's fine bin table (2**20 doubles) does not fit in cache; each lane prefetches
  the entries of the lane a few lanes ahead (`bitswap_lanes._prefetch_bin`, a prefetch
  instruction that does not stall, unlike an early read) so that they arrive during CDF work.
  Per group a pop is two parallel passes (coarse bin plus, where no refill is needed, the
  sub-bin's guess; then the sub-bin) with a word scan after each; a push is one.
* One lane's work is an inline function (`bitswap_lanes`, `phases.*_lane`) that both the CPU and
  the CUDA kernels loop over, so the two builds cannot drift apart.
* Threads: a Bit-Swap step starts about three parallel regions per lane group (48 at batch 16).
  numba's workqueue layer costs ~110 us per region whatever the thread count, which cancelled
  the second thread; libgomp costs a few us while its workers still spin from the previous
  region. craystack.compiled.kernels therefore prefers OpenMP with a bounded spin
  (GOMP_SPINCOUNT, kernels.CODEC_SPIN_COUNT): the unbounded default spin stalled torch's own
  threads after each codec call. Small groups (< kernels.PARALLEL_MIN_LANES lanes) always run
  single-threaded. Fork-join needs free cores: on cores busy with other work a second thread
  can be slower than one.
* Compilation: numba caches the compiled functions on disk (`cache=True`, next to the sources);
  the first run in a fresh checkout compiles them once (measured on this 2-core machine: about
  40 s of CPU time for all kernels in both builds), later processes load them from the cache.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from numba import prange

import craystack as cs
from craystack import _checks
from craystack.compiled import (KIND_DISCRETIZED, KIND_GAUSSIAN_BINS, STATUS_BAD_CDF, STATUS_NOT_INCREASING,
                                CompiledMessage, pop_flagged, push_flagged)
from craystack.compiled.kernels import compiled, lane_kernel
from craystack.compiled.phases import (first_status, quantized_pop_groups, quantized_push_groups,
                                       uniform_pop_groups, uniform_push_groups)

from .bbans_tape import IndexTape, PriorTape
from .bitswap_lanes import (STATUS_ZERO_Q, p_pop_coarse_lane, p_pop_fine_lane, p_push_lane, q_pop_coarse_lane,
                            q_pop_fine_lane, q_push_lane)

__all__ = ["BACKENDS", "check_backend", "bitswap_encode", "bitswap_decode", "bbans_encode", "bbans_decode"]

BACKENDS = ("numba", "numpy")


def check_backend(backend: str) -> str:
    """The codec backend name, or a ValueError naming the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown codec backend {backend!r}; choose one of {', '.join(BACKENDS)} "
                         f"(codec.backend=<name>)")
    return backend


@compiled
def _first_error(stat, count, off):
    """Like `first_status`, but a sub-bin error (> 8) first: the reference pushes every lane's
    sub-bin before any coarse bin."""
    for lane in range(count):
        if stat[lane] > 8:
            return stat[lane], off + lane
    return first_status(stat, count, off)



class _Scratch:
    """Per-lane buffers of the phases (one group's worth)."""

    def __init__(self, width: int):
        self.words = np.zeros(width, dtype=np.uint64)
        self.words2 = np.zeros(width, dtype=np.uint64)
        self.flags = np.zeros(width, dtype=np.bool_)
        self.flags2 = np.zeros(width, dtype=np.bool_)
        self.stat = np.zeros(width, dtype=np.int64)
        self.coarse = np.zeros(width, dtype=np.int64)
        self.guess = np.zeros(width, dtype=np.int64)
        self.ref = np.zeros(width, dtype=np.float64)
        self.mass = np.zeros(width, dtype=np.float64)
        self.upper = np.zeros(width, dtype=np.bool_)
        self.flat = np.zeros(width, dtype=np.bool_)


# The array arguments every Bit-Swap lane kernel only reads (passed read-only: kernels.LaneKernel).
_BITSWAP_READS = ("offsets", "lanes", "mu", "sd", "edges_c", "edges_f", "bounds")


@lane_kernel(reads=_BITSWAP_READS)
def _q_pop(head, buf, meta, offsets, lanes, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, keyed, salt_c,
           salt_f, out, flags, coarse, guess, s_ref, s_mass, s_upper, s_flat):
    """Pop z_t from q(z_t | z_{t-1}) (bitswap.sampled_latent_codec) on every lane group: per
    group one pass for the coarse bin (and, where the lane needs no refill, the sub-bin's
    guess), the refill scan, one pass for the sub-bin, the refill scan."""
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in prange(count):
            q_pop_coarse_lane(lane, off + lane, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, keyed, salt_c,
                              salt_f, flags, coarse, guess, s_ref, s_mass, s_upper, s_flat)
        if pop_flagged(head, flags, count, buf, meta):
            return -1
        if fine_bits == 0:
            for lane in prange(count):
                out[off + lane] = coarse[lane]
            continue
        for lane in prange(count):
            q_pop_fine_lane(lane, off + lane, count, head, mu, sd, edges_f, prec, fine_bits, keyed, salt_f, out, flags,
                            coarse, guess, s_ref, s_mass, s_upper, s_flat)
        if pop_flagged(head, flags, count, buf, meta):
            return -1
    return 0


@lane_kernel(reads=_BITSWAP_READS + ("symbols",))
def _q_push(head, buf, meta, offsets, lanes, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, keyed, salt_c,
            salt_f, symbols, words, flags, words2, flags2, stat):
    """Push z_t back with q (decode): the sub-bin, then the coarse bin, on every lane group."""
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in prange(count):
            q_push_lane(lane, off + lane, count, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, keyed, salt_c,
                        salt_f, symbols, words, flags, words2, flags2, stat)
        status, where = first_status(stat, count, off)
        if status:
            return status, where
        push_flagged(words, flags, count, buf, meta)
        push_flagged(words2, flags2, count, buf, meta)
    return 0, -1


# --- Bit-Swap's p: floored two-level code (bitswap.model_latent_codec) -----------------------------------

@lane_kernel(reads=_BITSWAP_READS + ("symbols",))
def _p_push(head, buf, meta, offsets, lanes, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, symbols, words,
            flags, words2, flags2, stat):
    """Push z_{t-1} with p(z_{t-1} | z_t) on every lane group: the sub-bin (bitswap sub-bins),
    then the coarse bin (DiagGaussian_StdBins)."""
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in prange(count):
            p_push_lane(lane, off + lane, count, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, symbols,
                        words, flags, words2, flags2, stat)
        status, where = _first_error(stat, count, off)
        if status:
            return status, where
        push_flagged(words, flags, count, buf, meta)
        push_flagged(words2, flags2, count, buf, meta)
    return 0, -1


@lane_kernel(reads=_BITSWAP_READS)
def _p_pop(head, buf, meta, offsets, lanes, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, out, flags, coarse,
           stat, guess, s_ref, s_mass, s_upper, s_flat):
    """Pop z_{t-1} with p(z_{t-1} | z_t) on every lane group (decode): coarse bin, then sub-bin,
    in two passes per group as in `_q_pop`."""
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in prange(count):
            p_pop_coarse_lane(lane, off + lane, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, flags, coarse,
                              stat, guess, s_ref, s_mass, s_upper, s_flat)
        status, where = first_status(stat, count, off)
        if status:
            return status, where
        if pop_flagged(head, flags, count, buf, meta):
            return -1, -1
        if fine_bits == 0:
            for lane in prange(count):
                out[off + lane] = coarse[lane]
            continue
        for lane in prange(count):
            p_pop_fine_lane(lane, off + lane, count, head, mu, sd, edges_f, prec, fine_bits, out, flags, coarse, stat,
                            guess, s_ref, s_mass, s_upper, s_flat)
        status, where = first_status(stat, count, off)
        if status:
            return status, where
        if pop_flagged(head, flags, count, buf, meta):
            return -1, -1
    return 0, -1


# --- drivers -------------------------------------------------------------------------------------------------

class _Groups:
    """Lane groups as the compiled phases take them (bitswap.lane_groups: groups of `head_images`
    images, each on the head's first lanes), in coding order, with per-lane scratch buffers."""

    def __init__(self, batch: int, head_images: int, dims: int, reverse: bool = False):
        starts = list(range(0, batch, head_images))
        if reverse:
            starts.reverse()
        self.offsets = np.array([s * dims for s in starts], dtype=np.int64)
        self.lanes = np.array([min(head_images, batch - s) * dims for s in starts], dtype=np.int64)
        self.count = batch * dims
        self.scratch = _Scratch(head_images * dims)
        self.image_slices = [slice(s, s + min(head_images, batch - s)) for s in starts]


def _flat(a, shape) -> np.ndarray:
    return np.ascontiguousarray(np.broadcast_to(np.asarray(a, dtype=np.float64), shape)).reshape(-1)


def _check_gaussian(mean: np.ndarray, std: np.ndarray, groups: _Groups, shape, who: str) -> None:
    """Refuse non-finite means and non-finite or nonpositive stds with the reference's error
    (its own check, on the first offending group in coding order)."""
    if np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all():
        return
    m, s = mean.reshape(shape), std.reshape(shape)
    for sl in groups.image_slices:
        _checks.float_param(m[sl], "mean", who)
        _checks.float_param(s[sl], "stdd", who, positive=True)


def _raise_status(status: int, who: str) -> None:
    if status == 0:
        return
    if status < 0:
        raise RuntimeError(f"{who}: internal error in the compiled codec (the tail buffer ran short)")
    if status == STATUS_ZERO_Q:
        raise ValueError("bitswap: a latent has zero probability under q(z_t | z_(t-1)); the message does not come "
                         "from this encoder, model or file")
    if status > 8:
        who, status = "bitswap sub-bins", status - 8
    if status == STATUS_BAD_CDF:
        raise ValueError(f"{who}: internal error, CDF outside [0, 1] or nan")
    if status == STATUS_NOT_INCREASING:
        raise ValueError(f"{who}: quantized CDF is not increasing (bad cdf function)")
    raise RuntimeError(f"{who}: internal error in the compiled codec (status {status})")


def _salt(salt: int) -> np.uint64:
    """The additive constant of bitswap._hash32 for slot_key(salt)."""
    return np.uint64(((salt + 104729) * 0xD1B54A32D192ED03 + 1) % 2 ** 64)


class _BitSwapTables:
    def __init__(self, codec):
        from .bitswap import COARSE_PREC
        bin_prec = codec.prec.prior_prec
        self.fine_bits = max(0, bin_prec - COARSE_PREC)
        self.edges_c = np.ascontiguousarray(cs.std_gaussian_buckets(bin_prec - self.fine_bits))
        self.edges_f = np.ascontiguousarray(cs.std_gaussian_buckets(bin_prec))
        self.bounds = np.ascontiguousarray(self.edges_f[::1 << self.fine_bits])  # edges of the coarse bins
        self.prec = codec.prec.latent_prec


def _keys(codec, t: int):
    keyed = bool(codec.keyed_slots)
    return keyed, _salt(2 * t) if keyed else np.uint64(0), _salt(2 * t + 1) if keyed else np.uint64(0)


class HostCoder:
    """Where the Bit-Swap drivers below keep their arrays and which kernels they call: NumPy
    arrays and the threaded CPU kernels (`cuda_codecs.CudaCoder` is the device twin, with the
    same methods on device arrays). Model outputs come to the host as float64 (latent_model)."""

    name = "host"
    q_pop, q_push, p_push, p_pop = (staticmethod(k) for k in (_q_pop, _q_push, _p_push, _p_pop))
    quantized_push, quantized_pop = staticmethod(quantized_push_groups), staticmethod(quantized_pop_groups)
    uniform_push, uniform_pop = staticmethod(uniform_push_groups), staticmethod(uniform_pop_groups)

    def state(self, message: cs.Message) -> CompiledMessage:
        return CompiledMessage(message)

    def buffers(self, state):
        return state.head, state.buf, state.meta

    def groups(self, batch: int, head_images: int, dims: int, reverse: bool = False) -> _Groups:
        return _Groups(batch, head_images, dims, reverse)

    def tables(self, codec) -> _BitSwapTables:
        return _BitSwapTables(codec)

    def symbols(self, count: int) -> np.ndarray:
        return np.empty(count, dtype=np.int64)

    def levels(self, x_levels: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x_levels, dtype=np.int64).reshape(-1)

    def to_host(self, a) -> np.ndarray:
        return a

    def upload(self, a: np.ndarray) -> np.ndarray:
        """A host array as the kernels take it (here: contiguous, in place when it already is)."""
        return np.ascontiguousarray(a)

    def latent(self, codec, idx, shape):
        return codec._value(idx.reshape(shape))

    def data_value(self, codec, x_levels):
        return codec._data_value(x_levels)

    def q_params(self, codec, z_prev, t: int):
        mean = (codec._keep[t] * z_prev).reshape(-1)
        return mean, np.full(mean.size, codec._noise[t])

    def reverse(self, lm, z, t: int):
        return lm.reverse(lm.latent_to_model(z), t)

    def gaussian(self, reverse, groups: _Groups, shape, who: str):
        mean, std = _flat(reverse[0], shape), _flat(reverse[1], shape)
        _check_gaussian(mean, std, groups, shape, who)
        return mean, std

    def discretized(self, reverse, groups: _Groups, shape, lm):
        """Checked per-lane parameters of the data likelihood (craystack.DiscretizedGaussian with
        levels from lo = -1 to hi = 1, as both codecs build it) and its number of levels."""
        mean, std = self.gaussian(reverse, groups, shape, "DiscretizedGaussian")
        k = lm.num_levels
        lo, hi = -1.0, 1.0
        return mean, std, np.full(mean.size, lo), np.full(mean.size, (hi - lo) / (k - 1)), k


    # --- BB-ANS's model values (on the host here, on the device for CudaCoder) ----------------------

    def std_prior(self, codec, shape):
        return codec._std_prior(shape)

    def posterior(self, lm, x, z_next, t: int):
        """q(z_t | x) at the top (z_next None), else q(z_t | z_{t+1}, x)."""
        return lm.posterior_top(x) if z_next is None else lm.posterior(x, z_next, t + 1)

    def posterior_params(self, posterior, prior, groups: _Groups, shape):
        """Checked per-lane (mean, std, bin_mean, bin_std) of DiagGaussian_GaussianBins."""
        return _posterior_params(posterior, prior, groups, shape)

    def model_latent(self, codec, prior, idx):
        """The latent of bin indices idx under `prior`, as the model takes it."""
        return codec.lm.latent_to_model(codec._latent_value(prior, self.to_host(idx)))

    def reverse_raw(self, lm, z, t: int):
        return lm.reverse_raw(z, t)

    def raw_to_host(self, raw):
        return raw

    def prior_from_raw(self, lm, raw, t: int):
        return lm.gaussian_from_raw(raw, t)


HOST = HostCoder()


def bitswap_encode(codec, message: cs.Message, x_levels: np.ndarray, coder: HostCoder = HOST) -> cs.Message:
    """BitSwapCodec._encode on the compiled path (x_levels already checked), with `coder`'s
    arrays and kernels."""
    lm, tables = codec.lm, coder.tables(codec)
    shape = x_levels.shape
    dims = int(np.prod(shape[1:]))
    groups = coder.groups(shape[0], message.head.shape[0], dims)
    sc = groups.scratch
    state = coder.state(message)
    head, _, meta = coder.buffers(state)
    tracking = codec.trace is not None
    n = lm.num_steps
    pop_bits, push_bits = np.zeros(n), np.zeros(n)
    data_bits = 0.0
    levels = coder.levels(x_levels)
    z_prev = coder.data_value(codec, x_levels)
    idx_prev = None
    for t in range(n):
        before = state.bits() if tracking else 0.0
        mean, std = coder.q_params(codec, z_prev, t)
        idx = coder.symbols(groups.count)
        state.reserve(2 * groups.count, 0)
        keyed, salt_c, salt_f = _keys(codec, t)
        status = coder.q_pop(head, state_buf(coder, state), meta, groups.offsets, groups.lanes, mean, std,
                             tables.edges_c, tables.edges_f, tables.bounds, tables.prec, tables.fine_bits, keyed, salt_c,
                             salt_f, idx, sc.flags, sc.coarse, sc.guess, sc.ref, sc.mass, sc.upper, sc.flat)
        _raise_status(status, "bitswap q")
        state.check("bitswap")
        z = coder.latent(codec, idx, shape)
        reverse = coder.reverse(lm, z, t)
        middle = state.bits() if tracking else 0.0
        state.reserve(0, 2 * groups.count)
        if t == 0:
            mean, std, lo, step, k = coder.discretized(reverse, groups, shape, lm)
            status, _ = coder.quantized_push(head, state_buf(coder, state), meta, groups.offsets, groups.lanes,
                                             KIND_DISCRETIZED, tables.edges_c, mean, std, lo, step, k,
                                             codec.prec.obs_prec, levels, sc.words, sc.flags, sc.stat)
            _raise_status(status, "DiscretizedGaussian")
        else:
            mean, std = coder.gaussian(reverse, groups, shape, "DiagGaussian_StdBins")
            status, _ = coder.p_push(head, state_buf(coder, state), meta, groups.offsets, groups.lanes, mean, std,
                                     tables.edges_c, tables.edges_f, tables.bounds, tables.prec, tables.fine_bits,
                                     idx_prev, sc.words, sc.flags, sc.words2, sc.flags2, sc.stat)
            _raise_status(status, "DiagGaussian_StdBins")
        if tracking:
            pop_bits[t] = before - middle
            if t == 0:
                data_bits = state.bits() - middle
            else:
                push_bits[t - 1] = state.bits() - middle
        z_prev, idx_prev = z, idx
    before = state.bits() if tracking else 0.0
    state.reserve(0, groups.count)
    coder.uniform_push(head, state_buf(coder, state), meta, groups.offsets, groups.lanes, codec.prec.prior_prec,
                       idx_prev, sc.words, sc.flags)
    if tracking:
        push_bits[n - 1] = state.bits() - before
        codec.trace.pop_bits.append(pop_bits)
        codec.trace.push_bits.append(push_bits)
        codec.trace.data_bits.append(data_bits)
    return state.to_message()


def state_buf(coder: HostCoder, state):
    """The state's tail buffer now (`reserve` may have replaced it)."""
    return coder.buffers(state)[1]


def bitswap_decode(codec, message: cs.Message, batch: int, coder: HostCoder = HOST) -> Tuple[cs.Message, np.ndarray]:
    """BitSwapCodec._decode on the compiled path (batch already checked), with `coder`'s arrays
    and kernels."""
    lm, tables = codec.lm, coder.tables(codec)
    shape = (int(batch),) + tuple(message.head.shape[1:])
    dims = int(np.prod(shape[1:]))
    groups = coder.groups(shape[0], message.head.shape[0], dims, reverse=True)
    sc = groups.scratch
    state = coder.state(message)
    head, _, meta = coder.buffers(state)
    idx = coder.symbols(groups.count)
    state.reserve(groups.count, 0)
    if coder.uniform_pop(head, state_buf(coder, state), meta, groups.offsets, groups.lanes, codec.prec.prior_prec, idx,
                         sc.flags):
        _raise_status(-1, "Uniform")
    state.check("bitswap")
    x_levels = coder.symbols(groups.count)
    for t in reversed(range(lm.num_steps)):
        reverse = coder.reverse(lm, coder.latent(codec, idx, shape), t)
        state.reserve(2 * groups.count, 0)
        if t == 0:
            mean, std, lo, step, k = coder.discretized(reverse, groups, shape, lm)
            status, _ = coder.quantized_pop(head, state_buf(coder, state), meta, groups.offsets, groups.lanes,
                                            KIND_DISCRETIZED, tables.edges_c, mean, std, lo, step, k,
                                            codec.prec.obs_prec, 1, x_levels, sc.flags, sc.stat)
            _raise_status(status, "DiscretizedGaussian")
            idx_prev = None
            z_prev = coder.data_value(codec, x_levels.reshape(shape))
        else:
            mean, std = coder.gaussian(reverse, groups, shape, "DiagGaussian_StdBins")
            idx_prev = coder.symbols(groups.count)
            status, _ = coder.p_pop(head, state_buf(coder, state), meta, groups.offsets, groups.lanes, mean, std,
                                    tables.edges_c, tables.edges_f, tables.bounds, tables.prec, tables.fine_bits,
                                    idx_prev, sc.flags, sc.coarse, sc.stat, sc.guess, sc.ref, sc.mass,
                                    sc.upper, sc.flat)
            _raise_status(status, "DiagGaussian_StdBins")
            z_prev = coder.latent(codec, idx_prev, shape)
        state.check("bitswap")
        mean, std = coder.q_params(codec, z_prev, t)
        keyed, salt_c, salt_f = _keys(codec, t)
        state.reserve(0, 2 * groups.count)
        status, _ = coder.q_push(head, state_buf(coder, state), meta, groups.offsets, groups.lanes, mean, std,
                                 tables.edges_c, tables.edges_f, tables.bounds, tables.prec, tables.fine_bits, keyed,
                                 salt_c, salt_f, idx, sc.words, sc.flags, sc.words2, sc.flags2, sc.stat)
        _raise_status(status, "bitswap q")
        idx = idx_prev
    return state.to_message(), coder.to_host(x_levels).reshape(shape)


# --- BB-ANS (codec.BitsBackCodec) --------------------------------------------------------------------------

def _posterior_params(posterior, prior, groups, shape, who="DiagGaussian_GaussianBins"):
    mean, std = _flat(posterior[0], shape), _flat(posterior[1], shape)
    bin_mean, bin_std = _flat(prior[0], shape), _flat(prior[1], shape)
    ok = all(np.isfinite(a).all() for a in (mean, std, bin_mean, bin_std)) and (std > 0).all() and (bin_std > 0).all()
    if not ok:
        for sl in groups.image_slices:
            _checks.float_param(mean.reshape(shape)[sl], "mean", who)
            _checks.float_param(std.reshape(shape)[sl], "stdd", who, positive=True)
            _checks.float_param(bin_mean.reshape(shape)[sl], "bin_mean", who)
            _checks.float_param(bin_std.reshape(shape)[sl], "bin_stdd", who, positive=True)
    return mean, std, bin_mean, bin_std


def bbans_encode(codec, message: cs.Message, x_levels: np.ndarray, coder: HostCoder = HOST) -> cs.Message:
    """BitsBackCodec.encode on the compiled path (shapes already checked), with `coder`'s arrays
    and kernels (the indices wait for their pushes on the host, compactly: bbans_tape)."""
    lm, prec = codec.lm, codec.prec
    shape = x_levels.shape
    dims = int(np.prod(shape[1:]))
    groups = coder.groups(shape[0], shape[0], dims)
    sc = groups.scratch
    edges = coder.upload(cs.std_gaussian_buckets(prec.prior_prec))
    state = coder.state(message)
    head, _, meta = coder.buffers(state)
    tracking = codec.trace is not None
    x = lm.data_to_model(x_levels)
    pop_bits, push_bits = [], []
    prior = coder.std_prior(codec, shape)
    indices = IndexTape(prec.prior_prec, shape, lm.num_steps)
    z_next = None
    for t in reversed(range(lm.num_steps)):
        posterior = coder.posterior(lm, x, z_next, t)
        before = state.bits() if tracking else 0.0
        params = coder.posterior_params(posterior, prior, groups, shape)
        idx = coder.symbols(groups.count)
        state.reserve(groups.count, 0)
        status, _ = coder.quantized_pop(head, state_buf(coder, state), meta, groups.offsets, groups.lanes,
                                        KIND_GAUSSIAN_BINS, edges, *params, 1 << prec.prior_prec, prec.latent_prec, 1,
                                        idx, sc.flags, sc.stat)
        _raise_status(status, "DiagGaussian_GaussianBins")
        state.check("bbans")
        if tracking:
            pop_bits.append(before - state.bits())
        indices.record(coder.to_host(idx).reshape(shape))
        z_next = coder.model_latent(codec, prior, idx.reshape(shape))
        prior = coder.reverse(lm, z_next, t)
    before = state.bits() if tracking else 0.0
    mean, std, lo, step, k = coder.discretized(prior, groups, shape, lm)
    levels = _checks.symbols(x_levels, shape, k, "DiscretizedGaussian").reshape(-1)
    state.reserve(0, groups.count)
    status, _ = coder.quantized_push(head, state_buf(coder, state), meta, groups.offsets, groups.lanes,
                                     KIND_DISCRETIZED, edges, mean, std, lo, step, k, prec.obs_prec,
                                     coder.upload(levels), sc.words, sc.flags, sc.stat)
    _raise_status(status, "DiscretizedGaussian")
    if tracking:
        codec.trace.data_bits.append(state.bits() - before)
    for idx in indices.bottom_up():
        before = state.bits() if tracking else 0.0
        state.reserve(0, groups.count)
        coder.uniform_push(head, state_buf(coder, state), meta, groups.offsets, groups.lanes, prec.prior_prec,
                           coder.upload(idx.reshape(-1)), sc.words, sc.flags)
        if tracking:
            push_bits.append(state.bits() - before)
    if tracking:
        codec.trace.pop_bits.append(np.asarray(pop_bits[::-1]))
        codec.trace.push_bits.append(np.asarray(push_bits))
    return state.to_message()


def bbans_decode(codec, message: cs.Message, batch: int, coder: HostCoder = HOST) -> Tuple[cs.Message, np.ndarray]:
    """BitsBackCodec.decode on the compiled path (batch already checked), with `coder`'s arrays
    and kernels (the tape keeps each step's indices and raw prior on the host, compactly)."""
    lm, prec = codec.lm, codec.prec
    shape = (batch,) + tuple(message.head.shape[1:])
    dims = int(np.prod(shape[1:]))
    groups = coder.groups(batch, batch, dims)
    sc = groups.scratch
    edges = coder.upload(cs.std_gaussian_buckets(prec.prior_prec))
    state = coder.state(message)
    head, _, meta = coder.buffers(state)
    prior, raw = coder.std_prior(codec, shape), None
    tape = PriorTape(codec, shape, lm.num_steps, coder)  # what the posterior pushes need (see bbans_tape)
    for t in reversed(range(lm.num_steps)):
        idx = coder.symbols(groups.count)
        state.reserve(groups.count, 0)
        if coder.uniform_pop(head, state_buf(coder, state), meta, groups.offsets, groups.lanes, prec.prior_prec, idx,
                             sc.flags):
            _raise_status(-1, "Uniform")
        state.check("bbans")
        tape.record(coder.to_host(idx).reshape(shape), None if raw is None else coder.raw_to_host(raw))
        z = coder.model_latent(codec, prior, idx.reshape(shape))
        raw = coder.reverse_raw(lm, z, t)
        prior = coder.prior_from_raw(lm, raw, t)
    mean, std, lo, step, k = coder.discretized(prior, groups, shape, lm)
    x_levels = coder.symbols(groups.count)
    state.reserve(groups.count, 0)
    status, _ = coder.quantized_pop(head, state_buf(coder, state), meta, groups.offsets, groups.lanes,
                                    KIND_DISCRETIZED, edges, mean, std, lo, step, k, prec.obs_prec, 1, x_levels,
                                    sc.flags, sc.stat)
    _raise_status(status, "DiscretizedGaussian")
    state.check("bbans")
    x_levels = coder.to_host(x_levels).reshape(shape)
    x = lm.data_to_model(x_levels)
    for t, idx, prior, z_above in tape.bottom_up():
        posterior = coder.posterior(lm, x, z_above, t)
        params = coder.posterior_params(posterior, prior, groups, shape)
        symbols = _checks.symbols(idx, shape, 1 << prec.prior_prec, "DiagGaussian_GaussianBins")
        state.reserve(0, groups.count)
        status, _ = coder.quantized_push(head, state_buf(coder, state), meta, groups.offsets, groups.lanes,
                                         KIND_GAUSSIAN_BINS, edges, *params, 1 << prec.prior_prec, prec.latent_prec,
                                         coder.upload(symbols.reshape(-1)), sc.words, sc.flags, sc.stat)
        _raise_status(status, "DiagGaussian_GaussianBins")
    return state.to_message(), x_levels
