"""Fitting blend weights: the final fit on all OOF rows and the honest nested score.

The in-sample score (weights fit and scored on the same OOF rows) flatters the blend, most
of all with many models or few rows. The nested score fits the weights on K-1 folds' OOF and
scores them on the held-out fold, exactly as a stage model's OOF is made, so it is the figure
to compare with single models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ensembling.optimizers import blend_predict, create_optimizer
from ensembling.segments import (
    SegmentChoice,
    choose_segments,
    fit_segment_weights,
    nested_segment_blend,
)


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
    segment_weights : segment label -> (n_models, n_targets) weights of the segments that keep
        their own (rows of other segments use `weights`); empty without a segmentation.
    segments : the final keep/drop decision per segment and its nested scores (None without).
    fold_segments : fold -> segments kept for that held-out fold (chosen on its inner folds).
    """

    weights: np.ndarray
    oof_in_sample: np.ndarray
    oof_nested: np.ndarray | None
    fold_weights: dict[int, np.ndarray]
    test: np.ndarray
    segment_weights: dict[str, np.ndarray] = field(default_factory=dict)
    segments: SegmentChoice | None = None
    fold_segments: dict[int, list[str]] = field(default_factory=dict)


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
              optimizer: str, params: dict[str, Any] | None = None, nested: bool = True,
              segment: np.ndarray | None = None, segment_test: np.ndarray | None = None,
              min_segment_rows: int = 1) -> BlendFit:
    """Final weights on all OOF rows (applied to test) plus, optionally, the nested blend.

    With `segment` (a label per train row) and `segment_test` (per test row), each segment
    also gets its own weights where the nested comparison on `fold` says they score lower than
    the global ones (see `ensembling.segments`); the nested blend then makes that choice on
    each outer training set's inner folds.
    """
    if segment is not None:
        return _fit_segmented(oof, y, fold, test, optimizer, params, nested, segment,
                              segment_test, min_segment_rows)
    model = create_optimizer(optimizer, **(params or {})).fit(oof, y)
    oof_nested, fold_weights = (nested_blend(oof, y, fold, optimizer, params) if nested
                                else (None, {}))
    return BlendFit(weights=model.weights_, oof_in_sample=model.predict(oof),
                    oof_nested=oof_nested, fold_weights=fold_weights, test=model.predict(test))


def _fit_segmented(oof: np.ndarray, y: np.ndarray, fold: np.ndarray, test: np.ndarray,
                   optimizer: str, params: dict[str, Any] | None, nested: bool,
                   segment: np.ndarray, segment_test: np.ndarray | None, min_rows: int) -> BlendFit:
    if segment_test is None or len(segment_test) != test.shape[1] or len(segment) != y.shape[0]:
        raise ValueError("segment needs a label per train row and segment_test one per test row")
    choice = choose_segments(oof, y, fold, segment, optimizer, params, min_rows)
    final = fit_segment_weights(oof, y, segment, choice.keep, optimizer, params)
    oof_nested, fold_weights, fold_segments = None, {}, {}
    if nested:
        oof_nested, per_fold = nested_segment_blend(oof, y, fold, segment, optimizer, params, min_rows)
        fold_weights = {k: w.global_ for k, w in per_fold.items()}
        fold_segments = {k: sorted(w.by_segment) for k, w in per_fold.items()}
    return BlendFit(weights=final.global_, oof_in_sample=final.predict(oof, segment),
                    oof_nested=oof_nested, fold_weights=fold_weights,
                    test=final.predict(test, segment_test), segment_weights=final.by_segment,
                    segments=choice, fold_segments=fold_segments)
