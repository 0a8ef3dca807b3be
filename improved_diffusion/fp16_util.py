"""Helpers for mixed-precision training with float32 master weights and loss scaling.

The model's convolution weights are kept in float16 (`convert_module_to_f16`), while the
optimizer updates float32 "master" copies. Master parameters are either one flat vector (the
improved-diffusion layout, `flat=True`) or one float32 tensor per model parameter
(`flat=False`), which keeps optimizer state interchangeable with float32 runs. The other
functions accept both layouts.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def convert_module_to_f16(module: nn.Module) -> None:
    """Cast a convolution's weight and bias to float16 (other modules are left alone)."""
    if isinstance(module, _CONVS):
        module.weight.data = module.weight.data.half()
        if module.bias is not None:
            module.bias.data = module.bias.data.half()


def convert_module_to_f32(module: nn.Module) -> None:
    """Undo `convert_module_to_f16`."""
    if isinstance(module, _CONVS):
        module.weight.data = module.weight.data.float()
        if module.bias is not None:
            module.bias.data = module.bias.data.float()


def _is_per_tensor(model_params: Sequence[torch.Tensor], master_params: Sequence[torch.Tensor]) -> bool:
    return len(master_params) == len(model_params) and all(
        m.shape == p.shape for m, p in zip(master_params, model_params)
    )


def make_master_params(model_params: Sequence[torch.Tensor], flat: bool = True) -> list[nn.Parameter]:
    """Float32 trainable copies of `model_params`: one flat vector, or one per tensor."""
    model_params = list(model_params)
    if not model_params:
        raise ValueError("make_master_params got no parameters; pass model.parameters() of a non-empty model.")
    if flat:
        vec = torch.cat([p.detach().float().reshape(-1) for p in model_params])
        return [nn.Parameter(vec, requires_grad=True)]
    return [nn.Parameter(p.detach().float().clone(), requires_grad=True) for p in model_params]


def model_grads_to_master_grads(model_params: Sequence[torch.Tensor], master_params: Sequence[torch.Tensor]) -> None:
    """Copy the model's (float16) gradients into the master parameters' float32 gradients."""
    model_params, master_params = list(model_params), list(master_params)
    grads = [
        p.grad.detach().float() if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)
        for p in model_params
    ]
    if _is_per_tensor(model_params, master_params):
        for m, g in zip(master_params, grads):
            m.grad = g.clone()
    else:
        master_params[0].grad = torch.cat([g.reshape(-1) for g in grads])


def unflatten_master_params(model_params: Sequence[torch.Tensor], master_params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Master values shaped like the model's parameters (float32, detached)."""
    model_params, master_params = list(model_params), list(master_params)
    if _is_per_tensor(model_params, master_params):
        return [m.detach() for m in master_params]
    vec = master_params[0].detach()
    expected = sum(p.numel() for p in model_params)
    if vec.numel() != expected:
        raise ValueError(
            f"Flat master vector has {vec.numel()} values but the model has {expected}; "
            "the master parameters were made for a different model."
        )
    pieces = torch.split(vec, [p.numel() for p in model_params])
    return [piece.view(p.shape) for piece, p in zip(pieces, model_params)]


def master_params_to_model_params(model_params: Sequence[torch.Tensor], master_params: Sequence[torch.Tensor]) -> None:
    """Write the (updated) master values back into the model, in the model's dtype."""
    model_params = list(model_params)
    with torch.no_grad():
        for p, m in zip(model_params, unflatten_master_params(model_params, master_params)):
            p.copy_(m)


def zero_grad(model_params: Sequence[torch.Tensor]) -> None:
    """Zero existing gradients in place (the graph-free way the training loop needs)."""
    for p in model_params:
        if p.grad is not None:
            p.grad.detach_()
            p.grad.zero_()


def global_grad_norm(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all gradients together, as a float32 scalar tensor on their device.

    One fused reduction and no host sync: the caller reads it once (`float(...)`) per step. A
    non-finite gradient anywhere makes the result non-finite, which is the fp16 overflow test.
    Per-tensor norms are taken in float32, so large but finite float16 gradients do not overflow.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    try:
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
    except (TypeError, RuntimeError):  # torch versions whose _foreach_norm has no dtype argument
        norms = [torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads]
    return torch.linalg.vector_norm(torch.stack(norms))
