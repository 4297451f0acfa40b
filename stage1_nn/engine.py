"""One training epoch and batched prediction; the loop in `train.py` calls these."""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from trajstack.spec import DatasetSpec

from .config import Stage1Config
from .data import aux_sign, aux_targets
from .distributed import DistEnv
from .losses import stage1_loss
from .mixup import MixPlan, choose_mixup, mix_batch


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """bf16 autocast when asked (GPU by default), a no-op in fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor | None]:
    non_blocking = device.type == "cuda"
    keys = ("images", "telemetry", "mask", "extra", "baseline", "baseline_aux", "target_scale")
    return {k: batch[k].to(device, non_blocking=non_blocking) if k in batch else None for k in keys}


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _loss_and_gradients(model: nn.Module, optimizer: torch.optim.Optimizer,
                        inputs: dict[str, torch.Tensor | None], labels: dict[str, torch.Tensor | None],
                        cfg: Stage1Config, core: nn.Module, env: DistEnv, amp_dtype: torch.dtype | None,
                        spec: DatasetSpec | None, mix: MixPlan | None
                        ) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, float]]:
    """Forward, loss, backward and gradient clipping on one batch (SAM runs it twice a step)."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(env.device, amp_dtype):
        out = model(**inputs, **({"mix": mix} if mix is not None else {}))
    target_scale = inputs["target_scale"][inputs["mask"]] if inputs["target_scale"] is not None else None
    loss, parts = stage1_loss(out, labels["targets"], labels["aux"], cfg.loss, core.main_scale, core.aux_scale,
                              next_telemetry=labels["next_telemetry"], spec=spec, target_scale=target_scale)
    loss.backward()
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    return out, loss, parts


def train_one_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, ema: Any, cfg: Stage1Config, env: DistEnv,
                    amp_dtype: torch.dtype | None, step: int, desc: str, spec: DatasetSpec | None = None
                    ) -> tuple[dict[str, float], int]:
    """Train over `loader` once; returns (mean losses, train MAE, samples/s) and the new step count.

    `spec` (horizons and axes) is needed by the jerk loss only. With `cfg.mixup` on, a batch may
    be mixed (inputs and labels) or carry a plan the net mixes its fused features by (manifold);
    the train MAE is then measured against the mixed targets.
    """
    model.train()
    core = unwrap(model)
    sums: dict[str, float] = {}
    n_rows, n_batches, abs_err, n_err = 0, 0, 0.0, 0
    started = time.perf_counter()
    bar = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
               disable=not (cfg.progress and env.is_main))
    for batch in bar:
        plan, kind = choose_mixup(cfg.mixup, batch["mask"])
        if plan is not None:
            batch = mix_batch(batch, plan, inputs=kind == "input")
        inputs = _inputs(batch, env.device)
        mask = inputs["mask"]
        labels = {k: batch[k].to(env.device)[mask] if k in batch else None
                  for k in ("targets", "aux", "next_telemetry")}
        targets = labels["targets"]
        manifold = plan.to(env.device) if kind == "manifold" else None
        step_batch = functools.partial(_loss_and_gradients, model, optimizer, inputs, labels,
                                       cfg, core, env, amp_dtype, spec, manifold)
        out, loss, parts = step_batch()
        if getattr(optimizer, "needs_closure", False):
            optimizer.step(step_batch)  # SAM: a second pass at the perturbed weights
        else:
            optimizer.step()
        scheduler.step()
        step += 1
        if ema is not None:
            ema.update(core, step=step)
        for key, value in parts.items():
            sums[key] = sums.get(key, 0.0) + value
        with torch.no_grad():
            err = (out["main"].detach() - targets).abs()
            ok = torch.isfinite(err)
            abs_err += float(err[ok].sum())
            n_err += int(ok.sum())
        n_rows += int(mask.sum())
        n_batches += 1
        bar.set_postfix(loss=f"{sums['loss'] / n_batches:.4f}", mae=f"{abs_err / max(1, n_err):.4f}")
    seconds = time.perf_counter() - started
    stats = {f"train_{k}": v / max(1, n_batches) for k, v in sums.items()}
    stats.update(train_mae=abs_err / max(1, n_err), train_rows=n_rows,
                 train_rows_per_s=n_rows * env.world / max(seconds, 1e-9), train_seconds=seconds)
    return stats, step


@torch.no_grad()
def predict(model: nn.Module, loader: Any, env: DistEnv, amp_dtype: torch.dtype | None,
            spec: DatasetSpec, desc: str = "predict", progress: bool = False) -> dict[str, np.ndarray]:
    """Predictions for every real row of `loader`: rows, main, aux (head or derived), emb.

    Rows without an aux head get velocities/accelerations derived from the main prediction,
    so the output always has the same columns.
    """
    model.eval()
    rows, main, aux, emb = [], [], [], []
    for batch in tqdm(loader, desc=desc, leave=False, disable=not (progress and env.is_main)):
        inputs = _inputs(batch, env.device)
        with autocast(env.device, amp_dtype):
            out = model(**inputs)
        pred = out["main"].float()
        rows.append(batch["rows"][batch["mask"]].numpy())
        main.append(pred.cpu().numpy())
        aux.append((out["aux"].float() if "aux" in out else aux_targets(pred, spec)).cpu().numpy())
        emb.append(out["emb"].float().cpu().numpy())
    if not rows:
        return {"rows": np.zeros(0, np.int64), "main": np.zeros((0, len(spec.target_columns)), np.float32),
                "aux": np.zeros((0, len(aux_sign(spec))), np.float32), "emb": np.zeros((0, 0), np.float32)}
    return {"rows": np.concatenate(rows), "main": np.concatenate(main), "aux": np.concatenate(aux),
            "emb": np.concatenate(emb)}


def merge_flip_tta(plain: dict[str, np.ndarray], flipped: dict[str, np.ndarray],
                   spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Average plain and flipped-back predictions (same row order); embeddings stay plain."""
    if not np.array_equal(plain["rows"], flipped["rows"]):
        raise RuntimeError("flip TTA: plain and flipped passes saw rows in different orders")
    sign = np.asarray(spec.flip_target_sign, np.float32)
    return {**plain,
            "main": 0.5 * (plain["main"] + flipped["main"] * sign),
            "aux": 0.5 * (plain["aux"] + flipped["aux"] * aux_sign(spec).astype(np.float32))}


def predict_with_tta(model: nn.Module, loader_of: Callable[[float], Any], env: DistEnv,
                     amp_dtype: torch.dtype | None, spec: DatasetSpec, tta: bool,
                     desc: str = "predict", progress: bool = False) -> dict[str, np.ndarray]:
    """`predict` over `loader_of(0.0)`; with `tta`, averaged with the flipped-back predictions
    over `loader_of(1.0)` (every sequence flipped). The one flip-TTA path of training and
    checkpoint prediction."""
    plain = predict(model, loader_of(0.0), env, amp_dtype, spec, desc=desc, progress=progress)
    if not tta:
        return plain
    return merge_flip_tta(plain, predict(model, loader_of(1.0), env, amp_dtype, spec), spec)
