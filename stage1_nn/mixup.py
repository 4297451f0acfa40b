"""Mixup for regression on padded sequence batches: input mixup and manifold mixup.

A batch (B scenes, T rows, mask) is mixed with a permutation of itself: scene b with scene
perm[b], row t with row t. Scene b keeps its own mask, so the LSTM still runs over one real
scene's length and order; rows of b with no row t in its partner keep lambda 1 (unmixed).
Everything label-bearing is mixed by the same per-row lambda as the inputs: targets, the aux
targets (linear in the targets, so the mix of the aux targets is the aux of the mixed path),
the physics baseline the heads learn the residual to (so mixed baseline + mixed residual =
mixed target), the per-metre divisor of the targets and the next-row telemetry targets. In row mode T = 1 and this is plain mixup.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .config import MixupConfig

INPUT_KEYS = ("images", "telemetry", "extra")
LABEL_KEYS = ("baseline", "baseline_aux", "target_scale", "targets", "aux", "next_telemetry")


@dataclass
class MixPlan:
    """Who is mixed with whom and by how much: `perm` (B,) partner scenes, `lam` (B, T) weights."""

    perm: torch.Tensor
    lam: torch.Tensor

    def to(self, device: torch.device) -> MixPlan:
        return MixPlan(self.perm.to(device), self.lam.to(device))

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """lam * x + (1 - lam) * x[perm] over the (B, T) leading axes, float; rows with lam 1 are x."""
        x = x.float()
        lam = self.lam.to(x.device).view(*self.lam.shape, *([1] * (x.ndim - 2)))
        mixed = lam * x + (1 - lam) * x[self.perm.to(x.device)]
        return torch.where(lam == 1, x, mixed)  # 0 * NaN would turn a partner's gap into NaN

    def mix_flat(self, flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`mix` for features flat over the real rows of `mask` (mask order); the result is flat too."""
        padded = flat.new_zeros(*mask.shape, *flat.shape[1:])
        padded[mask] = flat
        return self.mix(padded)[mask]


def draw_plan(mask: torch.Tensor, alpha: float) -> MixPlan:
    """A random partner per scene and one lambda ~ Beta(alpha, alpha) for the batch (torch's
    global generator, seeded per fold); rows of a scene beyond its partner's length get 1."""
    perm = torch.randperm(mask.shape[0])
    lam = torch.distributions.Beta(float(alpha), float(alpha)).sample()
    return MixPlan(perm, torch.where(mask[perm], lam, torch.ones(())))


def mix_batch(batch: dict[str, torch.Tensor], plan: MixPlan, inputs: bool) -> dict[str, torch.Tensor]:
    """A copy of a collated batch with its labels (and, with `inputs`, its inputs) mixed by `plan`."""
    keys = LABEL_KEYS + (INPUT_KEYS if inputs else ())
    return {k: plan.mix(v) if k in keys else v for k, v in batch.items()}


def choose_mixup(cfg: MixupConfig, mask: torch.Tensor) -> tuple[MixPlan | None, str | None]:
    """Draw which mixup (None, "input" or "manifold") this batch gets, and its plan."""
    if cfg.p == 0 and cfg.manifold_p == 0:
        return None, None
    u = float(torch.rand(()))
    kind = "input" if u < cfg.p else "manifold" if u < cfg.p + cfg.manifold_p else None
    return (draw_plan(mask, cfg.alpha), kind) if kind else (None, None)
