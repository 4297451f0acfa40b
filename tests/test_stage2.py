"""Stage 2: learners swappable by config, OOF honesty, determinism, Ray == joblib, fold checks,
and telemetry-only data with NaN / missing columns end to end."""

import re

import numpy as np
import pandas as pd
import pytest
import yaml
from dataset_factory import make_tiny_dataset
from sklearn.base import clone
from test_features_stage1 import write_fake_stage1_run

from stage2_gbdt.cv import cross_validate, encode_features
from stage2_gbdt.learners import LEARNERS, GBDTRegressor, LightGBMRegressor, create_learner
from stage2_gbdt.params import params_file, run_config, target_columns, target_params
from stage2_gbdt.resume import FitStore
from stage2_gbdt.train import fit_learner, parse_learners, prepare, target_baseline
from trajstack.artifacts import OOF_FILE, TEST_FILE
from trajstack.cli import main as cli_main
from trajstack.config import ConfigError, load_config
from trajstack.folds import load_folds
from trajstack.physics import per_metre_scale
from trajstack.registry import RegistryError
from trajstack.tables import read_table

SMALL = {
    "lightgbm": {"n_estimators": 25, "num_leaves": 4, "min_child_samples": 3, "learning_rate": 0.2},
    "xgboost": {"n_estimators": 25, "max_depth": 2, "learning_rate": 0.2},
    "catboost": {"iterations": 25, "depth": 2, "learning_rate": 0.3},
    "catboost_multi": {"iterations": 25, "depth": 2, "learning_rate": 0.3},
    "ridge": {"alphas": [0.1, 1.0, 10.0]},
    "extra_trees": {"n_estimators": 25, "max_features": 0.7, "min_samples_leaf": 2},
}
FAST = ["folds.n_splits=3", "stage2.n_jobs=1", "stage2.early_stopping_rounds=5",
        "stage2.without_stage1=[]", "stage2.variants={}",
        "features.builders=[telemetry, scene_lags, physics, traffic_lights]",
        *(f"stage2.params.{k}={v}" for k, v in SMALL.items())]


def main(argv):
    """`trajstack stage2 ...` through the CLI and its error boundary (a project error: exit 2)."""
    return cli_main(["stage2", *argv])


def synthetic(n=240, n_targets=2, seed=0):
    """Features with a categorical column, smooth targets, 4 folds."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                      "gear": pd.Categorical(rng.choice(["d", "p"], size=n), categories=["d", "p", "r"])})
    X.loc[::7, "b"] = np.nan
    Y = np.stack([2 * X["a"] + (X["gear"] == "p") * 3 + 0.1 * rng.normal(size=n)
                  for _ in range(n_targets)], axis=1)
    Y[5, 0] = np.nan  # an unlabelled row is predicted, never fitted on
    return X, Y, np.arange(n) % 4


def cv(key="lightgbm", params=None, **kwargs):
    X, Y, folds = synthetic()
    kwargs.setdefault("early_stopping_rounds", 5)
    return cross_validate(key, params or SMALL[key], X, Y, X.iloc[:30], folds,
                          target_names=["t0", "t1"], **kwargs)


def test_every_registered_learner_has_small_test_params():
    assert set(SMALL) == set(LEARNERS.keys())  # so the registry-driven tests below cover it


@pytest.mark.parametrize("key", LEARNERS.keys())
def test_each_learner_trains_and_predicts(key):
    X, Y, _ = synthetic()
    result = cv(key)
    assert result.oof.shape == Y.shape and result.test.shape == (30, 2)
    assert np.isfinite(result.oof).all() and np.isfinite(result.test).all()
    assert result.scores["mae"] < 0.5 * np.nanmean(np.abs(Y - np.nanmean(Y, 0)))  # it learnt
    assert list(result.importance.index) == ["a", "b", "gear"]
    assert result.importance.loc["a"].min() > result.importance.loc["b"].max()
    no_stopping = cv(key, early_stopping_rounds=0)  # fixed number of trees
    rounds = 25 if key != "ridge" else 0  # a linear model has no rounds
    assert (no_stopping.best_iterations.to_numpy() == rounds).all()
    model = create_learner(key, params={"x": 1}, random_state=3)
    assert clone(model).get_params()["params"] == {"x": 1}  # scikit-learn estimator contract


def test_unknown_learner_lists_valid_keys(tmp_path):
    valid = ", ".join(LEARNERS.keys())
    assert "catboost_multi" in valid
    with pytest.raises(RegistryError, match=f"unknown stage-2 learner 'lgbm'.*{re.escape(valid)}$"):
        create_learner("lgbm")
    assert main(["--learner", "lgbm", f"output_dir={tmp_path}"]) == 2


def test_learner_selection_from_command_line_or_config():
    cfg = load_config("demo", ["stage2.learners=[catboost]"])
    assert parse_learners(None, cfg) == ["catboost"]
    assert parse_learners(["lightgbm,xgboost", "lightgbm"], cfg) == ["lightgbm", "xgboost"]
    with pytest.raises(RegistryError, match="valid keys"):
        parse_learners(["lightgbm,xgb"], cfg)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), n_scenes=15, rows_per_scene=4,
                             n_test_scenes=3, seed=2)


def _args(tiny, out, *extra):
    return ["--config", "demo", "--data", str(tiny.root), f"output_dir={out}", *FAST, *extra]


def test_swapping_the_learner_is_a_config_change_only(tiny, tmp_path, capsys):
    assert main(_args(tiny, tmp_path, "--learner", "xgboost", "features.stage1=false")) == 0
    assert main(_args(tiny, tmp_path, "stage2.learners=[catboost]", "features.stage1=false")) == 0
    root = tmp_path / "demo" / "stage2"
    for key in ("xgboost", "catboost"):
        run = root / key
        assert {"config.yaml", "meta.json", OOF_FILE, TEST_FILE, "importance.csv",
                "importance.png"} <= {p.name for p in run.iterdir()}
        params = yaml.safe_load((run / "config.yaml").read_text())["stage2"]["params"]
        assert list(params) == [key]  # the file's defaults merged with the override
        defaults = yaml.safe_load(params_file(key).read_text())
        assert params[key] == {**defaults, **SMALL[key]}
        oof, test = pd.read_parquet(run / OOF_FILE), pd.read_parquet(run / TEST_FILE)
        targets = load_config("demo").dataset.target_columns
        assert list(oof.columns) == ["ID", "fold", *targets] and list(test.columns) == ["ID", *targets]
        assert oof["ID"].is_monotonic_increasing and sorted(oof["ID"]) == sorted(tiny.train_ids)
        assert test["ID"].tolist() == sorted(tiny.test_ids)
    assert not (root / "lightgbm").exists()
    # Rerun: skipped, nothing refitted.
    meta = (root / "xgboost" / "meta.json").read_text()
    # The fits' CPU time is recorded (worker processes included): the steadier cost figure.
    assert yaml.safe_load(meta)["cpu_s"] > 0
    capsys.readouterr()
    assert main(_args(tiny, tmp_path, "--learner", "xgboost,xgboost", "features.stage1=false")) == 0
    assert "done already" in capsys.readouterr().out
    assert (root / "xgboost" / "meta.json").read_text() == meta


class Memorizer(GBDTRegressor):
    """Predicts the label of a row it was trained on (by its `row` feature), else NaN."""

    def fit(self, X, y, eval_set=None):
        self.seen_ = dict(zip(X[:, 0].astype(int), y, strict=True))
        self.best_iteration_, self.feature_importances_ = 1, np.zeros(X.shape[1])
        return self

    def predict(self, X):
        return np.array([self.seen_.get(int(r), np.nan) for r in X[:, 0]])


def test_oof_covers_each_row_once_from_a_model_that_never_saw_it(monkeypatch):
    monkeypatch.setitem(LEARNERS._entries, "memorizer", Memorizer)
    X, Y, folds = synthetic()
    X.insert(0, "row", np.arange(len(X), dtype=float))
    matrix = encode_features(X, X, list(X.columns))[0]
    assert np.array_equal(Memorizer().fit(matrix, Y[:, 1]).predict(matrix), Y[:, 1])  # memorises
    result = cross_validate("memorizer", {}, X, Y, X.iloc[:5], folds, target_names=["t0", "t1"])
    assert np.isnan(result.oof).all()  # so no OOF value came from a model that saw its row


def test_oof_rows_and_folds_match_folds_csv(tiny, tmp_path):
    assert main(_args(tiny, tmp_path, "--learner", "lightgbm", "features.stage1=false")) == 0
    oof = pd.read_parquet(tmp_path / "demo" / "stage2" / "lightgbm" / OOF_FILE)
    folds = load_folds(tmp_path / "demo" / "folds.csv")
    assert oof["ID"].is_unique and len(oof) == len(tiny.train_ids)
    assert (oof["fold"].to_numpy() == folds.fold_of(oof["ID"])).all()
    assert np.isfinite(oof.iloc[:, 2:].to_numpy()).all()
    fits = list((tmp_path / "demo" / "stage2" / "lightgbm" / "fits").glob("*.npz"))
    assert len(fits) == 18 * 3  # every (target, fold) fit saved for a resume


class EvalRecorder(GBDTRegressor):
    """Records the `row` feature of every row it fits on and every row it early-stops on."""

    calls: list[dict] = []

    def fit(self, X, y, eval_set=None):
        stop = np.concatenate([Xv[:, 0] for Xv, _ in eval_set]) if eval_set else np.array([])
        EvalRecorder.calls.append({"fit": X[:, 0].astype(int), "stop": stop.astype(int),
                                   "rounds": (self.params or {}).get("n_estimators")})
        self.best_iteration_, self.feature_importances_ = 3, np.zeros(X.shape[1])
        return self

    def predict(self, X):
        return np.zeros(len(X))


@pytest.mark.parametrize("refit", [True, False])
def test_no_scored_row_reaches_early_stopping(monkeypatch, refit):
    monkeypatch.setitem(LEARNERS._entries, "recorder", EvalRecorder)
    monkeypatch.setattr(EvalRecorder, "calls", [])
    X, Y, folds = synthetic()
    X.insert(0, "row", np.arange(len(X), dtype=float))
    scenes = np.arange(len(X)) // 6  # 6 rows a scene; folds below keep scenes whole
    folds = scenes % 4
    cross_validate("recorder", {}, X, Y[:, :1], X.iloc[:5], folds, target_names=["t0"],
                   groups=scenes, early_stopping_rounds=5, refit=refit, seed=3)
    stopped = [c for c in EvalRecorder.calls if len(c["stop"])]
    assert len(stopped) == 4  # one stopping fit per fold
    for call in stopped:
        (fold,) = set(range(4)) - set(folds[call["fit"]])  # the fold this fit scores
        scored = np.flatnonzero(folds == fold)
        assert len(call["stop"]) and not np.isin(call["stop"], scored).any()
        assert not np.isin(call["fit"], scored).any()
        # scenes do not straddle the inner split
        assert not set(scenes[call["stop"]]) & set(scenes[call["fit"]])
        assert 0.1 < len(set(scenes[call["stop"]])) / len(set(scenes[folds != fold])) < 0.3
    refits = [c for c in EvalRecorder.calls if not len(c["stop"])]
    assert len(refits) == (4 if refit else 0)
    for call in refits:  # the refit sees every training row once, with the rounds found
        (fold,) = set(range(4)) - set(folds[call["fit"]])
        assert sorted(call["fit"]) == sorted(np.flatnonzero((folds != fold) & ~np.isnan(Y[:, 0])))
        assert call["rounds"] == 3


class RoundlessRecorder(EvalRecorder):
    uses_rounds = False


def test_a_learner_without_rounds_fits_once_on_every_training_row(monkeypatch):
    # No rounds to stop: no inner holdout is taken from its training rows, even with
    # early stopping configured and without the refit.
    monkeypatch.setitem(LEARNERS._entries, "roundless", RoundlessRecorder)
    monkeypatch.setattr(EvalRecorder, "calls", [])
    X, Y, folds = synthetic()
    X.insert(0, "row", np.arange(len(X), dtype=float))
    cross_validate("roundless", {}, X, Y[:, :1], X.iloc[:5], folds, target_names=["t0"],
                   early_stopping_rounds=5, refit=False)
    assert len(EvalRecorder.calls) == 4  # one fit per fold
    for call in EvalRecorder.calls:
        (fold,) = set(range(4)) - set(folds[call["fit"]])
        assert not len(call["stop"])
        assert sorted(call["fit"]) == sorted(np.flatnonzero((folds != fold) & ~np.isnan(Y[:, 0])))


def test_ridge_standardises_imputes_and_one_hot_encodes():
    X, Y, _ = synthetic()
    X["a"] *= 1000.0  # scale must not matter after standardising
    matrix, _, cats = encode_features(X, X, list(X.columns))
    model = create_learner("ridge", params=SMALL["ridge"], categorical_features=cats).fit(
        matrix[:200], Y[:200, 1])
    pred = model.predict(matrix[200:])
    assert np.isfinite(pred).all()  # NaN in column b imputed
    assert np.abs(pred - Y[200:, 1]).mean() < 0.2  # gear "p" (+3) learnt through its one-hot column
    assert model.feature_importances_[2] > 2.0  # the categorical column's summed coefficients


def test_multi_output_learner_follows_the_estimator_contract():
    X, Y, _ = synthetic(n_targets=3)
    matrix, _, cats = encode_features(X, X, list(X.columns))
    labelled = ~np.isnan(Y).any(axis=1)
    model = create_learner("catboost_multi", params=SMALL["catboost_multi"],
                           categorical_features=cats, random_state=1)
    copy = clone(model)
    assert copy.get_params() == model.get_params() and not hasattr(copy, "model_")
    fitted = copy.fit(matrix[labelled], Y[labelled])
    assert fitted is copy and copy.predict(matrix).shape == (len(X), 3)
    assert copy.model_.get_params()["loss_function"] == "MultiRMSE"
    assert copy.feature_importances_.shape == (3,)
    assert model.get_params()["params"] == SMALL["catboost_multi"]  # fit left the params alone
    with pytest.raises(ValueError, match="y must be 2-D"):
        clone(model).fit(matrix, Y[:, 0])


def test_multi_output_learner_fits_one_model_per_fold(tiny, tmp_path):
    """`--learner catboost_multi` (the Makefile's LEARNER=catboost_multi) on tiny data: one fit
    per fold for all 18 targets, saved for a resume, OOF and test for every target."""
    assert main(_args(tiny, tmp_path, "--learner", "catboost_multi", "features.stage1=false")) == 0
    run = tmp_path / "demo" / "stage2" / "catboost_multi"
    assert sorted(p.name for p in (run / "fits").glob("*.npz")) == [
        f"all-targets-fold{k}.npz" for k in range(3)]
    oof, test = pd.read_parquet(run / OOF_FILE), pd.read_parquet(run / TEST_FILE)
    targets = load_config("demo").dataset.target_columns
    assert list(oof.columns) == ["ID", "fold", *targets] and len(test) == len(tiny.test_ids)
    assert np.isfinite(oof[targets].to_numpy()).all() and np.isfinite(test[targets].to_numpy()).all()
    params = yaml.safe_load((run / "config.yaml").read_text())["stage2"]["params"]["catboost_multi"]
    assert params["loss_function"] == "MultiRMSE"


class SeedConstant(GBDTRegressor):
    """Predicts its own random_state; records its seed, fit rows and early-stopping rows."""

    stops: list = []

    def fit(self, X, y, eval_set=None):
        if eval_set:
            SeedConstant.stops.append((self.random_state, X[:, 0].astype(int),
                                       tuple(eval_set[0][0][:, 0].astype(int))))
        self.best_iteration_, self.feature_importances_ = 2, np.full(X.shape[1], self.random_state)
        return self

    def predict(self, X):
        return np.full(len(X), float(self.random_state))


def test_seed_bagging_averages_fits_with_their_own_seeds_and_holdouts(monkeypatch):
    monkeypatch.setitem(LEARNERS._entries, "seedconstant", SeedConstant)
    monkeypatch.setattr(SeedConstant, "stops", [])
    X, Y, folds = synthetic()
    X.insert(0, "row", np.arange(len(X), dtype=float))
    kwargs = {"target_names": ["t0"], "early_stopping_rounds": 5, "seed": 5}
    single = cross_validate("seedconstant", {}, X, Y[:, :1], X.iloc[:5], folds, **kwargs)
    assert np.all(single.oof == 5) and np.all(single.test == 5)
    SeedConstant.stops.clear()
    bagged = cross_validate("seedconstant", {}, X, Y[:, :1], X.iloc[:5], folds, seeds=3, **kwargs)
    assert np.all(bagged.oof == 6) and np.all(bagged.test == 6)  # mean of seeds 5, 6, 7
    assert np.allclose(bagged.importance.to_numpy(), 6)
    assert len(SeedConstant.stops) == 4 * 3  # 3 stopping fits per fold
    for fold in range(4):
        members = [(seed, stop) for seed, fit, stop in SeedConstant.stops
                   if set(folds[fit]) == set(range(4)) - {fold}]
        assert sorted(seed for seed, _ in members) == [5, 6, 7]
        assert len({stop for _, stop in members}) == 3  # each member its own inner holdout
        assert not np.isin(np.concatenate([stop for _, stop in members]),
                           np.flatnonzero(folds == fold)).any()  # never the scored fold


def test_refit_and_kept_stopped_model_both_learn():
    X, Y, _ = synthetic()
    for refit in (True, False):
        result = cv(refit=refit)
        assert result.scores["mae"] < 0.5 * np.nanmean(np.abs(Y - np.nanmean(Y, 0)))


class PowerCut(LightGBMRegressor):
    """LightGBM that counts its fits and fails on the `fail_at`-th one (None: never)."""

    fits = 0
    fail_at = None

    def fit(self, X, y, eval_set=None):
        PowerCut.fits += 1
        if PowerCut.fits == PowerCut.fail_at:
            raise RuntimeError("power cut")
        return super().fit(X, y, eval_set=eval_set)


def test_an_interrupted_learner_resumes_with_only_the_missing_fits(monkeypatch, tmp_path):
    monkeypatch.setitem(LEARNERS._entries, "powercut", PowerCut)
    store = FitStore(tmp_path / "fits", signature="abc")
    # refit=False: one library fit per (target, fold) task, so fits count tasks
    monkeypatch.setattr(PowerCut, "fail_at", 6)
    with pytest.raises(RuntimeError, match="power cut"):
        cv("powercut", SMALL["lightgbm"], resume=store, refit=False)
    assert len(list(store.folder.glob("*.npz"))) == 5  # the 5 fits that returned, of 2 x 4
    monkeypatch.setattr(PowerCut, "fits", 0)
    monkeypatch.setattr(PowerCut, "fail_at", None)
    resumed = cv("powercut", SMALL["lightgbm"], resume=store, refit=False)
    assert PowerCut.fits == 3  # only the missing ones
    uninterrupted = cv("lightgbm", refit=False)
    np.testing.assert_array_equal(resumed.oof, uninterrupted.oof)
    np.testing.assert_array_equal(resumed.test, uninterrupted.test)
    pd.testing.assert_frame_equal(resumed.importance, uninterrupted.importance)
    assert FitStore(store.folder, signature="other").load(0, 0) is None  # another run's fits are not used


def test_fixed_seed_is_deterministic_across_processes():
    params = {**SMALL["lightgbm"], "subsample": 0.7, "subsample_freq": 1, "colsample_bytree": 0.7}
    first = cv(params=params, seed=5, n_jobs=2)
    second = cv(params=params, seed=5, n_jobs=1)
    other = cv(params=params, seed=6, n_jobs=1)
    np.testing.assert_array_equal(first.oof, second.oof)
    np.testing.assert_array_equal(first.test, second.test)
    assert not np.array_equal(first.oof, other.oof)  # the seed is really used


@pytest.mark.ray
def test_ray_executor_gives_the_same_predictions_as_joblib():
    ray = pytest.importorskip("ray", reason="executor=ray needs the `ray` extra")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = cv(key="xgboost", seed=1, n_jobs=2, executor="ray")
    finally:
        ray.shutdown()
    on_joblib = cv(key="xgboost", seed=1, n_jobs=2, executor="joblib")
    np.testing.assert_array_equal(on_ray.oof, on_joblib.oof)
    np.testing.assert_array_equal(on_ray.test, on_joblib.test)


def test_residual_mode_adds_the_baseline_back():
    X, Y, folds = synthetic()
    baseline = 50 + 10 * np.arange(len(X))[:, None] * np.ones((1, 2))  # big, row-specific
    kwargs = {"target_names": ["t0", "t1"], "early_stopping_rounds": 5}
    residual = cross_validate("lightgbm", SMALL["lightgbm"], X, Y + baseline, X.iloc[:10], folds,
                              baseline_train=baseline, baseline_test=baseline[:10], **kwargs)
    direct = cross_validate("lightgbm", SMALL["lightgbm"], X, Y + baseline, X.iloc[:10], folds,
                            **kwargs)
    assert residual.scores["mae"] < 0.5 and direct.scores["mae"] > 10 * residual.scores["mae"]


def test_stage1_on_other_folds_is_refused_and_missing_stage1_explained(tiny, tmp_path, capsys):
    with_s1 = "features.builders=[telemetry, stage1]"
    assert main(_args(tiny, tmp_path, "--learner", "lightgbm", with_s1)) == 2
    assert "make stage1" in capsys.readouterr().err
    cfg = load_config("demo", [f"data_dir={tiny.root}", f"output_dir={tmp_path}", *FAST])
    write_fake_stage1_run(cfg, fold_hash="0123456789abcdef")
    assert main(_args(tiny, tmp_path, "--learner", "lightgbm", with_s1)) == 2
    assert "built on folds 0123456789abcdef" in capsys.readouterr().err


def test_stage1_features_help_stage2(tiny, tmp_path):
    """A (fake) stage 1 that knows the labels up to noise: stage 2 must use it. The library's
    default `stage2.target_baseline: auto` (residual to stage 1 for a stack), which the demo
    config replaces by physics because its real 3-epoch nets are uneven across folds."""
    maes = {}
    for exp, extra in (("tele", ["features.stage1=false"]),
                       ("s1", ["features.builders=[telemetry, physics, stage1]",
                               "stage2.target_baseline=auto"])):
        if exp == "s1":
            cfg = load_config("demo", [f"data_dir={tiny.root}", f"output_dir={tmp_path}", *FAST,
                                       f"experiment={exp}"])
            write_fake_stage1_run(cfg, noise=0.2)
        assert main(_args(tiny, tmp_path, "--exp", exp, "--learner", "lightgbm", *extra)) == 0
        meta = yaml.safe_load((tmp_path / exp / "stage2" / "lightgbm" / "meta.json").read_text())
        maes[exp] = meta["scores"]["mae"]
    assert maes["s1"] < 0.5 * maes["tele"]


def test_stage1_target_baseline_adds_the_stage1_predictions_back(tiny, tmp_path):
    """`stage2.target_baseline=stage1`: each prediction is the stage-1 prediction (OOF for train,
    fold-mean for test) plus the GBDT's residual. With trees that cannot split the residual is one
    constant per (fold, target), so prediction - stage-1 prediction must be constant there."""
    cfg = load_config("demo", [f"data_dir={tiny.root}", f"output_dir={tmp_path}", *FAST, "experiment=s1b"])
    run_dir = write_fake_stage1_run(cfg, noise=0.3)
    no_splits = ["stage2.params.lightgbm.min_child_samples=100000", "stage2.params.lightgbm.n_estimators=3",
                 "stage2.per_metre_axes=[]"]  # unscaled: the residual itself is the constant
    assert main(_args(tiny, tmp_path, "--exp", "s1b", "--learner", "lightgbm", "stage2.target_baseline=stage1",
                      "features.builders=[telemetry, stage1]", *no_splits)) == 0
    out = tmp_path / "s1b" / "stage2" / "lightgbm"
    targets = cfg.dataset.target_columns
    oof = pd.read_parquet(out / OOF_FILE).set_index("ID")
    s1_oof = pd.read_parquet(run_dir / OOF_FILE).set_index("ID").loc[oof.index]
    residual = oof[targets] - s1_oof[targets]
    spread = residual.groupby(oof["fold"]).agg(lambda v: v.max() - v.min())
    assert spread.to_numpy().max() < 1e-9
    assert residual.abs().to_numpy().max() < 1.0  # the constant is a small correction, not the target
    test = pd.read_parquet(out / TEST_FILE).set_index("ID")
    s1_test = pd.read_parquet(run_dir / TEST_FILE).set_index("ID").loc[test.index]
    test_residual = test[targets] - s1_test[targets]
    assert (test_residual.max() - test_residual.min()).max() < 1e-9
    assert "target baseline stage1" in (out / "log.txt").read_text()


def test_target_baseline_auto_and_stage1_without_stage1(tiny, tmp_path, capsys):
    on = load_config("demo", ["stage2.target_baseline=auto"])
    assert target_baseline(on) == "stage1"
    assert target_baseline(load_config("demo", ["stage2.target_baseline=auto", "features.stage1=false"])) == "physics"
    assert main(_args(tiny, tmp_path, "--learner", "lightgbm", "features.stage1=false",
                      "stage2.target_baseline=stage1")) == 2
    assert "stage2.target_baseline=physics" in capsys.readouterr().err


def test_per_metre_scale_is_the_distance_to_each_horizon_on_the_named_axes():
    cfg = load_config("demo")
    spec, physics = cfg.dataset, cfg.features.physics
    table = pd.DataFrame({physics.speed_column: [10.0, 0.0, 4.0], physics.accel_column: [0.0, 0.0, -2.0]})
    scale = per_metre_scale(table, spec, physics, ["z"])
    for k, t in enumerate(spec.horizons_s):
        z, x = spec.target_columns.index(f"z_{k}"), spec.target_columns.index(f"x_{k}")
        assert scale[0, z] == pytest.approx(10 * t)         # cruising: speed x time
        assert scale[1, z] == 1.0                           # standing: the 1 m floor
        assert scale[2, z] == pytest.approx(max(1.0, 4 * min(t, 2) - min(t, 2) ** 2))  # stops at 2 s
        assert (scale[:, x] == 1).all()                     # other axes unscaled
    assert (per_metre_scale(table, spec, physics, []) == 1).all()
    with pytest.raises(ConfigError, match="per_metre_axes"):
        per_metre_scale(table, spec, physics, ["w"])


def test_scaled_targets_learn_a_rate_times_a_distance_the_features_lack():
    """y = f(a) * d with d not among the features: per-metre fitting recovers it, direct cannot."""
    X, _, folds = synthetic()
    d = np.random.default_rng(1).uniform(1, 40, size=len(X))[:, None] * np.ones((1, 2))
    Y = np.where(X[["a"]].to_numpy() > 0, 0.05, -0.03) * d
    kwargs = {"target_names": ["t0", "t1"], "early_stopping_rounds": 5}
    scaled = cross_validate("lightgbm", SMALL["lightgbm"], X, Y, X.iloc[:10], folds,
                            scale_train=d, scale_test=d[:10], **kwargs)
    direct = cross_validate("lightgbm", SMALL["lightgbm"], X, Y, X.iloc[:10], folds, **kwargs)
    assert scaled.scores["mae"] < 0.05 and direct.scores["mae"] > 5 * scaled.scores["mae"]
    expected_test = np.where(X["a"].to_numpy()[:10] > 0, 0.05, -0.03)[:, None] * d[:10]
    np.testing.assert_allclose(scaled.test, expected_test, atol=0.05)


def test_stage2_per_metre_axes_multiplies_each_prediction_by_its_distance(tiny, tmp_path, capsys):
    """With trees that cannot split, a prediction is one constant per (fold, target): times the
    distance to the horizon on the z targets, the constant itself on the others."""
    no_splits = ["stage2.params.lightgbm.min_child_samples=100000", "stage2.params.lightgbm.n_estimators=3"]
    common = ["--learner", "lightgbm", "--exp", "pm", "features.stage1=false", "stage2.target_baseline=none",
              "features.builders=[telemetry]", *no_splits]
    assert main(_args(tiny, tmp_path, *common, "stage2.per_metre_axes=[z]")) == 0
    cfg = load_config("demo", [f"data_dir={tiny.root}"])
    spec = cfg.dataset
    oof = pd.read_parquet(tmp_path / "pm" / "stage2" / "lightgbm" / OOF_FILE)
    train = read_table(tiny.root, spec, "train").set_index(spec.id_column).loc[oof["ID"]]
    scale = per_metre_scale(train, spec, cfg.features.physics, ["z"])
    per_metre = oof[spec.target_columns].to_numpy() / scale
    spread = pd.DataFrame(per_metre, columns=spec.target_columns).groupby(oof["fold"].to_numpy()).agg(
        lambda v: v.max() - v.min())
    assert spread.to_numpy().max() < 1e-9
    assert np.ptp(scale[:, spec.target_columns.index("z_5")]) > 1  # the distances differ by row
    assert main(_args(tiny, tmp_path, *common, "stage2.per_metre_axes=[w]")) == 2
    assert "per_metre_axes" in capsys.readouterr().err


class ParamRecorder(EvalRecorder):
    """Records the learning rate and the labels of every fit."""

    def fit(self, X, y, eval_set=None):
        EvalRecorder.calls.append({"lr": self.params["learning_rate"], "label": float(np.mean(y)),
                                   "labels": set(np.asarray(y, float))})
        self.best_iteration_, self.feature_importances_ = 3, np.zeros(X.shape[1])
        return self


def test_target_params_reach_only_their_targets_fits(monkeypatch):
    monkeypatch.setitem(LEARNERS._entries, "param_recorder", ParamRecorder)
    monkeypatch.setattr(EvalRecorder, "calls", [])
    X, Y, folds = synthetic()
    Y = np.stack([np.zeros(len(X)), np.full(len(X), 100.0)], axis=1)
    cross_validate("param_recorder", {"learning_rate": 0.2}, X, Y, X.iloc[:5], folds,
                   target_names=["t0", "t1"], early_stopping_rounds=5,
                   target_params=[{}, {"learning_rate": 0.01}])
    rates = {(call["label"] > 50, call["lr"]) for call in EvalRecorder.calls}
    assert rates == {(False, 0.2), (True, 0.01)}  # stopping fits and refits alike
    with pytest.raises(ValueError, match="one mapping per target"):
        cross_validate("param_recorder", {"learning_rate": 0.2}, X, Y, X.iloc[:5], folds,
                       target_names=["t0", "t1"], target_params=[{}])


class ColumnRecorder(EvalRecorder):
    """Records the columns and categorical positions each fit sees; importance 1, 2, 3, ..."""

    def fit(self, X, y, eval_set=None):
        EvalRecorder.calls.append({"n_columns": X.shape[1], "cats": tuple(self.categorical_features),
                                   "label": float(np.nanmean(y))})
        self.best_iteration_, self.feature_importances_ = 3, np.arange(1.0, X.shape[1] + 1)
        return self


def test_target_columns_restrict_only_their_targets_fits(monkeypatch):
    monkeypatch.setitem(LEARNERS._entries, "column_recorder", ColumnRecorder)
    monkeypatch.setattr(EvalRecorder, "calls", [])
    X, Y, folds = synthetic()  # columns a, b, gear (categorical, position 2)
    Y = np.stack([np.zeros(len(X)), np.full(len(X), 100.0)], axis=1)
    result = cross_validate("column_recorder", {}, X, Y, X.iloc[:5], folds, target_names=["t0", "t1"],
                            early_stopping_rounds=5, target_columns=[None, np.array([1, 2])])
    seen = {(call["label"] > 50, call["n_columns"], call["cats"]) for call in EvalRecorder.calls}
    assert seen == {(False, 3, (2,)), (True, 2, (1,))}  # stopping fits and refits alike
    # One importance entry per column of X; the column t1 never saw has none.
    assert result.importance["t0"].tolist() == [1.0, 2.0, 3.0]
    assert result.importance["t1"].tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match="one column list per target"):
        cross_validate("column_recorder", {}, X, Y, X.iloc[:5], folds, target_names=["t0", "t1"],
                       target_columns=[None])
    # The real thing: LightGBM (its binned data is cached per column set) never splits on a
    # column left out, though the target is made of it.
    real = cv("lightgbm", target_columns=[None, np.array([1, 2])])
    assert real.importance.loc["a", "t0"] > 0 and real.importance.loc["a", "t1"] == 0
    error = np.nanmean(np.abs(real.oof - synthetic()[1]), axis=0)
    assert error[0] < 0.5 * error[1]  # both targets are 2a + ...: t1 cannot see a


def test_axis_drop_columns_name_each_axis_columns(tiny, tmp_path):
    drops = "stage2.axis_drop_columns={x: ['img_row*', 'lag_*'], y: ['img_row*']}"
    cfg = load_config("demo", [f"data_dir={tiny.root}", f"output_dir={tmp_path}", drops])
    columns = ["vEgo", "lag_vEgo_prev1", "img_rowcolour_r01_c0", "img_cell00_jxy"]
    kept = target_columns(cfg, "lightgbm", ["x_0", "y_3", "z_5"], columns)
    assert [None if k is None else k.tolist() for k in kept] == [[0, 3], [0, 1, 3], None]
    assert target_columns(cfg, "catboost_multi", ["x_0"], columns) is None  # fits all at once
    assert run_config(cfg, "lightgbm", {})["stage2"]["axis_drop_columns"]["x"] == ["img_row*", "lag_*"]
    none = load_config("demo", [f"data_dir={tiny.root}", "stage2.axis_drop_columns={}"])
    assert target_columns(none, "lightgbm", ["x_0"], columns) is None
    # No drops: no key in a run's signature, so runs made before the option stay fresh.
    assert "axis_drop_columns" not in run_config(none, "lightgbm", {})["stage2"]
    bad = load_config("demo", [f"data_dir={tiny.root}", "stage2.axis_drop_columns={w: ['a*']}"])
    with pytest.raises(ConfigError, match=r"stage2\.axis_drop_columns names \['w'\], not in dataset\.axes"):
        target_columns(bad, "lightgbm", ["x_0"], columns)


def test_run_config_ignores_other_runs_without_stage1(tiny, tmp_path):
    # Adding a learner to stage2.without_stage1 starts one more run; the finished ones keep
    # their signature (their config) and are not refitted.
    base = [f"data_dir={tiny.root}", f"output_dir={tmp_path}", *FAST]
    before = load_config("demo", [*base, "stage2.without_stage1=[lightgbm]"])
    after = load_config("demo", [*base, "stage2.without_stage1=[lightgbm, xgboost]"])
    for key in ("lightgbm", "xgboost"):
        assert run_config(before, key, {}) == run_config(after, key, {})
    assert "without_stage1" not in run_config(after, "lightgbm", {})["stage2"]


def test_stage2_axis_params_override_one_axis_of_one_learner(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(LEARNERS._entries, "param_recorder", ParamRecorder)
    monkeypatch.setattr(EvalRecorder, "calls", [])
    cfg = load_config("demo", [f"data_dir={tiny.root}", f"output_dir={tmp_path}", *FAST,
                               "features.stage1=false", "stage2.per_metre_axes=[]",
                               "stage2.target_baseline=none",  # fits see the labels themselves
                               "stage2.axis_params={param_recorder: {z: {learning_rate: 0.01}}, "
                               "xgboost: {y: {max_depth: 3}}}"])
    spec = cfg.dataset
    expected = [{"learning_rate": 0.01} if t.startswith("z_") else {} for t in spec.target_columns]
    assert target_params(cfg, "param_recorder", spec.target_columns) == expected
    assert target_params(cfg, "lightgbm", spec.target_columns) is None  # none set for it
    # A run's config holds its own learner's axis params only: editing another's refits nothing.
    assert "axis_params" not in run_config(cfg, "lightgbm", {})["stage2"]
    assert run_config(cfg, "xgboost", {})["stage2"]["axis_params"] == {"xgboost": {"y": {"max_depth": 3}}}
    data = prepare(cfg, log=lambda line: None)
    fit_learner(data, "param_recorder", {"learning_rate": 0.2}, targets=["z_1", "x_1"])
    values = {t: set(data.labels[t].to_numpy(float)) for t in ("z_1", "x_1")}
    assert not values["z_1"] & values["x_1"]  # a fit's labels name its target
    rates = {(next(t for t in values if call["labels"] <= values[t]), call["lr"])
             for call in EvalRecorder.calls}
    assert rates == {("z_1", 0.01), ("x_1", 0.2)}
    for bad, message in (("{lightgbm: {w: {learning_rate: 0.1}}}",
                          r"stage2\.axis_params\.lightgbm names \['w'\], not in dataset\.axes"),
                         ("{nope: {z: {learning_rate: 0.1}}}", r"unknown learners \['nope'\]"),
                         ("{catboost_multi: {z: {depth: 3}}}", "fits every target in one model")):
        cfg = load_config("demo", [f"data_dir={tiny.root}", f"stage2.axis_params={bad}"])
        with pytest.raises(ConfigError, match=message):
            target_params(cfg, "catboost_multi", spec.target_columns)
def test_a_stage2_variant_is_its_own_blend_input_with_its_own_target_scaling(tiny, tmp_path, capsys):
    """stage2.variants: a learner refitted with other per-metre axes, into its own run folder
    that the blend reads; adding it does not invalidate the learner's plain run."""
    from ensembling.inputs import select_runs
    from trajstack.artifacts import ArtifactStore

    no_splits = ["stage2.params.lightgbm.min_child_samples=100000", "stage2.params.lightgbm.n_estimators=3"]
    common = ["--learner", "lightgbm", "--exp", "var", "features.stage1=false",
              "stage2.target_baseline=none", "features.builders=[telemetry]", *no_splits]
    assert main(_args(tiny, tmp_path, *common)) == 0
    root = tmp_path / "var" / "stage2"
    plain_meta = (root / "lightgbm" / "meta.json").read_text()
    capsys.readouterr()
    variant = "stage2.variants={lgbm_xyz: {learner: lightgbm, per_metre_axes: [x, y, z]}}"
    assert main(_args(tiny, tmp_path, *common, variant)) == 0
    assert "stage2 lightgbm: done already" in capsys.readouterr().out
    assert (root / "lightgbm" / "meta.json").read_text() == plain_meta
    meta = yaml.safe_load((root / "lgbm_xyz" / "meta.json").read_text())
    assert meta["variant"] == "lgbm_xyz" and meta["learner"] == "lightgbm"
    assert yaml.safe_load((root / "lgbm_xyz" / "config.yaml").read_text())["stage2"]["per_metre_axes"] == ["x", "y", "z"]
    # Trees that cannot split predict one constant per (fold, target): per metre on x in the
    # variant, so its x predictions vary with the distance; the plain run's do not.
    cfg = load_config("demo", [f"data_dir={tiny.root}"])
    spec = cfg.dataset
    plain, var = (pd.read_parquet(root / run / OOF_FILE) for run in ("lightgbm", "lgbm_xyz"))
    x5_spread = {name: frame.groupby("fold")["x_5"].agg(np.ptp).max()
                 for name, frame in (("plain", plain), ("variant", var))}
    assert x5_spread["plain"] < 1e-9 < x5_spread["variant"]
    train = read_table(tiny.root, spec, "train").set_index(spec.id_column).loc[var["ID"]]
    scale = per_metre_scale(train, spec, cfg.features.physics, ["x", "y", "z"])
    per_metre = pd.DataFrame(var[spec.target_columns].to_numpy() / scale, columns=spec.target_columns)
    assert per_metre.groupby(var["fold"].to_numpy()).agg(np.ptp).to_numpy().max() < 1e-9
    blended = [r.name for r in select_runs(ArtifactStore(tmp_path / "var"), None)]
    assert "stage2/lgbm_xyz" in blended and "stage2/lightgbm" in blended
    bad = "stage2.variants={lightgbm: {learner: lightgbm}}"
    assert main(_args(tiny, tmp_path, *common, bad)) == 2
    assert "named like learners" in capsys.readouterr().err
