"""LightGBM and XGBoost bin (quantise) a fold's training rows once for all its targets (issue
15): the same predictions as the library's own regressor, binned data handed back only for the
very rows and params (and library) it was made from, and stage 2's fits ordered fold by fold so
that workers reuse it."""

import inspect

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb
from test_stage2 import SMALL, synthetic

import stage2_gbdt.cv as cv_module
from stage2_gbdt import learners
from stage2_gbdt.cv import cross_validate, encode_features
from stage2_gbdt.learners import create_learner
from trajstack.io import array_hash

PARAMS = {**SMALL["lightgbm"], "n_estimators": 60, "subsample": 0.7, "subsample_freq": 1,
          "colsample_bytree": 0.7, "max_bin": 31, "objective": "huber", "alpha": 0.5}
XGB_PARAMS = {**SMALL["xgboost"], "n_estimators": 60, "subsample": 0.7, "colsample_bytree": 0.7,
              "max_bin": 31, "objective": "reg:pseudohubererror", "huber_slope": 0.5}


# Per library: its stage-2 params here, and the classes of its training and validation data
# (XGBoost: a QuantileDMatrix and a plain DMatrix, whose __init__ the quantised one does not call).
LIBRARIES = {"lightgbm": (PARAMS, (lgb.Dataset,)), "xgboost": (XGB_PARAMS, (xgb.QuantileDMatrix, xgb.DMatrix))}


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch):
    """Each test starts with nothing binned (and leaves the module's cache as it was)."""
    monkeypatch.setattr(learners, "_BINNED", type(learners._BINNED)())


def counted(monkeypatch, classes):
    """The list of objects of `classes` created from here on."""
    made = []
    for cls in classes:
        def counting(self, *args, _init=cls.__init__, **kwargs):
            made.append(self)
            _init(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting)
    return made


def matrices(n=400, seed=0):
    """A float32 matrix with a categorical column and NaNs, and two unlike targets."""
    X, _, _ = synthetic(n=n, seed=seed)
    rng = np.random.default_rng(seed)
    X["c"] = rng.normal(size=n)
    matrix, _, cats = encode_features(X, X, list(X.columns))
    y = np.stack([matrix[:, 0] * 2 + rng.normal(size=n), np.sin(3 * matrix[:, 3]) + 0.1 * rng.normal(size=n)], 1)
    return matrix, y, cats


def ours(key, X, y, cats, X_stop, y_stop, params=None, early_stopping_rounds=5):
    return create_learner(key, params=params or LIBRARIES[key][0], categorical_features=cats,
                          early_stopping_rounds=early_stopping_rounds, random_state=3
                          ).fit(X, y, eval_set=[(X_stop, y_stop)])


def libraries(key, X, y, cats, X_stop, y_stop, params=None, early_stopping_rounds=5):
    """The library's own scikit-learn regressor with the learner's settings: the reference."""
    params = params or LIBRARIES[key][0]
    if key == "xgboost":
        types = ["c" if j in cats else "q" for j in range(X.shape[1])]
        settings = {"objective": "reg:absoluteerror", "eval_metric": "mae", "tree_method": "hist",
                    **params, "random_state": 3, "n_jobs": 1,
                    "early_stopping_rounds": early_stopping_rounds or None}
        return xgb.XGBRegressor(**settings, enable_categorical=True, feature_types=types).fit(X, y, eval_set=[(X_stop, y_stop)] if early_stopping_rounds else None, verbose=False)
    settings = {"objective": "l1", "metric": "l1", "verbosity": -1, "deterministic": True,
                "force_row_wise": True, **params, "random_state": 3, "n_jobs": 1}
    # LightGBM >= 4.7 takes eval_X/eval_y (eval_set is deprecated there).
    new_api = "eval_X" in inspect.signature(lgb.LGBMRegressor.fit).parameters
    evals = {"eval_X": (X_stop,), "eval_y": (y_stop,)} if new_api else {"eval_set": [(X_stop, y_stop)]}
    return lgb.LGBMRegressor(**settings).fit(
        X, y, categorical_feature=list(cats), **evals,
        callbacks=[lgb.early_stopping(5, first_metric_only=True, verbose=False)])


def library_facts(key, reference):
    """(best iteration as the learner counts it: rounds kept, gain importance) of a reference."""
    if key == "xgboost":
        gain = reference.get_booster().get_score(importance_type="total_gain")
        n_features = reference.n_features_in_
        return reference.best_iteration + 1, np.array([gain.get(f"f{j}", 0.0) for j in range(n_features)])
    return reference.best_iteration_, reference.booster_.feature_importance("gain")


@pytest.mark.parametrize("key", LIBRARIES)
def test_targets_on_the_same_rows_share_one_binning_and_predict_as_the_library_does(key, monkeypatch):
    made = counted(monkeypatch, LIBRARIES[key][1])
    X, Y, cats = matrices()
    fit, stop = slice(0, 300), slice(300, 360)
    models = [ours(key, X[fit], y[fit], cats, X[stop], y[stop]) for y in Y.T]
    assert len(made) == 2  # the training and the stopping rows, binned once for both targets
    for model, y in zip(models, Y.T, strict=True):
        reference = libraries(key, X[fit], y[fit], cats, X[stop], y[stop])
        # bit-identical: same bins, same trees, same rounds
        np.testing.assert_array_equal(model.predict(X[360:]), reference.predict(X[360:]))
        best, gain = library_facts(key, reference)
        assert model.best_iteration_ == best
        np.testing.assert_array_equal(model.feature_importances_, gain)
    assert min(m.best_iteration_ for m in models) < LIBRARIES[key][0]["n_estimators"]  # one stopped early
    assert not np.array_equal(models[0].predict(X), models[1].predict(X))  # each its own labels


def test_xgboost_refits_at_a_fixed_round_count_as_its_regressor_does(monkeypatch):
    # The refit after early stopping: no validation rows, every round kept; its rounds are not
    # part of the key (each target stops at its own round on the same rows).
    made = counted(monkeypatch, LIBRARIES["xgboost"][1])
    X, Y, cats = matrices()
    models = [create_learner("xgboost", params=XGB_PARAMS, categorical_features=cats,
                             random_state=3).with_rounds(rounds).fit(X[:360], y[:360])
              for rounds, y in zip((17, 31), Y.T, strict=True)]
    assert len(made) == 1
    for model, rounds, y in zip(models, (17, 31), Y.T, strict=True):
        assert model.best_iteration_ == rounds
        reference = libraries("xgboost", X[:360], y[:360], cats, None, None,
                              {**XGB_PARAMS, "n_estimators": rounds}, early_stopping_rounds=0)
        np.testing.assert_array_equal(model.predict(X[360:]), reference.predict(X[360:]))


@pytest.mark.parametrize("key", LIBRARIES)
@pytest.mark.parametrize("change", ["other rows", "one value", "stopping rows", "max_bin"])
def test_binned_data_is_reused_only_for_its_own_rows_and_params(key, change, monkeypatch):
    # A fold's neighbour has as many rows and the same params: only the contents tell them
    # apart, so a key on the fold's number, the row count or the params alone fails here.
    made = counted(monkeypatch, LIBRARIES[key][1])
    X, Y, cats = matrices(n=480)
    y = Y[:, 0]
    first = np.arange(0, 200)
    ours(key, X[first], y[first], cats, X[400:440], y[400:440])
    params = LIBRARIES[key][0]
    X_fit, X_stop, y_fit, y_stop = X[first].copy(), X[400:440], y[first], y[400:440]
    if change == "other rows":
        rows = np.arange(200, 400)
        X_fit, y_fit = X[rows], y[rows]
    elif change == "one value":
        X_fit[17, 1] += 1.0
    elif change == "stopping rows":
        X_stop, y_stop = X[440:480], y[440:480]
    else:
        params = {**params, "max_bin": 7}
    made_before = len(made)
    model = ours(key, X_fit, y_fit, cats, X_stop, y_stop, params)
    assert len(made) > made_before  # binned anew
    reference = libraries(key, X_fit, y_fit, cats, X_stop, y_stop, params)
    np.testing.assert_array_equal(model.predict(X), reference.predict(X))


def test_binned_data_goes_back_only_to_the_library_that_made_it():
    X, _, cats = matrices()
    params = {"max_bin": 31, "n_jobs": 1}
    lightgbm_train, _ = learners.binned_datasets(learners.lightgbm_datasets, X, None, params, list(cats))
    xgboost_train, _ = learners.binned_datasets(learners.xgboost_matrices, X, None, params, list(cats))
    assert isinstance(lightgbm_train, lgb.Dataset) and isinstance(xgboost_train, xgb.QuantileDMatrix)


@pytest.mark.parametrize("key", LIBRARIES)
def test_stage2_results_are_the_same_with_and_without_reused_binning(key, monkeypatch):
    # The synthetic labels miss a row of target 0 only: its training rows differ from target
    # 1's in every fold, which must not share a binning (a key on fold and seed would).
    X, Y, folds = synthetic(n=320)
    for refit in (True, False):
        kwargs = {"early_stopping_rounds": 5, "refit": refit, "seed": 2, "n_jobs": 1,
                  "target_names": ["t0", "t1"]}
        reused = cross_validate(key, LIBRARIES[key][0], X, Y, X.iloc[:30], folds, **kwargs)
        monkeypatch.setattr(learners, "_BINNED", type(learners._BINNED)())
        monkeypatch.setattr(learners, "BINNED_CACHE_SIZE", 0)  # every fit bins its own rows
        fresh = cross_validate(key, LIBRARIES[key][0], X, Y, X.iloc[:30], folds, **kwargs)
        monkeypatch.setattr(learners, "BINNED_CACHE_SIZE", 4)
        np.testing.assert_array_equal(reused.oof, fresh.oof)
        np.testing.assert_array_equal(reused.test, fresh.test)
        np.testing.assert_array_equal(reused.best_iterations.to_numpy(), fresh.best_iterations.to_numpy())


def test_fits_are_handed_to_the_workers_fold_by_fold(monkeypatch):
    # A worker then meets the same training rows in its next fits and reuses their binning.
    seen = []

    def record(fn, tasks, **kwargs):
        seen.extend((task[1], task[2]) for task in tasks)
        return [fn(*task) for task in tasks]

    monkeypatch.setattr(cv_module, "run_tasks", record)
    X, Y, folds = synthetic()
    cross_validate("lightgbm", SMALL["lightgbm"], X, Y, X.iloc[:5], folds, target_names=["t0", "t1"],
                   early_stopping_rounds=5)
    assert seen == [(t, f) for f in range(4) for t in range(2)]


def test_array_hash_tells_apart_values_shapes_dtypes_and_positions():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert array_hash(a, None) == array_hash(a.copy(), None)
    assert array_hash(a[:, :2]) == array_hash(np.ascontiguousarray(a[:, :2]))  # a view hashes its values
    changed = a.copy()
    changed[2, 3] = np.nextafter(changed[2, 3], np.float32(100))
    others = [changed, a.reshape(4, 3), a.astype(np.float64), a[:2]]
    assert len({array_hash(x) for x in [a, *others]}) == 5
    assert array_hash(a, None) != array_hash(None, a) != array_hash(a)
