"""Fitting blend weights: the final fit on all OOF rows and the honest nested score.

The in-sample score (weights fit and scored on the same OOF rows) flatters the blend, most
of all with many models or few rows. The nested score fits the weights on K-1 folds' OOF and
scores them on the held-out fold, exactly as a stage model's OOF is made, so it is the figure
to compare with single models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ensembling.optimizers import blend_predict, create_optimizer


@dataclass
class BlendFit:
    """Result of `fit_blend`.

    Attributes
    ----------
    weights : (n_models, n_targets) final weights, fit on all OOF rows.
    oof_in_sample : (n_rows, n_targets) blend of the OOF with the final weights.
    oof_nested : (n_rows, n_targets) each fold blended with weights fit on the other folds
        (None when nesting is off).
    fold_weights : fold -> (n_models, n_targets) weights used for that held-out fold.
    test : (n_test, n_targets) blend of the test predictions with the final weights.
    """

    weights: np.ndarray
    oof_in_sample: np.ndarray
    oof_nested: np.ndarray | None
    fold_weights: dict[int, np.ndarray]
    test: np.ndarray


def nested_blend(oof: np.ndarray, y: np.ndarray, fold: np.ndarray, optimizer: str,
                 params: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Blend each fold's OOF with weights fit on the other folds only.

    Parameters
    ----------
    oof : (n_models, n_rows, n_targets) OOF predictions.
    y : (n_rows, n_targets) labels.
    fold : (n_rows,) fold index per row.
    optimizer, params : registry key and its parameters.

    Returns
    -------
    (n_rows, n_targets) nested blend and, per fold, the weights applied to it.
    """
    out = np.full(y.shape, np.nan)
    fold_weights: dict[int, np.ndarray] = {}
    for k in np.unique(fold):
        held = fold == k
        # The held-out rows never reach the optimiser: that is the whole point.
        model = create_optimizer(optimizer, **(params or {})).fit(oof[:, ~held], y[~held])
        fold_weights[int(k)] = model.weights_
        out[held] = blend_predict(oof[:, held], model.weights_)
    return out, fold_weights


def fit_blend(oof: np.ndarray, y: np.ndarray, fold: np.ndarray, test: np.ndarray,
              optimizer: str, params: dict[str, Any] | None = None, nested: bool = True) -> BlendFit:
    """Final weights on all OOF rows (applied to test) plus, optionally, the nested blend."""
    model = create_optimizer(optimizer, **(params or {})).fit(oof, y)
    oof_nested, fold_weights = (nested_blend(oof, y, fold, optimizer, params) if nested
                                else (None, {}))
    return BlendFit(weights=model.weights_, oof_in_sample=model.predict(oof),
                    oof_nested=oof_nested, fold_weights=fold_weights, test=model.predict(test))
