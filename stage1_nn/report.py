"""What a fold leaves behind besides predictions: metrics.jsonl, the learning curve, tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trajstack.io import atomic_path
from trajstack.spec import DatasetSpec

from .data import aux_target_names


def prediction_frame(ids: np.ndarray, main: np.ndarray, aux: np.ndarray, spec: DatasetSpec,
                     fold: np.ndarray | int | None = None) -> pd.DataFrame:
    """ID, [fold], the targets (predictions, named as in the spec) and the aux columns."""
    frame = pd.DataFrame({spec.id_column: np.asarray(ids, dtype=str)})
    if fold is not None:
        frame["fold"] = np.broadcast_to(np.asarray(fold, dtype=np.int64), (len(ids),))
    values = pd.DataFrame(np.concatenate([main, aux], axis=1).astype(np.float64),
                          columns=[*spec.target_columns, *aux_target_names(spec)])
    return pd.concat([frame, values], axis=1)


def append_metrics(path: Path, record: dict[str, Any]) -> None:
    """One JSON line per epoch (appended: a reader sees each epoch as soon as it ends)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def plot_learning_curve(path: Path, history: list[dict[str, Any]], title: str,
                        kept_epoch: int | None = None) -> None:
    """Train loss, train/val MAE (and the selection MAE, if any) per epoch, the kept epoch marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h.get("train_loss", np.nan) for h in history], "o-", label="train loss")
    ax.plot(epochs, [h.get("train_mae", np.nan) for h in history], "o-", label="train MAE")
    ax.plot(epochs, [h.get("val_mae", np.nan) for h in history], "o-", label="val MAE (scored fold)")
    if any(h.get("select_mae") is not None for h in history):
        ax.plot(epochs, [h.get("select_mae") or np.nan for h in history], "o-",
                label="selection MAE (inner holdout)")
    if kept_epoch is not None:
        ax.axvline(kept_epoch, color="grey", ls=":", label=f"kept epoch {kept_epoch}")
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
