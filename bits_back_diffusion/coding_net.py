"""The network as the codecs call it: a small model called thousands of times at batch 1-16.

Why: coding the 297 demo digits calls the 8x8 UNet 17,600 times at batch 1-12. Each eager call
makes about 190 module calls and 330 op dispatches from Python, which cost as much as the
arithmetic at batch 1 (measured on the 2-core CPU: 3.7 ms per call eager, 2.2 ms traced, 1.7 ms
of it convolutions).

How: on the CPU our `UNetModel` is traced once with TorchScript (`torch.jit.trace`) and run with
graph optimizations off (`torch.jit.optimized_execution(False)`). A trace is the sequence of ATen
ops the eager forward dispatched, with the same arguments; run unoptimized, no pass fuses or
rewrites it, so its outputs are bit-identical to the eager model's at every batch size (the
kernel each op picks still depends on the live shapes, exactly as in eager), on the first call
as on every later one, in the encoder as in the decoder (tests/test_coding_net.py).

Limits, on purpose:
* Only `UNetModel` is traced: its forward has no data-dependent Python branches, which a trace
  would silently freeze. Any other module runs eagerly.
* On CUDA the eager model runs: untested there, and kernel launches, not Python, bound a GPU call.
* `torch.jit.trace` is deprecated in torch 2.x in favour of torch.compile / torch.export, which
  generate new kernels (other rounding, a compile per shape). If tracing is unavailable or fails,
  the eager model runs: the same outputs, only slower.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch

from improved_diffusion.unet import UNetModel

__all__ = ["CodingNet"]


class CodingNet:
    """`model(x, timesteps)` for coding calls, traced on first use where that is safe (see the
    module docstring); call it under `torch.no_grad()` or `torch.inference_mode()`."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model = model
        self.traceable = isinstance(model, UNetModel) and torch.device(device).type == "cpu"
        self._traced: Optional[Callable] = None

    @property
    def traced(self) -> bool:
        """Whether calls run the trace (False before the first call and where tracing is off)."""
        return self._traced is not None

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, **kwargs) -> torch.Tensor:
        if kwargs or not self.traceable or self.model.training:
            return self.model(x, timesteps, **kwargs)
        if self._traced is None:
            self._traced = self._trace(x, timesteps)
            if self._traced is None:
                self.traceable = False
                return self.model(x, timesteps)
        with torch.jit.optimized_execution(False):
            return self._traced(x, timesteps)

    def _trace(self, x: torch.Tensor, timesteps: torch.Tensor) -> Optional[Callable]:
        try:
            with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                # TracerWarnings name the model's shape checks and constants, which a model of
                # fixed architecture keeps; the deprecation is discussed in the module docstring.
                warnings.simplefilter("ignore")
                return torch.jit.trace(self.model, (x.clone(), timesteps.clone()), check_trace=False)
        except Exception as exc:  # an unsupported op or a torch without TorchScript: eager instead
            warnings.warn(f"coding with the eager model: tracing it failed ({type(exc).__name__}: {exc})")
            return None
