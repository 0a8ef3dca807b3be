"""Compiled (numba) counterparts of craystack's message and Gaussian codecs, for callers that
fuse many codec operations into one compiled pass (bits_back_diffusion.compiled_codecs).

* `special`: scipy's own ndtr/ndtri, callable from compiled code (bit-identical to the ufuncs);
* `message`: `CompiledMessage` (a Message as buffers) and the renormalisation scans;
* `cdfs`: per-lane CDFs, guesses and craystack's quantized codec, one lane at a time;
* `phases`: one-level codecs (quantized, Uniform) over lane groups, one compiled call each;
* `kernels`: the threaded and single-threaded builds of a lane kernel.

craystack's NumPy modules stay the readable reference; everything here reproduces them bit for
bit (same symbols, same message words in the same order) and is tested against them.
"""
from .cdfs import (KIND_DISCRETIZED, KIND_GAUSSIAN_BINS, KIND_STD, KIND_SUB_BINS, STATUS_BAD_CDF,
                   STATUS_NOT_INCREASING, lane_cdf, lane_guess, quantized_cum, quantized_guess, quantized_interval,
                   quantized_pop,
                   std_cdf_raw, sub_bin_setup)
from .message import (HEAD_MIN, CompiledMessage, generator_word, mix32, pop_flagged, pop_state, push_flagged,
                      push_interval, push_renorm, push_state)
from .special import ndtr, ndtri

__all__ = [
    "CompiledMessage", "HEAD_MIN", "generator_word", "mix32", "pop_flagged", "push_flagged", "push_renorm",
    "push_interval", "push_state", "pop_state", "ndtr", "ndtri",
    "KIND_STD", "KIND_GAUSSIAN_BINS", "KIND_DISCRETIZED", "KIND_SUB_BINS", "STATUS_BAD_CDF",
    "STATUS_NOT_INCREASING", "lane_cdf", "lane_guess", "quantized_cum", "quantized_guess", "quantized_interval",
    "quantized_pop", "sub_bin_setup", "std_cdf_raw",
]
