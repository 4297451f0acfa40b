"""Muon with the Newton-Schulz orthogonalisation in a chosen precision.

torch.optim.Muon (torch >= 2.9) always orthogonalises in bfloat16: fast on GPUs, but on CPUs
without bf16 matrix units each matmul falls back to a slow path (~20x float32 on this machine),
which made a Muon step ~30x an AdamW step. This subclass keeps torch's state, groups, momentum
and lr adjustment and only lets the orthogonalisation run in float32. Imported lazily by
`stage1_nn.optim` (the class needs torch.optim.Muon to exist).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.optim._muon import _adjust_lr

NS_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def newton_schulz(update: Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> Tensor:
    """The quintic Newton-Schulz iteration of torch.optim.Muon (≈ U V^T of `update` = U S V^T),
    computed in `dtype` and returned in `update`'s dtype.

    Parameters
    ----------
    update : 2-D momentum update.
    coefficients : (a, b, c) of the quintic.
    steps : number of iterations.
    eps : floor of the Frobenius norm the input is divided by.
    dtype : precision of the iteration (torch uses bfloat16).
    """
    a, b, c = coefficients
    x = update.to(dtype)
    tall = update.size(0) > update.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(update.dtype)


class Muon(torch.optim.Muon):
    """torch.optim.Muon whose orthogonalisation runs in `ns_dtype` ("auto": float32 for CPU
    tensors, bfloat16 otherwise, as torch does)."""

    def __init__(self, params, ns_dtype: str = "auto", **kwargs):
        if ns_dtype not in ("auto", *NS_DTYPES):
            raise ValueError(f"Muon ns_dtype must be auto, float32 or bfloat16, not {ns_dtype!r}")
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    def _dtype_for(self, param: Tensor) -> torch.dtype:
        if self.ns_dtype == "auto":
            return torch.float32 if param.device.type == "cpu" else torch.bfloat16
        return NS_DTYPES[self.ns_dtype]

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - same contract as torch's
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            buffers: list[Tensor] = []
            self._init_group(group, params, grads, buffers)
            lr, momentum = float(group["lr"]), group["momentum"]
            for param, grad, buffer in zip(params, grads, buffers, strict=True):
                # the same update as torch's _single_tensor_muon, bar the orthogonalisation's dtype
                buffer.lerp_(grad, 1 - momentum)
                update = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self._dtype_for(param))
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss
