"""MAE, the competition metric, overall and broken down by axis, horizon and target.

Rows whose labels are not all present (NaN) are left out of every score, as stage 2 and the
blend leave them out: a score is over fully labelled rows only. A missing prediction is not
forgiven: it makes the score NaN.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trajstack.spec import DatasetSpec


def as_target_matrix(values: pd.DataFrame | np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """(n, n_targets) float array in spec target order, from a frame (by name) or an array."""
    if isinstance(values, pd.DataFrame):
        missing = [c for c in spec.target_columns if c not in values.columns]
        if missing:
            raise KeyError(f"prediction/label table lacks target columns {missing}")
        values = values[spec.target_columns].to_numpy()
    array = np.asarray(values, dtype=float)
    if array.ndim != 2 or array.shape[1] != len(spec.target_columns):
        raise ValueError(f"expected shape (n, {len(spec.target_columns)}), got {array.shape}")
    return array


def labelled_rows(y_true: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows of (n, m) `y_true` whose labels are all present."""
    return np.isfinite(y_true).all(axis=1)


def mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """MAE over the fully labelled rows of (n, m) arrays (NaN when there are none)."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    keep = labelled_rows(y_true)
    if not keep.any():
        return float("nan")
    return float(np.mean(np.abs(y_true[keep] - y_pred[keep])))


def mae_report(y_true: pd.DataFrame | np.ndarray, y_pred: pd.DataFrame | np.ndarray,
               spec: DatasetSpec) -> dict[str, Any]:
    """MAE overall, per axis, per horizon (keyed by seconds ahead) and per target.

    Parameters
    ----------
    y_true, y_pred : frames with the target columns, or (n, n_targets) arrays in spec order;
        rows of `y_true` with a missing label are left out (`n_unlabelled` counts them).
    """
    truth = as_target_matrix(y_true, spec)
    keep = labelled_rows(truth)
    err = np.abs(truth[keep] - as_target_matrix(y_pred, spec)[keep])
    per_target = err.mean(axis=0)
    n_axes = len(spec.axes)
    by_horizon = per_target.reshape(spec.n_horizons, n_axes)  # horizon-major target order
    return {
        "mae": float(per_target.mean()),
        "per_axis": {a: float(by_horizon[:, i].mean()) for i, a in enumerate(spec.axes)},
        "per_horizon": {f"{h:g}s": float(by_horizon[k].mean()) for k, h in enumerate(spec.horizons_s)},
        "per_target": {c: float(v) for c, v in zip(spec.target_columns, per_target, strict=True)},
        "n_rows": int(err.shape[0]),
        "n_unlabelled": int((~keep).sum()),
    }
