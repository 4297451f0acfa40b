"""Blend weights per segment of rows (e.g. scene size), kept only where the nested score says so.

A segmentation maps each row to a segment label (`blend.segments.by`, a key of `SEGMENTERS`).
Segment weights are a second candidate beside the global ones: for each segment, weights fit
on that segment's rows only. Whether a segment keeps its own weights is decided per segment by
a nested comparison on folds: for every fold, global and segment weights are fit on the other
folds and both are scored on that fold's rows of the segment; the segment keeps its weights
only where they score lower. For the honest (outer) blend score that decision is itself made
on the inner folds of each outer training set, so a held-out fold neither fits the weights it
is scored with nor chooses between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ensembling.optimizers import blend_predict, create_optimizer
from trajstack.registry import Registry
from trajstack.spec import DatasetSpec
from trajstack.tables import scene_and_time

# key -> function(ids, spec, edges) -> (n_rows,) segment labels (strings)
Segmenter = Callable[[np.ndarray, DatasetSpec, list[int]], np.ndarray]
SEGMENTERS: Registry[Segmenter] = Registry("blend segmentation")


@SEGMENTERS.register("scene_size")
def scene_size_segments(ids: np.ndarray, spec: DatasetSpec, edges: list[int]) -> np.ndarray:
    """Segment of each row by the number of rows its scene has among `ids`.

    `edges` are inclusive upper bounds: [2] gives "rows<=2" and "rows>2"; [2, 4] gives
    "rows<=2", "rows3-4" and "rows>4". A scene's size is counted within the split the IDs come
    from (train or test), which is what a model sees of it at prediction time too.
    """
    scenes, _ = scene_and_time(list(ids), spec)
    _, inverse, counts = np.unique(scenes, return_inverse=True, return_counts=True)
    size = counts[inverse]
    bounds = sorted(set(int(e) for e in edges))
    labels = np.empty(len(size), dtype=object)
    lower = 1
    for upper in bounds:
        labels[(size >= lower) & (size <= upper)] = (f"rows<={upper}" if lower == 1
                                                     else f"rows{lower}-{upper}")
        lower = upper + 1
    labels[size >= lower] = f"rows>{lower - 1}" if bounds else "all"
    return labels.astype(str)


def segment_labels(key: str, ids: np.ndarray, spec: DatasetSpec, edges: list[int]) -> np.ndarray:
    """Segment labels of `ids` by the segmentation registered under `key` (blend.segments.by)."""
    return SEGMENTERS.get(key)(np.asarray(ids), spec, edges)


def fit_weights(oof: np.ndarray, y: np.ndarray, optimizer: str, params: dict[str, Any] | None) -> np.ndarray:
    """(n_models, n_targets) weights of `optimizer` fit on these rows."""
    return create_optimizer(optimizer, **(params or {})).fit(oof, y).weights_


@dataclass
class SegmentWeights:
    """Global weights plus the weights of the segments that keep their own.

    Attributes
    ----------
    global_ : (n_models, n_targets) weights for every row outside a kept segment.
    by_segment : segment label -> (n_models, n_targets) weights, kept segments only.
    """

    global_: np.ndarray
    by_segment: dict[str, np.ndarray] = field(default_factory=dict)

    def predict(self, preds: np.ndarray, segment: np.ndarray) -> np.ndarray:
        """Blend (n_models, n, T) predictions, each row with its segment's weights."""
        out = blend_predict(preds, self.global_)
        for label, weights in self.by_segment.items():
            rows = segment == label
            if rows.any():
                out[rows] = blend_predict(preds[:, rows], weights)
        return out


@dataclass
class SegmentChoice:
    """A keep/drop decision per segment and the nested scores it was made on.

    Attributes
    ----------
    keep : segment label -> True when its own weights scored lower than the global ones.
    mae_global, mae_segment : segment label -> nested MAE of that segment's rows under global
        weights and under its own (NaN where a fold's training rows lacked the segment).
    """

    keep: dict[str, bool]
    mae_global: dict[str, float]
    mae_segment: dict[str, float]


def choose_segments(oof: np.ndarray, y: np.ndarray, fold: np.ndarray, segment: np.ndarray,
                    optimizer: str, params: dict[str, Any] | None = None,
                    min_rows: int = 1) -> SegmentChoice:
    """Per segment, do its own weights beat the global ones when scored nested on `fold`?

    For each fold, global weights (all other folds' rows) and each segment's weights (the other
    folds' rows of that segment) are fit, and both are scored on the fold's rows of the segment.
    A segment whose training rows in some fold number fewer than `min_rows` is never kept.
    """
    pred_global = np.full(y.shape, np.nan)
    pred_segment = np.full(y.shape, np.nan)
    labels = sorted(np.unique(segment))
    for k in np.unique(fold):
        held = fold == k
        pred_global[held] = blend_predict(oof[:, held], fit_weights(oof[:, ~held], y[~held], optimizer, params))
        for label in labels:
            train = ~held & (segment == label)
            score = held & (segment == label)
            if score.any() and train.sum() >= min_rows:
                pred_segment[score] = blend_predict(oof[:, score],
                                                    fit_weights(oof[:, train], y[train], optimizer, params))
    keep, mae_global, mae_segment = {}, {}, {}
    for label in labels:
        rows = segment == label
        mae_global[label] = float(np.abs(pred_global[rows] - y[rows]).mean())
        seg = pred_segment[rows]
        mae_segment[label] = float(np.abs(seg - y[rows]).mean()) if np.isfinite(seg).all() else float("nan")
        keep[label] = bool(mae_segment[label] < mae_global[label])  # NaN compares False: dropped
    return SegmentChoice(keep, mae_global, mae_segment)


def fit_segment_weights(oof: np.ndarray, y: np.ndarray, segment: np.ndarray, keep: dict[str, bool],
                        optimizer: str, params: dict[str, Any] | None = None) -> SegmentWeights:
    """Global weights on all rows, plus own weights for the segments `keep` marks True."""
    by_segment = {label: fit_weights(oof[:, segment == label], y[segment == label], optimizer, params)
                  for label, kept in keep.items() if kept}
    return SegmentWeights(fit_weights(oof, y, optimizer, params), by_segment)


def nested_segment_blend(oof: np.ndarray, y: np.ndarray, fold: np.ndarray, segment: np.ndarray,
                         optimizer: str, params: dict[str, Any] | None = None, min_rows: int = 1
                         ) -> tuple[np.ndarray, dict[int, SegmentWeights]]:
    """Each fold blended with weights fit, and segments chosen, on the other folds only.

    Returns the (n_rows, n_targets) nested blend and, per fold, the weights applied to it.
    """
    out = np.full(y.shape, np.nan)
    fold_weights: dict[int, SegmentWeights] = {}
    for k in np.unique(fold):
        held = fold == k
        train = ~held
        # The keep/drop choice on the inner folds of the training rows: the held fold never votes.
        choice = choose_segments(oof[:, train], y[train], fold[train], segment[train], optimizer,
                                 params, min_rows)
        weights = fit_segment_weights(oof[:, train], y[train], segment[train], choice.keep,
                                      optimizer, params)
        fold_weights[int(k)] = weights
        out[held] = weights.predict(oof[:, held], segment[held])
    return out, fold_weights
