"""Optimiser (AdamW, separate backbone lr, no decay on norms/biases), warmup+cosine, EMA."""

from __future__ import annotations

import math

import torch
from timm.utils import ModelEmaV3
from torch import nn

from .config import EmaConfig, OptimConfig


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with four groups: backbone / rest, each with and without weight decay.

    Biases and norm weights (1-d tensors) get no decay, the usual ConvNeXt/ViT practice.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = (name.startswith("backbone."), param.ndim > 1)
        groups.setdefault(key, []).append(param)
    param_groups = [
        {"params": params, "lr": cfg.backbone_lr if is_backbone else cfg.lr,
         "weight_decay": cfg.weight_decay if decays else 0.0,
         "name": "backbone" if is_backbone else "head"}  # for logging
        for (is_backbone, decays), params in sorted(groups.items())
    ]
    for group in param_groups:
        group["initial_lr"] = group["lr"]
    return torch.optim.AdamW(param_groups)


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup from ~0 to each group's lr, then cosine down to lr * `min_lr_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_ema(model: nn.Module, cfg: EmaConfig) -> ModelEmaV3 | None:
    """timm's ModelEmaV3 of the (unwrapped) model, or None when disabled."""
    if not cfg.enabled:
        return None
    return ModelEmaV3(model, decay=cfg.decay, use_warmup=cfg.warmup)
