"""Optimisers and schedules by string key (timm-style registries), and the EMA.

Every optimiser sees the same four parameter groups: backbone / rest (separate learning
rates), each with and without weight decay (no decay on biases and norm weights). Keys:
`adamw`, `sgd` (nesterov momentum), `sam` (sharpness-aware, around another key) and `muon`
(Newton-Schulz orthogonalised momentum on 2-D weights, AdamW on the rest; float32
orthogonalisation on CPU, see `stage1_nn.muon`). Schedules:
`cosine` (warmup + cosine) and `hold` (warmup, hold, linear cool-down).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn

from trajstack.registry import Registry

from .config import EmaConfig, OptimConfig

ParamGroups = list[dict]
OPTIMIZERS: Registry[Callable[[ParamGroups, OptimConfig], torch.optim.Optimizer]] = Registry(
    "stage-1 optimiser")
SCHEDULES: Registry[Callable[[int, int, OptimConfig], Callable[[int], float]]] = Registry(
    "stage-1 lr schedule")


def param_groups(model: nn.Module, cfg: OptimConfig) -> ParamGroups:
    """Four groups: backbone / rest, each with and without weight decay.

    Biases and norm weights (1-d tensors) get no decay, the usual ConvNeXt/ViT practice.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.startswith("backbone."), param.ndim > 1)
        groups.setdefault(key, []).append(param)
    return [
        {"params": params, "lr": cfg.backbone_lr if is_backbone else cfg.lr,
         "weight_decay": cfg.weight_decay if decays else 0.0,
         "name": "backbone" if is_backbone else "head"}  # for logging
        for (is_backbone, decays), params in sorted(groups.items())
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimiser `cfg.name` over `param_groups(model, cfg)`.

    Raises
    ------
    RegistryError : unknown key; the message lists the known ones.
    """
    optimizer = OPTIMIZERS.get(cfg.name)(param_groups(model, cfg), cfg)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return optimizer


@OPTIMIZERS.register("adamw")
def _adamw(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, betas=cfg.betas, eps=cfg.eps)


@OPTIMIZERS.register("sgd")
def _sgd(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    momentum = 0.9 if cfg.momentum is None else cfg.momentum
    return torch.optim.SGD(groups, momentum=momentum, nesterov=momentum > 0)


@OPTIMIZERS.register("muon")
def _muon(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    if not hasattr(torch.optim, "Muon"):
        raise RuntimeError(f"stage1.optim.name=muon needs torch.optim.Muon (torch >= 2.9); this "
                           f"is torch {torch.__version__}. Upgrade torch or pick adamw, sgd or sam.")
    # Muon orthogonalises 2-D weight updates only: linear and LSTM matrices. Conv kernels,
    # biases and norms stay with AdamW, as its authors recommend.
    matrices = [{**g, "params": [p for p in g["params"] if p.ndim == 2]} for g in groups]
    others = [{**g, "params": [p for p in g["params"] if p.ndim != 2]} for g in groups]
    from .muon import Muon  # needs torch.optim.Muon

    momentum = 0.95 if cfg.momentum is None else cfg.momentum
    parts = [Muon([g for g in matrices if g["params"]], momentum=momentum, ns_steps=cfg.muon.ns_steps,
                  ns_dtype=cfg.muon.ns_dtype, adjust_lr_fn=cfg.muon.adjust_lr),
             torch.optim.AdamW([g for g in others if g["params"]], betas=cfg.betas, eps=cfg.eps)]
    return ChainedOptimizer([p for p in parts if p.param_groups])


@OPTIMIZERS.register("sam")
def _sam(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.sam.base == "sam":
        raise ValueError("stage1.optim.sam.base cannot be sam itself; use adamw, sgd or muon")
    return SAM(OPTIMIZERS.get(cfg.sam.base)(groups, cfg), rho=cfg.sam.rho, adaptive=cfg.sam.adaptive)


class ChainedOptimizer(torch.optim.Optimizer):
    """Several optimisers stepped together, with one `param_groups` list for the schedule."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers
        self.param_groups = [g for opt in optimizers for g in opt.param_groups]
        self.defaults = {}
        self.state = {}
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}

    def step(self, closure=None):  # noqa: D102 - same contract as torch's
        loss = closure() if closure is not None else None
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102 - one state per chained optimiser
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        for opt, state in zip(self.optimizers, state_dict["optimizers"], strict=True):
            opt.load_state_dict(state)
        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]  # loading made new groups


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation around `base`: step to the worst nearby weights, take the
    gradient there, come back and let `base` step with it.

    `step(closure)` needs a closure that zeroes the gradients, recomputes the loss on the same
    batch and calls backward (the training loop passes one when `needs_closure` is set).
    """

    needs_closure = True

    def __init__(self, base: torch.optim.Optimizer, rho: float = 0.05, adaptive: bool = False):
        self.base = base
        self.rho = rho
        self.adaptive = adaptive
        self.param_groups = base.param_groups
        self.defaults = base.defaults
        self.state = base.state
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - same contract as torch's, closure required
        if closure is None:
            raise RuntimeError("SAM needs a closure that recomputes the loss and its gradients")
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        scale = [p.abs() if self.adaptive else torch.ones_like(p) for p in params]
        norm = torch.norm(torch.stack([(s * p.grad).norm(2) for s, p in zip(scale, params, strict=True)]), 2)
        shifts = []
        for s, p in zip(scale, params, strict=True):
            shift = s * s * p.grad * (self.rho / (norm + 1e-12))
            p.add_(shift)
            shifts.append(shift)
        with torch.enable_grad():
            loss = closure()  # gradients at the perturbed weights
        for shift, p in zip(shifts, params, strict=True):
            p.sub_(shift)
        self.base.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # noqa: D102 - the base optimiser's (SAM keeps none)
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        self.base.load_state_dict(state_dict)
        self.param_groups, self.state = self.base.param_groups, self.base.state  # loading made new ones


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule `cfg.schedule` as a factor of each group's lr, stepped once per batch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULES.get(cfg.schedule)(
        total_steps, warmup_steps, cfg))


def _warmup(step: int, warmup_steps: int) -> float:
    return (step + 1) / max(1, warmup_steps)


@SCHEDULES.register("cosine")
def _cosine(total_steps: int, warmup_steps: int, cfg: OptimConfig) -> Callable[[int], float]:
    """Linear warmup from ~0 to each group's lr, then cosine down to lr * `min_lr_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@SCHEDULES.register("hold")
def _hold(total_steps: int, warmup_steps: int, cfg: OptimConfig) -> Callable[[int], float]:
    """Linear warmup, hold at the peak, then a linear cool-down to lr * `min_lr_ratio` over the
    last `cooldown_fraction` of the steps (the warmup-stable-decay schedule)."""
    cooldown_steps = int(round(cfg.cooldown_fraction * total_steps))
    cooldown_start = max(warmup_steps, total_steps - cooldown_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return _warmup(step, warmup_steps)
        if step < cooldown_start:
            return 1.0
        progress = min(1.0, (step - cooldown_start) / max(1, total_steps - cooldown_start))
        return 1.0 - (1.0 - cfg.min_lr_ratio) * progress

    return factor


def build_ema(model: nn.Module, cfg: EmaConfig) -> ModelEmaV3 | None:
    """timm's ModelEmaV3 of the (unwrapped) model, or None when disabled."""
    if not cfg.enabled:
        return None
    ema = ModelEmaV3(model, decay=cfg.decay, use_warmup=cfg.warmup)
    # The copy splits an LSTM's weights out of cuDNN's one buffer, which cuDNN would then rebuild
    # at every call (PyTorch warns so on a GPU); the EMA's in-place updates keep it whole after.
    for module in ema.module.modules():
        if isinstance(module, nn.RNNBase):
            module.flatten_parameters()
    return ema
