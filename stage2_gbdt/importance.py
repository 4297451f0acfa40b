"""Gain importance, aggregated over folds and targets: `importance.csv` and `importance.png`."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from trajstack.io import atomic_path, write_csv_atomic


def importance_table(per_target: pd.DataFrame) -> pd.DataFrame:
    """feature, gain (sum over targets of the fold-mean gain), share, then per-target gains.

    Parameters
    ----------
    per_target : features x targets frame of fold-mean gains (`CVResult.importance`).
    """
    table = per_target.copy()
    total = table.sum(axis=1)
    table.insert(0, "share", total / total.sum() if total.sum() > 0 else 0.0)
    table.insert(0, "gain", total)
    table = table.rename_axis("feature").reset_index()
    return table.sort_values(["gain", "feature"], ascending=[False, True]).reset_index(drop=True)


def write_importance(table: pd.DataFrame, folder: Path, title: str, top: int = 30) -> None:
    """Write importance.csv and a bar chart of the `top` features to importance.png."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and in tests
    import matplotlib.pyplot as plt

    write_csv_atomic(folder / "importance.csv", table)
    head = table.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(head) + 1.2))
    ax.barh(head["feature"], head["share"])
    ax.set_xlabel("share of total gain (all targets, mean over folds)")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(folder / "importance.png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
