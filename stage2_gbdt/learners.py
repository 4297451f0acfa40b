"""Stage-2 learners: LightGBM, XGBoost, CatBoost (and, for blend diversity, ridge and extra
trees from scikit-learn) behind one scikit-learn estimator contract.

Each is registered by string key (`create_learner("xgboost", params=...)`); an unknown key
fails listing the valid ones. Constructor arguments are stored untouched (scikit-learn's
contract); `params` are passed to the library's own regressor (LightGBM and XGBoost: to
`lightgbm.train` / `xgboost.train`, which take their regressors' names), so any library option
(GPU flags included) goes through. `fit(X, y, eval_set=[(X_valid, y_valid)])` early-stops on MAE over the
validation rows (stage 2 passes an inner holdout of the training scenes, never the scored fold);
`feature_importances_` is the total gain per feature. `with_rounds(n)` is the same learner fixed
at n rounds (the refit after early stopping).

X is a float matrix; `categorical_features` are column indices holding non-negative integer
codes (NaN: missing), which each library treats as categories natively.

Most learners fit one target (y is 1-D). A learner with `multi_output = True` (`catboost_multi`)
fits every target at once: y is (n_rows, n_targets) and `predict` returns that shape; stage 2
then fits one model per fold instead of one per (target, fold).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, RegressorMixin

from trajstack.io import array_hash, data_hash
from trajstack.registry import Registry

LEARNERS: Registry[type[GBDTRegressor]] = Registry("stage-2 learner")


class GBDTRegressor(RegressorMixin, BaseEstimator):
    """Common contract of the stage-2 learners.

    Parameters
    ----------
    params : keyword arguments of the library's regressor (from configs/stage2/<key>.yaml).
    categorical_features : indices of the columns of X that hold category codes.
    early_stopping_rounds : patience on the validation MAE; 0 disables early stopping.
    random_state : seed; with a fixed seed and thread count, fits are deterministic.
    n_threads : threads inside one fit.
    device : "gpu" adds the library's GPU switch (`gpu_params`) to `params`.
    """

    gpu_params: ClassVar[dict[str, Any]] = {}
    # The library param that fixes the number of boosting rounds (a refit uses the found one).
    rounds_param: ClassVar[str] = "n_estimators"
    # True: `fit` takes every target at once (y of shape (n_rows, n_targets)).
    multi_output: ClassVar[bool] = False
    # False: no boosting rounds to stop early (ridge, random trees); stage 2 then fits once on
    # all the training rows and never draws an early-stopping holdout.
    uses_rounds: ClassVar[bool] = True

    def __init__(self, params: dict[str, Any] | None = None, categorical_features: tuple[int, ...] = (),
                 early_stopping_rounds: int = 100, random_state: int = 0, n_threads: int = 1,
                 device: str = "cpu"):
        self.params = params
        self.categorical_features = categorical_features
        self.early_stopping_rounds = early_stopping_rounds
        self.random_state = random_state
        self.n_threads = n_threads
        self.device = device

    def library_params(self) -> dict[str, Any]:
        params = dict(self.params or {})
        if self.device == "gpu":
            params = {**self.gpu_params, **params}
        return params

    def with_rounds(self, rounds: int) -> GBDTRegressor:
        """A fresh copy of this learner that fits exactly `rounds` rounds (no early stopping)."""
        params = {**(self.params or {}), self.rounds_param: int(rounds)}
        return type(self)(**{**self.get_params(), "params": params, "early_stopping_rounds": 0})

    def _stopping(self, eval_set: list | None) -> int:
        return self.early_stopping_rounds if eval_set and self.early_stopping_rounds > 0 else 0

    def _labelled_data(self, binner: Binner, X: np.ndarray, y: np.ndarray, eval_set: list | None,
                       rounds: int, params: dict[str, Any], categorical: Any) -> tuple[Any, Any]:
        """The cached binned data of X and (when stopping early) the one validation set, with
        this fit's labels set (`binned_datasets`); the validation data is None without stopping."""
        if rounds and len(eval_set) != 1:
            raise ValueError(f"{type(self).__name__} early-stops on one validation set, got {len(eval_set)}")
        X_valid, y_valid = eval_set[0] if rounds else (None, None)
        train_set, valid_set = binned_datasets(binner, X, X_valid, params, categorical)
        train_set.set_label(y)
        if valid_set is not None:
            valid_set.set_label(y_valid)
        return train_set, valid_set

    def fit(self, X: np.ndarray, y: np.ndarray, eval_set: list | None = None) -> GBDTRegressor:
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model_.predict(X), dtype=float)


# Training data already binned in this process, newest last (see `binned_datasets`).
_BINNED: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
# Enough for a fold's early-stopping rows and its refit rows, under up to four parameter or
# column sets (`stage2.axis_params`, `stage2.axis_drop_columns`: a worker's fits alternate axes).
BINNED_CACHE_SIZE = 8

# A library's binning: (X, X_valid or None, params, categorical) -> (train data, valid data or None).
Binner = Callable[[np.ndarray, "np.ndarray | None", dict[str, Any], Any], tuple[Any, Any]]


def binned_datasets(binner: Binner, X: np.ndarray, X_valid: np.ndarray | None,
                    params: dict[str, Any], categorical: Any) -> tuple[Any, Any]:
    """The library's binned (quantised) training data of `X` and the validation rows `X_valid`
    (binned with X's bins; None: no validation set), made by `binner` and reused while this
    process has them.

    Binning is most of a small fit's fixed cost (LightGBM, 35,000 x 473 floats: ~2.5 CPU-s),
    and every target of a fold trains on the same rows: the caller sets each fit's labels
    (LightGBM's `Dataset.set_label`, XGBoost's `DMatrix.set_label`). The key is the binner,
    the arrays' contents, every param and the categorical columns, so data is only ever handed
    back to the library that made it, for the very rows and bins it was made from.

    Parameters
    ----------
    binner : the library's builder (`lightgbm_datasets`, `xgboost_matrices`).
    X, X_valid : training rows; validation rows or None.
    params : the library params of the fit, less the number of rounds (a refit's rounds must
        not make its rows look new).
    categorical : the categorical columns as the binner takes them.
    """
    key = data_hash([f"{binner.__module__}.{binner.__qualname__}", array_hash(X, X_valid),
                     params, categorical])
    if key in _BINNED:
        _BINNED.move_to_end(key)
        return _BINNED[key]
    _BINNED[key] = binned = binner(X, X_valid, params, categorical)
    while len(_BINNED) > BINNED_CACHE_SIZE:
        _BINNED.popitem(last=False)
    return binned


def lightgbm_datasets(X: np.ndarray, X_valid: np.ndarray | None, params: dict[str, Any],
                      categorical: list[int] | str) -> tuple[Any, Any]:
    """Constructed (binned) LightGBM Datasets of X and X_valid (with X's bins), labels unset."""
    import lightgbm as lgb

    # Labels are placeholders (each fit sets its own); LightGBM bins without them.
    train = lgb.Dataset(X, label=np.zeros(len(X)), params=params,
                        categorical_feature=categorical).construct()
    valid = None if X_valid is None else lgb.Dataset(
        X_valid, label=np.zeros(len(X_valid)), reference=train, params=params,
        categorical_feature=categorical).construct()
    return train, valid


def xgboost_matrices(X: np.ndarray, X_valid: np.ndarray | None, params: dict[str, Any],
                     categorical: list[int]) -> tuple[Any, Any]:
    """XGBoost's QuantileDMatrix of X, built as `XGBRegressor.fit` builds it (same max_bin,
    threads, missing, feature types: the same trees), and a plain DMatrix of X_valid; labels
    unset.

    The validation rows only score each round: XGBRegressor quantises them with X's cuts
    (`ref=`), but predicting from quantised rows is slower, and a tree routes a raw value and
    its bin the same way (its split values are X's cuts), so the metric, the best round and
    the predictions are the same (tests). Demo, fold 0, 4 targets: 22-30% less CPU per
    early-stopping fit.
    """
    import xgboost as xgb

    cats = set(categorical)
    kwargs = {"nthread": params.get("n_jobs"), "enable_categorical": bool(cats),
              "feature_types": ["c" if j in cats else "q" for j in range(X.shape[1])] if cats else None}
    train = xgb.QuantileDMatrix(X, max_bin=params.get("max_bin"), **kwargs)
    valid = None if X_valid is None else xgb.DMatrix(X_valid, **kwargs)
    return train, valid


@LEARNERS.register("lightgbm")
class LightGBMRegressor(GBDTRegressor):
    """LightGBM; default objective `l1` (MAE), early stopping on the l1 metric.

    Trains with `lightgbm.train` on Datasets binned once per process for the same rows and
    params (`binned_datasets`): the targets of a fold share their binning. Predictions equal
    `lightgbm.LGBMRegressor`'s with the same params (the sklearn names are LightGBM aliases).
    """

    gpu_params: ClassVar[dict[str, Any]] = {"device_type": "gpu"}

    def fit(self, X, y, eval_set=None):
        import lightgbm as lgb

        # Row-wise histograms + deterministic: the same seed gives the same trees.
        params = {"objective": "l1", "metric": "l1", "verbosity": -1, "deterministic": True,
                  "force_row_wise": True, **self.library_params(),
                  "random_state": self.random_state, "n_jobs": self.n_threads}
        n_rounds = params.pop("n_estimators", 100)  # LGBMRegressor's default
        rounds = self._stopping(eval_set)
        train_set, valid_set = self._labelled_data(lightgbm_datasets, X, y, eval_set, rounds, params,
                                                   list(self.categorical_features) or "auto")
        callbacks = [lgb.early_stopping(rounds, first_metric_only=True, verbose=False)] if rounds else []
        booster = lgb.train(params, train_set, num_boost_round=n_rounds,
                            valid_sets=[valid_set] if valid_set is not None else None,
                            callbacks=callbacks)
        booster.free_dataset()  # the binned data stays in the cache, not in the model
        self.model_ = booster
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        self.feature_importances_ = booster.feature_importance("gain").astype(float)
        return self

    def predict(self, X):
        return np.asarray(self.model_.predict(X, num_threads=self.n_threads), dtype=float)


@LEARNERS.register("xgboost")
class XGBoostRegressor(GBDTRegressor):
    """XGBoost; default objective `reg:absoluteerror`, early stopping on `mae`.

    Trains with `xgboost.train` on a QuantileDMatrix quantised once per process for the same
    rows and params (`binned_datasets`, `xgboost_matrices`): the targets of a fold share it.
    Predictions, best round and gain equal `xgboost.XGBRegressor`'s with the same params (the
    same training matrix and `train`; the early-stopping rows see `xgboost_matrices`), predicting
    with the trees up to the best round as it does.
    """

    gpu_params: ClassVar[dict[str, Any]] = {"device": "cuda"}

    def fit(self, X, y, eval_set=None):
        import xgboost as xgb

        rounds = self._stopping(eval_set)
        params = {"objective": "reg:absoluteerror", "eval_metric": "mae", "tree_method": "hist",
                  **self.library_params(), "random_state": self.random_state,
                  "n_jobs": self.n_threads}
        n_rounds = params.pop("n_estimators", 100)  # XGBRegressor's default
        train_set, valid_set = self._labelled_data(xgboost_matrices, X, y, eval_set, rounds, params,
                                                   sorted(self.categorical_features))
        evals = [(valid_set, "valid")] if valid_set is not None else []
        booster = xgb.train(params, train_set, num_boost_round=n_rounds, evals=evals,
                            early_stopping_rounds=rounds or None, verbose_eval=False)
        self.model_ = booster
        self.best_iteration_ = int(booster.best_iteration + 1 if rounds
                                   else booster.num_boosted_rounds())
        gain = booster.get_score(importance_type="total_gain")
        self.feature_importances_ = np.array([gain.get(f"f{j}", 0.0) for j in range(X.shape[1])])
        return self

    def predict(self, X):
        # Early stopping keeps training `rounds` past the best round: predict with the best.
        return np.asarray(self.model_.inplace_predict(X, iteration_range=(0, self.best_iteration_)),
                          dtype=float)


@LEARNERS.register("catboost")
class CatBoostRegressor(GBDTRegressor):
    """CatBoost; default loss `MAE`, early stopping with the best model kept.

    Importance is CatBoost's PredictionValuesChange (its default; a gain-like measure).
    """

    gpu_params: ClassVar[dict[str, Any]] = {"task_type": "GPU"}
    rounds_param: ClassVar[str] = "iterations"

    def _frame(self, X: np.ndarray) -> pd.DataFrame:
        # CatBoost wants integer/string categories, not float codes; -1 stands for missing.
        frame = pd.DataFrame(X)
        for j in self.categorical_features:
            frame[j] = np.nan_to_num(frame[j].to_numpy(), nan=-1).astype(np.int64)
        return frame

    def fit(self, X, y, eval_set=None):
        import catboost as cb

        rounds = self._stopping(eval_set)
        params = {"loss_function": "MAE", "verbose": False, "allow_writing_files": False,
                  **self.library_params(), "random_seed": self.random_state,
                  "thread_count": self.n_threads}
        self.model_ = cb.CatBoostRegressor(**params)
        evals = [(self._frame(Xv), yv) for Xv, yv in eval_set] if rounds else None
        self.model_.fit(self._frame(X), y, cat_features=list(self.categorical_features) or None,
                        eval_set=evals[0] if evals else None,
                        early_stopping_rounds=rounds or None, use_best_model=bool(rounds))
        self.best_iteration_ = int(self.model_.get_best_iteration() + 1 if rounds
                                   else self.model_.tree_count_)
        self.feature_importances_ = np.asarray(self.model_.get_feature_importance(), dtype=float)
        return self

    def predict(self, X):
        return np.asarray(self.model_.predict(self._frame(X)), dtype=float)


@LEARNERS.register("catboost_multi")
class CatBoostMultiRegressor(CatBoostRegressor):
    """CatBoost with one model for all targets (default loss `MultiRMSE`, early stopping on it).

    Every tree splits on all targets at once: one fit per fold instead of one per (target,
    fold), and the targets share what they learn; the price is a squared-error loss (CatBoost
    has no multi-target MAE), so it predicts means where the per-target learners predict medians.
    """

    multi_output: ClassVar[bool] = True

    def library_params(self) -> dict[str, Any]:
        return {"loss_function": "MultiRMSE", **super().library_params()}

    def fit(self, X, y, eval_set=None):
        if np.ndim(y) != 2:
            raise ValueError(f"{type(self).__name__} fits all targets at once: y must be 2-D "
                             f"(n_rows, n_targets), got shape {np.shape(y)}")
        return super().fit(X, y, eval_set=eval_set)


class RoundlessRegressor(GBDTRegressor):
    """Base of learners with no rounds to stop early: `eval_set` is ignored, and
    `best_iteration_` is the model's size (`n_estimators`, 0 for a linear model)."""

    uses_rounds: ClassVar[bool] = False

    def with_rounds(self, rounds: int) -> GBDTRegressor:
        return type(self)(**{**self.get_params(), "early_stopping_rounds": 0})


@LEARNERS.register("ridge")
class RidgeRegressor(RoundlessRegressor):
    """Ridge regression on standardised features, the penalty chosen by efficient leave-one-out
    CV on the training rows (scikit-learn's `RidgeCV`, `params` are its arguments).

    A linear model errs differently from trees (it extrapolates smoothly and never splits), so
    it earns blend weight even where it is weaker alone. Missing values become the training
    median (after the standardisation: 0) and categorical codes one-hot columns (a missing code:
    all zeros). Importance: |coefficient| of each standardised column (summed over a category's
    one-hot columns).
    """

    def _filled(self, X: np.ndarray) -> np.ndarray:
        """The numeric columns with each missing value set to the training median."""
        return np.where(np.isnan(X[:, self.numeric_]), self.center_, X[:, self.numeric_])

    def _design(self, X: np.ndarray) -> np.ndarray:
        numeric = (self._filled(X) - self.center_) / self.scale_
        onehot = [X[:, j][:, None] == levels[None, :] for j, levels in self.levels_.items()]
        return np.hstack([numeric, *onehot]) if onehot else numeric

    def fit(self, X, y, eval_set=None):
        from sklearn.linear_model import RidgeCV

        X = np.asarray(X, dtype=float)
        cats = set(self.categorical_features)
        self.numeric_ = np.array([j for j in range(X.shape[1]) if j not in cats], dtype=int)
        self.levels_ = {j: np.unique(X[~np.isnan(X[:, j]), j]) for j in sorted(cats)}
        with np.errstate(all="ignore"):  # an all-missing column: median NaN, set to 0 below
            center = np.nanmedian(X[:, self.numeric_], axis=0)
        self.center_ = np.nan_to_num(center)
        scale = self._filled(X).std(axis=0)
        self.scale_ = np.where(scale > 0, scale, 1.0)
        params = {"alphas": (0.1, 1.0, 10.0, 100.0, 1000.0), **self.library_params()}
        self.model_ = RidgeCV(**{k: tuple(v) if isinstance(v, list) else v
                                 for k, v in params.items()}).fit(self._design(X), y)
        coef = np.abs(self.model_.coef_)
        importance = np.zeros(X.shape[1])
        importance[self.numeric_] = coef[:len(self.numeric_)]
        start = len(self.numeric_)
        for j, levels in self.levels_.items():
            importance[j] = coef[start:start + len(levels)].sum()
            start += len(levels)
        self.feature_importances_ = importance
        self.best_iteration_ = 0
        return self

    def predict(self, X):
        return np.asarray(self.model_.predict(self._design(np.asarray(X, dtype=float))), dtype=float)


@LEARNERS.register("extra_trees")
class ExtraTreesRegressor(RoundlessRegressor):
    """scikit-learn's ExtraTreesRegressor (`params` are its arguments): averaged random-split
    trees, no boosting. Its errors correlate less with the boosted learners' than theirs with
    each other's, which is what a blend feeds on. Missing values go down the trees natively;
    category codes are split on as numbers. Importance: impurity decrease."""

    def fit(self, X, y, eval_set=None):
        from sklearn.ensemble import ExtraTreesRegressor as Trees

        params = {"n_estimators": 100, **self.library_params(),
                  "random_state": self.random_state, "n_jobs": self.n_threads}
        self.model_ = Trees(**params).fit(X, y)
        self.best_iteration_ = int(params["n_estimators"])
        self.feature_importances_ = np.asarray(self.model_.feature_importances_, dtype=float)
        return self


def create_learner(key: str, **kwargs: Any) -> GBDTRegressor:
    """The learner registered under `key`, built with `kwargs` (see `GBDTRegressor`)."""
    return LEARNERS.get(key)(**kwargs)
