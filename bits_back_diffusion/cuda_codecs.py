"""The CUDA coder: the compiled path's drivers (`compiled_codecs`) with device arrays and CUDA
kernels. A step's model outputs, latents and lane states stay on the GPU (only the phase counters,
64 bytes, and a 16-byte status come back per phase); BB-ANS's tapes, which hold every step's bin
indices and raw priors until the data is coded, stay on the host (compact; one copy per step).

Design, and why:

* Same per-lane logic as the CPU: every pass calls the per-lane functions of `bitswap_lanes` and
  `craystack.compiled.phases`, compiled by numba-cuda for the GPU; the ordered word moves are the
  block scans of `craystack.compiled.cuda_message`. A phase is one launch of one thread block
  that walks the lane groups in order (the groups share the head's lanes, so they cannot run
  side by side); a Bit-Swap step is 2 launches (q pop, then p push or the likelihood), plus the
  top prior once per batch, whatever the batch size.
* Same message format: the shared tail with words in lane order, so everything that reads
  messages (checkpoints, `.bbd` files, rates) is unchanged.
* Determinism: integer ANS arithmetic is exact anywhere. The CDFs use CUDA's libdevice
  normcdf/normcdfinv (`craystack.compiled.cuda_special`), and the model's means and standard
  deviation come from torch on the device (`latent_model.*_on_device`), so encoder and
  decoder compute identical values on the same GPU model and software. They are not scipy's
  values, so a file records that this coder wrote it (`DeviceInfo.coder`) and a decoder refuses
  to undo it with anything else (`decode_device.check_coder`).
* Tables (Bit-Swap's bin edges and centres) are copied to the device once per codec; numba's
  kernels run on the model's GPU (`cuda.select_device`), on the default stream torch also uses.
* Compilation: numba-cuda compiles the kernels on first use and caches them on disk
  (`kernels.cuda_kernel`, per source version and threads per block).

Without a GPU: tests/cuda_sim runs these kernels in numba's CUDA simulator (with scipy's CDFs:
the same messages as the host coder), and `bench/cuda_ptx_check.py` compiles them to PTX with
numba-cuda and NVVM. The `gpu` tests and `bench/device_check.sh` run them on a device.
"""
from __future__ import annotations

import numpy as np
import torch
from numba import cuda

import craystack as cs
from craystack.compiled import cuda_phases
from craystack.compiled.cuda_message import (COMPILE_KEY, THREADS, DeviceMessage, block_first_error, block_push_flagged,
                                             sync_all, to_device_array)
from craystack.compiled.cuda_phases import group_failed, launch, refill_failed, report_error
from craystack.compiled.kernels import cuda_kernel

from .bitswap_lanes import (p_pop_coarse_lane, p_pop_fine_lane, p_push_lane, q_pop_coarse_lane, q_pop_fine_lane,
                            q_push_lane)
from .compiled_codecs import HostCoder, _BitSwapTables, _check_gaussian, _Groups, _posterior_params, _Scratch

__all__ = ["CudaCoder"]


@cuda_kernel(salt=COMPILE_KEY)
def _q_pop_kernel(head, buf, meta, offsets, lanes, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, keyed, salt_c,
                  salt_f, out, flags, coarse, guess, s_ref, s_mass, s_upper, s_flat, sums, result):
    shared = cuda.shared.array(THREADS, np.int64)
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
            q_pop_coarse_lane(lane, off + lane, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, keyed, salt_c,
                              salt_f, flags, coarse, guess, s_ref, s_mass, s_upper, s_flat)
        sync_all()
        if refill_failed(head, flags, count, buf, meta, shared, sums, result):
            return
        for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
            if fine_bits == 0:
                out[off + lane] = coarse[lane]
            else:
                q_pop_fine_lane(lane, off + lane, count, head, mu, sd, edges_f, prec, fine_bits, keyed, salt_f, out,
                                flags, coarse, guess, s_ref, s_mass, s_upper, s_flat)
        sync_all()
        if fine_bits and refill_failed(head, flags, count, buf, meta, shared, sums, result):
            return


@cuda_kernel(salt=COMPILE_KEY)
def _q_push_kernel(head, buf, meta, offsets, lanes, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, keyed, salt_c,
                   salt_f, symbols, words, flags, words2, flags2, stat, sums, result):
    shared = cuda.shared.array(THREADS, np.int64)
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
            q_push_lane(lane, off + lane, count, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, keyed, salt_c,
                        salt_f, symbols, words, flags, words2, flags2, stat)
        sync_all()
        if group_failed(stat, count, off, shared, sums, result):
            return
        block_push_flagged(words, flags, count, buf, meta, shared, sums)
        block_push_flagged(words2, flags2, count, buf, meta, shared, sums)


@cuda_kernel(salt=COMPILE_KEY)
def _p_push_kernel(head, buf, meta, offsets, lanes, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, symbols, words,
                   flags, words2, flags2, stat, sums, result):
    shared = cuda.shared.array(THREADS, np.int64)
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
            p_push_lane(lane, off + lane, count, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, symbols,
                        words, flags, words2, flags2, stat)
        sync_all()
        first = block_first_error(stat, count, 8, shared, sums)  # a sub-bin error first, as the reference
        if first < count:
            report_error(stat, first, off, result)
            return
        if group_failed(stat, count, off, shared, sums, result):
            return
        block_push_flagged(words, flags, count, buf, meta, shared, sums)
        block_push_flagged(words2, flags2, count, buf, meta, shared, sums)


@cuda_kernel(salt=COMPILE_KEY)
def _p_pop_kernel(head, buf, meta, offsets, lanes, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, out, flags,
                  coarse, stat, guess, s_ref, s_mass, s_upper, s_flat, sums, result):
    shared = cuda.shared.array(THREADS, np.int64)
    for g in range(offsets.size):
        off = offsets[g]
        count = lanes[g]
        for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
            p_pop_coarse_lane(lane, off + lane, head, mu, sd, edges_c, edges_f, bounds, prec, fine_bits, flags, coarse,
                              stat, guess, s_ref, s_mass, s_upper, s_flat)
        sync_all()
        if group_failed(stat, count, off, shared, sums, result):
            return
        if refill_failed(head, flags, count, buf, meta, shared, sums, result):
            return
        for lane in range(cuda.grid(1), count, cuda.gridsize(1)):
            if fine_bits == 0:
                out[off + lane] = coarse[lane]
            else:
                p_pop_fine_lane(lane, off + lane, count, head, mu, sd, edges_f, prec, fine_bits, out, flags, coarse,
                                stat, guess, s_ref, s_mass, s_upper, s_flat)
        sync_all()
        if fine_bits:
            if group_failed(stat, count, off, shared, sums, result):
                return
            if refill_failed(head, flags, count, buf, meta, shared, sums, result):
                return


def _device_copy(obj, names):
    for name in names:
        setattr(obj, name, cuda.to_device(np.ascontiguousarray(getattr(obj, name))))
    return obj


class CudaCoder(HostCoder):
    """`HostCoder`'s arrays on the model's CUDA device and its kernels as CUDA launches."""

    name = "cuda"

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._tables = {}
        if self.device.type == "cuda":  # numba's kernels and arrays on the model's GPU, not GPU 0
            cuda.select_device(self.device.index if self.device.index is not None else torch.cuda.current_device())

    @staticmethod
    def q_pop(*args) -> int:
        return launch(_q_pop_kernel, *args)[0]

    @staticmethod
    def q_push(*args):
        return launch(_q_push_kernel, *args)

    @staticmethod
    def p_push(*args):
        return launch(_p_push_kernel, *args)

    @staticmethod
    def p_pop(*args):
        return launch(_p_pop_kernel, *args)

    quantized_push = staticmethod(cuda_phases.quantized_push_groups)
    quantized_pop = staticmethod(cuda_phases.quantized_pop_groups)
    uniform_push = staticmethod(cuda_phases.uniform_push_groups)
    uniform_pop = staticmethod(cuda_phases.uniform_pop_groups)

    def state(self, message) -> DeviceMessage:
        return DeviceMessage(message)

    def buffers(self, state):
        return state.d_head, state.d_buf, state.d_meta

    def groups(self, batch: int, head_images: int, dims: int, reverse: bool = False) -> _Groups:
        groups = _Groups(batch, head_images, dims, reverse)
        _device_copy(groups, ("offsets", "lanes"))
        _device_copy(groups.scratch, [k for k in vars(_Scratch(0))])
        return groups

    def tables(self, codec) -> _BitSwapTables:
        key = codec.prec.prior_prec, codec.prec.latent_prec
        if key not in self._tables:
            tables = _BitSwapTables(codec)
            self._tables[key] = (_device_copy(tables, ("edges_c", "edges_f", "bounds")),
                                 torch.tensor(np.array(codec._centres), dtype=torch.float64, device=self.device))
        return self._tables[key][0]

    def _arg(self, t: torch.Tensor):
        return to_device_array(t.contiguous())

    def symbols(self, count: int):
        return self._arg(torch.empty(count, dtype=torch.int64, device=self.device))

    def levels(self, x_levels: np.ndarray):
        return cuda.to_device(np.ascontiguousarray(x_levels, dtype=np.int64).reshape(-1))

    def upload(self, a: np.ndarray):
        return cuda.to_device(np.ascontiguousarray(a))

    def to_host(self, a) -> np.ndarray:
        return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)

    def _tensor(self, a) -> torch.Tensor:
        """A host array, or a kernel's array, as a tensor on the device (a kernel's array on a GPU
        without a copy)."""
        if isinstance(a, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)
        if self.device.type == "cuda":
            return torch.as_tensor(a, device=self.device)
        return torch.from_numpy(self.to_host(a))  # the simulator's device arrays live on the host

    def latent(self, codec, idx, shape) -> torch.Tensor:
        self.tables(codec)
        centres = self._tables[codec.prec.prior_prec, codec.prec.latent_prec][1]
        return centres[self._tensor(idx)].reshape(shape)

    def data_value(self, codec, x_levels) -> torch.Tensor:
        return self._tensor(x_levels).to(torch.float64) * (2.0 / (codec.lm.num_levels - 1)) - 1.0

    def q_params(self, codec, z_prev: torch.Tensor, t: int):
        mean = (float(codec._keep[t]) * z_prev).reshape(-1)
        return self._arg(mean), self._arg(torch.full_like(mean, float(codec._noise[t])))

    def reverse(self, lm, z: torch.Tensor, t: int):
        return lm.reverse_on_device(z.to(torch.float32), t)

    def gaussian(self, reverse, groups: _Groups, shape, who: str):
        mean = reverse[0].to(torch.float64).broadcast_to(shape).contiguous().reshape(-1)
        std = reverse[1].to(torch.float64).broadcast_to(shape).contiguous().reshape(-1)
        if not bool(torch.isfinite(mean).all() & torch.isfinite(std).all() & (std > 0).all()):
            _check_gaussian(mean.cpu().numpy(), std.cpu().numpy(), groups, shape, who)
        return self._arg(mean), self._arg(std)

    # --- BB-ANS's model values, on the device ------------------------------------------------------

    def std_prior(self, codec, shape):
        return (torch.zeros(shape, dtype=torch.float64, device=self.device),
                torch.ones(shape, dtype=torch.float64, device=self.device))

    def posterior(self, lm, x, z_next, t: int):
        return lm.posterior_top_on_device(x) if z_next is None else lm.posterior_on_device(x, z_next, t + 1)

    def posterior_params(self, posterior, prior, groups: _Groups, shape):
        flat = [a.to(torch.float64).broadcast_to(shape).contiguous().reshape(-1) for a in (*posterior, *prior)]
        mean, std, bin_mean, bin_std = flat
        ok = torch.stack([torch.isfinite(a).all() for a in flat] + [(std > 0).all(), (bin_std > 0).all()]).all()
        if not bool(ok):  # the reference's own checks, for its exact error
            _posterior_params(*[(a.cpu().numpy(), b.cpu().numpy()) for a, b in ((mean, std), (bin_mean, bin_std))],
                              groups, shape)
        return [self._arg(a) for a in flat]

    def model_latent(self, codec, prior, idx) -> torch.Tensor:
        key = ("bbans", codec.prec.prior_prec)
        if key not in self._tables:
            self._tables[key] = torch.tensor(np.array(cs.std_gaussian_centres(codec.prec.prior_prec)),
                                             dtype=torch.float64, device=self.device)
        centres = self._tables[key]
        return (prior[0] + prior[1] * centres[self._tensor(idx)]).to(torch.float32)

    def reverse_raw(self, lm, z, t: int):
        return lm.reverse_raw_on_device(z, t)

    def raw_to_host(self, raw):
        return tuple(np.ascontiguousarray(r.detach().cpu().numpy()) for r in raw)

    def prior_from_raw(self, lm, raw, t: int):
        return lm.gaussian_from_raw_on_device(tuple(self._tensor(r) for r in raw), t)

    def discretized(self, reverse, groups: _Groups, shape, lm):
        mean, std = self.gaussian(reverse, groups, shape, "DiscretizedGaussian")
        k = lm.num_levels
        count = int(np.prod(shape))
        lo = torch.full((count,), -1.0, dtype=torch.float64, device=self.device)
        step = torch.full((count,), 2.0 / (k - 1), dtype=torch.float64, device=self.device)
        return mean, std, self._arg(lo), self._arg(step), k
