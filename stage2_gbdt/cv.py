"""K-fold cross-validation of one model per target: `cross_validate(...) -> CVResult`.

For every (target, fold) pair, a learner is fitted on the other folds' rows and predicts the
fold's rows (OOF) and the test rows. The number of boosting rounds is chosen on an inner
holdout of the *training* scenes (`trajstack.folds.inner_holdout`), never on the fold being scored: a fold's
rows are used only to score it, so the OOF score is an honest estimate. OOF predictions come
only from models that never trained on (or stopped on) those rows; test predictions are the
mean over folds (the bagged-model bookkeeping of AutoGluon, the CVResult of nyaggle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from stage2_gbdt.learners import LEARNERS, create_learner
from stage2_gbdt.parallel import SharedArrays, ray_session, run_tasks
from stage2_gbdt.resume import FitStore
from trajstack.folds import inner_holdout


@dataclass
class CVResult:
    """OOF (n_train, n_targets) and fold-mean test (n_test, n_targets) predictions, scores,
    gain importance (features x targets, mean over folds) and best iterations (targets x folds)."""

    oof: np.ndarray
    test: np.ndarray
    scores: dict[str, Any]
    importance: pd.DataFrame
    best_iterations: pd.DataFrame = field(default_factory=pd.DataFrame)


def encode_features(train: pd.DataFrame, test: pd.DataFrame, columns: list[str]
                    ) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """float32 matrices; categorical columns become their integer codes (missing: NaN).

    Train and test share categories (the spec's levels), so codes mean the same in both.
    """
    cats = tuple(j for j, c in enumerate(columns) if isinstance(train[c].dtype, pd.CategoricalDtype))

    def matrix(frame: pd.DataFrame) -> np.ndarray:
        out = np.empty((len(frame), len(columns)), dtype=np.float32)
        for j, col in enumerate(columns):
            values = frame[col]
            if j in cats:
                codes = values.cat.codes.to_numpy().astype(np.float32)
                codes[codes < 0] = np.nan
                out[:, j] = codes
            else:
                out[:, j] = values.to_numpy(dtype=np.float32, na_value=np.nan)
        return out

    return matrix(train), matrix(test), cats


# The target index of a task that fits every target at once (a multi-output learner).
ALL_TARGETS = -1


def fit_one(shared: SharedArrays, target: int, fold: int, learner_key: str,
            learner_kwargs: dict[str, Any], stopping: dict[str, Any], seeds: int = 1,
            columns: np.ndarray | None = None) -> dict[str, Any]:
    """Fit target `target` on the rows outside `fold`; predict the fold's rows and the test.

    With early stopping on (`learner_kwargs["early_stopping_rounds"] > 0`), the rounds are
    found on an inner holdout of the training scenes (`stopping["fraction"]`, seeded by
    `stopping["seed"]` and the fold). Then, with `stopping["refit"]`, a second model is fitted
    on all the training rows with that number of rounds (it sees 100% of the rows instead of
    ~80%, at the price of a second fit); without it the stopped model itself is kept.

    `target=ALL_TARGETS` fits a multi-output learner on every target at once (rows with any
    label missing are left out of its fits). `seeds > 1` bags: that many models, each with
    its own learner seed and inner holdout, predictions averaged (seed 0 is the unbagged fit).
    `columns` (indices of X's columns) restricts the fit to those features (None: all); the
    importance still has one entry per column of X, zero for those left out.
    """
    X, X_test, y_all, folds, groups = (shared.get(k) for k in ("X", "X_test", "Y", "folds", "groups"))
    n_columns = X.shape[1]
    if columns is not None:
        X, X_test = X[:, columns], X_test[:, columns]
    y = y_all if target == ALL_TARGETS else y_all[:, target]
    known = ~np.isnan(y) if y.ndim == 1 else ~np.isnan(y).any(axis=1)  # unlabelled: predicted only
    train_rows = np.flatnonzero((folds != fold) & known)
    valid_rows = np.flatnonzero(folds == fold)  # scored only: never fitted or stopped on
    models = [_fit_rounds(X, y, train_rows, groups, learner_key,
                          {**learner_kwargs, "random_state": learner_kwargs["random_state"] + s},
                          stopping, stopping["seed"] * 1009 + fold + 7919 * s)
              for s in range(seeds)]

    def mean_of(values: list[np.ndarray]) -> np.ndarray:
        return np.mean(np.stack([np.asarray(v, dtype=float) for v in values]), axis=0)

    importance = mean_of([m.feature_importances_ for m in models])
    if columns is not None:  # back to one entry per column of X, zero where left out
        full = np.zeros(n_columns)
        full[columns] = importance
        importance = full
    return {
        "target": target, "fold": fold, "valid_rows": valid_rows,
        "valid_pred": mean_of([m.predict(X[valid_rows]) for m in models]),
        "test_pred": mean_of([m.predict(X_test) for m in models]),
        "importance": importance,
        "best_iteration": float(np.mean([m.best_iteration_ for m in models])),
    }


def _fit_rounds(X: np.ndarray, y: np.ndarray, train_rows: np.ndarray, groups: np.ndarray,
                learner_key: str, learner_kwargs: dict[str, Any], stopping: dict[str, Any],
                holdout_seed: int) -> Any:
    """One learner fitted on `train_rows`: rounds early-stopped on an inner holdout (drawn with
    `holdout_seed`), then refitted on all of them when `stopping["refit"]` (see `fit_one`)."""
    model = create_learner(learner_key, **learner_kwargs)
    if learner_kwargs["early_stopping_rounds"] > 0 and model.uses_rounds:
        fit_rows, stop_rows = inner_holdout(train_rows, groups, stopping["fraction"], holdout_seed)
        model.fit(X[fit_rows], y[fit_rows], eval_set=[(X[stop_rows], y[stop_rows])])
        if stopping["refit"]:
            model = model.with_rounds(model.best_iteration_).fit(X[train_rows], y[train_rows])
    else:
        model.fit(X[train_rows], y[train_rows])
    return model


def cross_validate(
    learner_key: str,
    params: dict[str, Any],
    X_train: pd.DataFrame,
    Y: np.ndarray,
    X_test: pd.DataFrame,
    folds: np.ndarray,
    *,
    target_names: list[str],
    baseline_train: np.ndarray | None = None,
    baseline_test: np.ndarray | None = None,
    scale_train: np.ndarray | None = None,
    scale_test: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    early_stopping_rounds: int = 100,
    stop_fraction: float = 0.2,
    refit: bool = True,
    seed: int = 0,
    seeds: int = 1,
    n_jobs: int = 1,
    threads_per_fit: int = 1,
    device: str = "cpu",
    executor: str = "joblib",
    ray_address: str | None = None,
    resume: FitStore | None = None,
    target_params: list[dict[str, Any]] | None = None,
    target_columns: list[np.ndarray | None] | None = None,
) -> CVResult:
    """Fit one `learner_key` model per target per fold; return OOF and fold-mean test predictions.

    Parameters
    ----------
    learner_key, params : registry key and library params of the learner.
    X_train, X_test : feature frames (columns in the same order; categoricals allowed).
    Y : (n_train, n_targets) labels, NaN where unknown.
    folds : (n_train,) fold of each train row (from folds.csv).
    target_names : names of Y's columns (for scores and importance).
    baseline_train, baseline_test : optional (n, n_targets) baselines; the learners then fit
        Y - baseline and the baseline is added back to every prediction (residual mode).
    scale_train, scale_test : optional (n, n_targets) positive scales; the learners then fit
        (Y - baseline) / scale and every prediction is multiplied back (1: unscaled).
    groups : (n_train,) scene of each row; the inner early-stopping holdout keeps groups whole
        (None: every row is its own group).
    early_stopping_rounds, stop_fraction, refit : patience (0: a fixed number of rounds, no
        holdout); share of the training scenes held out to stop on; whether to refit on all
        training rows with the found number of rounds (see `fit_one`).
    seed, seeds : base seed; `seeds` > 1 averages that many fits per task (seed bagging).
    n_jobs, executor : parallel (target, fold) fits through joblib processes or Ray.
    resume : where finished fits are saved as they return and loaded from on a rerun.
    target_params : optional per-target overrides of `params` (one mapping per column of Y),
        e.g. a slower learning rate for one axis; not for a multi-output learner.
    target_columns : optional, per column of Y, the indices of the feature columns its models
        see (None: every column), e.g. the grade statistics for z only; not for a multi-output
        learner.
    """
    columns = list(X_train.columns)
    X, Xt, cats = encode_features(X_train, X_test, columns)
    Y = np.asarray(Y, dtype=float)
    base_train = np.zeros_like(Y) if baseline_train is None else np.asarray(baseline_train, float)
    base_test = (np.zeros((len(Xt), Y.shape[1])) if baseline_test is None
                 else np.asarray(baseline_test, float))
    scale_train = np.ones_like(Y) if scale_train is None else np.asarray(scale_train, float)
    scale_test = np.ones_like(base_test) if scale_test is None else np.asarray(scale_test, float)
    fold_ids = sorted(int(f) for f in np.unique(folds))
    groups = np.arange(len(X)) if groups is None else np.asarray(groups)
    stopping = {"fraction": stop_fraction, "refit": refit, "seed": seed}
    learner_kwargs = {"params": params, "categorical_features": cats,
                      "early_stopping_rounds": early_stopping_rounds, "random_state": seed,
                      "n_threads": threads_per_fit, "device": device}

    def columns_of(target: int) -> np.ndarray | None:
        return None if target_columns is None or target == ALL_TARGETS else target_columns[target]

    def kwargs_of(target: int) -> dict[str, Any]:
        kwargs = dict(learner_kwargs)
        if target_params is not None and target_params[target]:
            kwargs["params"] = {**params, **target_params[target]}
        kept = columns_of(target)
        if kept is not None:  # the categorical columns' positions among those kept
            position = {int(j): i for i, j in enumerate(kept)}
            kwargs["categorical_features"] = tuple(position[j] for j in cats if j in position)
        return kwargs

    # A multi-output learner: one task per fold for all targets; else one per (target, fold).
    multi_output = LEARNERS.get(learner_key).multi_output
    for name, what, per_target in (("target_params", "mapping", target_params),
                                   ("target_columns", "column list", target_columns)):
        if per_target is not None and (multi_output or len(per_target) != Y.shape[1]):
            raise ValueError(f"{name} needs one {what} per target ({Y.shape[1]}) and a learner "
                             f"with one model per target; got {len(per_target)} for {learner_key}")
    task_targets = [ALL_TARGETS] if multi_output else range(Y.shape[1])
    # Fold by fold: a worker's consecutive fits then share their training rows, which LightGBM
    # and XGBoost bin once per worker and reuse (learners.binned_datasets).
    all_tasks = [(t, f) for f in fold_ids for t in task_targets]
    done = [r for r in (resume.load(t, f) for t, f in all_tasks) if r is not None] if resume else []
    finished = {(r["target"], r["fold"]) for r in done}
    tasks_of = [task for task in all_tasks if task not in finished]

    def execute() -> list[dict[str, Any]]:
        shared = SharedArrays({"X": X, "X_test": Xt, "Y": (Y - base_train) / scale_train,
                               "folds": np.asarray(folds), "groups": groups},
                              use_ray=executor == "ray")
        tasks = [(shared, t, f, learner_key, kwargs_of(t), stopping, seeds, columns_of(t))
                 for t, f in tasks_of]
        return run_tasks(fit_one, tasks, n_jobs=n_jobs, executor=executor,
                         desc=f"{learner_key} fits", on_result=resume.save if resume else None)

    if not tasks_of:
        results = done
    elif executor == "ray":
        with ray_session(ray_address, n_jobs):
            results = done + execute()
    else:
        results = done + execute()

    oof = np.full(Y.shape, np.nan)
    test = np.zeros((len(Xt), Y.shape[1]))
    gain = np.zeros((len(columns), Y.shape[1]))
    best = pd.DataFrame(index=target_names, columns=[f"fold{f}" for f in fold_ids], dtype=float)
    for r in results:
        # A multi-output fit fills every target column (its importance is shared by all).
        multi = r["target"] == ALL_TARGETS
        t = slice(None) if multi else r["target"]
        importance = np.asarray(r["importance"], dtype=float)
        oof[r["valid_rows"], t] = r["valid_pred"]
        test[:, t] += r["test_pred"] / len(fold_ids)
        gain[:, t] += (importance[:, None] if multi else importance) / len(fold_ids)
        best.loc[target_names[t], f"fold{r['fold']}"] = r["best_iteration"]
    oof = oof * scale_train + base_train
    test = test * scale_test + base_test
    importance = pd.DataFrame(gain, index=columns, columns=target_names)
    return CVResult(oof, test, fold_scores(Y, oof, folds, fold_ids), importance, best)


def fold_scores(Y: np.ndarray, oof: np.ndarray, folds: np.ndarray, fold_ids: list[int]
                ) -> dict[str, Any]:
    """MAE over every labelled cell, overall and per fold."""
    err = np.abs(Y - oof)

    def mean(values: np.ndarray) -> float:
        finite = values[np.isfinite(values)]
        return float(finite.mean()) if finite.size else float("nan")

    return {"mae": mean(err),
            "per_fold": {f"fold{f}": mean(err[np.asarray(folds) == f]) for f in fold_ids}}
