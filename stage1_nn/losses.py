"""Stage-1 loss: L1 on the main head (the metric is MAE) + weighted SmoothL1 on the aux head,
optionally + a jerk penalty on the predicted path and SmoothL1 on the next row's telemetry.

Outputs and targets arrive flat over real rows (padding already dropped by the mask), so only
missing target values need masking. With `stage1.per_metre_axes` each row's errors are divided
by its distances first (the heads learn those axes per metre); with per-target normalisation
they are then divided by the training-fold std of each target, so every target weighs alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trajstack.config import check_axes
from trajstack.spec import DatasetSpec

from .config import LossConfig
from .data import path_jerk


def masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `valid`; 0 (with a gradient path) when nothing is valid."""
    valid = valid.to(values.dtype)
    return (values * valid).sum() / valid.sum().clamp_min(1.0)


def axis_weights(weights: dict[str, float], spec: DatasetSpec) -> torch.Tensor:
    """(n_targets,) weight of each main target: `weights[axis]` on that axis's targets, else 1."""
    check_axes(weights, spec, "stage1.loss.axis_weights")
    return torch.tensor([weights.get(a, 1.0) for a in spec.target_axes])


def stage1_loss(out: dict[str, torch.Tensor], targets: torch.Tensor, aux: torch.Tensor | None,
                cfg: LossConfig, main_scale: torch.Tensor | None = None,
                aux_scale: torch.Tensor | None = None, next_telemetry: torch.Tensor | None = None,
                spec: DatasetSpec | None = None, target_scale: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Total loss and its parts for logging.

    Parameters
    ----------
    out : model outputs (``main`` (n, m), optionally ``aux`` (n, a)).
    targets, aux : flat targets over real rows; NaN values are left out.
    cfg : the `stage1.loss` section.
    main_scale, aux_scale : per-target divisors when `cfg.normalize_targets`.
    next_telemetry : flat next-row telemetry targets (NaN: left out), for `cfg.next_telemetry_weight`.
    spec : dataset spec (horizons and axes), needed for `cfg.jerk_weight` and `cfg.axis_weights`.
    target_scale : flat (n, m) per-row divisors of the main errors (`stage1.per_metre_axes`) or None.
    """
    valid = torch.isfinite(targets)
    diff = out["main"] - torch.nan_to_num(targets)
    if target_scale is not None:
        diff = diff / target_scale
    if cfg.normalize_targets and main_scale is not None:
        diff = diff / main_scale
    if cfg.axis_weights:
        if spec is None:
            raise ValueError("stage1.loss.axis_weights needs the dataset spec (axes)")
        diff = diff * axis_weights(cfg.axis_weights, spec).to(diff.device)
    main = masked_mean(diff.abs(), valid)
    parts = {"loss_main": float(main.detach())}
    total = main
    if cfg.aux and "aux" in out and aux is not None:
        valid_aux = torch.isfinite(aux)
        pred, true = out["aux"], torch.nan_to_num(aux)
        if cfg.normalize_targets and aux_scale is not None:
            pred, true = pred / aux_scale, true / aux_scale
        aux_loss = masked_mean(F.smooth_l1_loss(pred, true, beta=cfg.aux_beta, reduction="none"), valid_aux)
        parts["loss_aux"] = float(aux_loss.detach())
        total = total + cfg.aux_weight * aux_loss
    if cfg.jerk_weight > 0:
        if spec is None:
            raise ValueError("stage1.loss.jerk_weight > 0 needs the dataset spec (horizons and axes)")
        jerk = path_jerk(out["main"], spec).abs().mean()
        parts["loss_jerk"] = float(jerk.detach())
        total = total + cfg.jerk_weight * jerk
    if cfg.next_telemetry_weight > 0 and "next" in out and next_telemetry is not None:
        next_loss = masked_mean(F.smooth_l1_loss(out["next"], torch.nan_to_num(next_telemetry), reduction="none"),
                                torch.isfinite(next_telemetry))
        parts["loss_next"] = float(next_loss.detach())
        total = total + cfg.next_telemetry_weight * next_loss
    parts["loss"] = float(total.detach())
    return total, parts
