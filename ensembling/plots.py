"""Report figures (matplotlib, Agg): each function draws one PNG from plain arrays and tables.

No function here reads artifacts; `ensembling.report` gathers the data and calls these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on CI or remote machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from trajstack.io import atomic_path  # noqa: E402

DPI = 110


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def plot_weight_heatmap(weights: np.ndarray, models: list[str], targets: list[str],
                        path: str | Path, title: str = "blend weights") -> Path:
    """Models x targets heat-map of blend weights, each cell annotated."""
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(targets) + 2.5), 0.5 * len(models) + 1.8))
    image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(targets)), targets, rotation=90)
    ax.set_yticks(range(len(models)), models)
    for (i, j), w in np.ndenumerate(weights):
        ax.text(j, i, f"{w:.2f}"[1:] if 0 < w < 1 else f"{w:.0f}", ha="center", va="center",
                fontsize=7, color="white" if w < 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    ax.set_title(title)
    return _save(fig, path)


def plot_mae_by_model(maes: dict[str, float], path: str | Path, floor: float | None = None) -> Path:
    """Horizontal bars of overall MAE per model (best at the top)."""
    items = sorted(maes.items(), key=lambda kv: kv[1], reverse=True)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(items) + 1.5))
    bars = ax.barh([k for k, _ in items], [v for _, v in items], color="tab:blue")
    ax.bar_label(bars, fmt="%.4f", padding=3, fontsize=8)
    if floor:
        ax.axvline(floor, color="tab:red", linestyle="--", label=f"oracle floor {floor:.4f}")
        ax.legend(loc="lower right")
    ax.set_xlabel("MAE (all targets)")
    ax.set_xlim(0, max(v for _, v in items) * 1.18)
    ax.set_title("MAE per model (OOF unless marked test)")
    return _save(fig, path)


def plot_mae_breakdown(reports: dict[str, dict[str, Any]], key: str, path: str | Path,
                       xlabel: str) -> Path:
    """MAE per axis or per horizon (`key` of a `mae_report`), one line per model."""
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    for name, report in reports.items():
        parts = report[key]
        ax.plot(list(parts), list(parts.values()), marker="o", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("MAE")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"MAE {key.replace('_', ' ')}")
    return _save(fig, path)


def plot_learning_curves(run_name: str, curves: dict[int, pd.DataFrame], path: str | Path) -> Path:
    """Per fold: train loss and validation MAE against epoch (from fold<k>/metrics.jsonl)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for fold, table in sorted(curves.items()):
        for ax, column in zip(axes, ("train_loss", "val_mae"), strict=True):
            if column in table:
                ax.plot(table["epoch"], table[column], marker=".", label=f"fold {fold}")
    for ax, title in zip(axes, ("train loss", "validation MAE"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_title(f"{run_name}: {title}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_top_features(run_name: str, importance: pd.Series, path: str | Path) -> Path:
    """Horizontal bars of the largest importances (already aggregated over targets/folds)."""
    top = importance.sort_values()  # ascending, so the largest bar is drawn on top
    fig, ax = plt.subplots(figsize=(7.5, 0.28 * len(top) + 1.4))
    ax.barh(top.index.astype(str), top.to_numpy(), color="tab:green")
    ax.set_xlabel("importance (mean over targets and folds, share of total)")
    ax.set_title(f"{run_name}: top {len(top)} features")
    ax.tick_params(axis="y", labelsize=8)
    return _save(fig, path)


def plot_error_vs(x: np.ndarray, errors: dict[str, np.ndarray], bins: int, xlabel: str,
                  path: str | Path, min_rows: int = 5) -> Path:
    """Mean row MAE per bin of `x`, one line per model, with the rows per bin as a histogram.

    Bins are of equal width between the 1st and 99th percentiles (rows beyond fall in the end
    bins), so heavy tails such as steering angle do not squash the bulk; bins with fewer than
    `min_rows` rows are not drawn.
    """
    x = np.asarray(x, float)
    finite = np.isfinite(x)
    lo, hi = np.nanquantile(x[finite], [0.01, 0.99])
    hi = hi if hi > lo else lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
    counts = np.array([np.sum(finite & (which == b)) for b in range(bins)])
    keep = counts >= min_rows
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    hist = ax.twinx()
    hist.bar(centres, counts, width=np.diff(edges), color="grey", alpha=0.18)
    hist.set_ylabel("rows per bin", color="grey")
    for name, err in errors.items():
        means = np.array([np.mean(err[finite & (which == b)]) if keep[b] else np.nan
                          for b in range(bins)])
        ax.plot(centres, means, marker="o", label=name)
    ax.set_zorder(hist.get_zorder() + 1)  # lines over the histogram
    ax.patch.set_visible(False)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("mean OOF MAE of the row")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"OOF error against {xlabel}")
    return _save(fig, path)
