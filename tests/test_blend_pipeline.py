"""`trajstack blend` on synthetic runs written through the artifact store."""

import json

import numpy as np
import pandas as pd
import pytest
from test_blend_fixtures import make_experiment, write_all_models, write_model_run

from ensembling.blend import run_blend
from ensembling.inputs import load_inputs
from ensembling.submission import submission_problems
from trajstack.artifacts import OOF_FILE, TEST_FILE, ArtifactError, FoldMismatchError
from trajstack.cli import main as cli_main
from trajstack.config import ConfigError
from trajstack.io import read_json
from trajstack.tables import read_table


@pytest.fixture
def experiment(tmp_path):
    exp = make_experiment(tmp_path, extra_overrides=["report.enabled=false"])
    write_all_models(exp)
    return exp


def test_blend_writes_artifacts_and_a_valid_submission(experiment, capsys):
    exp = experiment
    assert cli_main(["blend", *exp.cli_args()]) == 0
    out = capsys.readouterr().out
    blend_dir = exp.cfg.experiment_dir / "blend" / "lp"
    for name in ("weights.json", "weights.png", "scores.json", OOF_FILE, TEST_FILE,
                 "meta.json", "config.yaml"):
        assert (blend_dir / name).exists(), name
    weights = read_json(blend_dir / "weights.json")
    assert weights["models"] == ["stage1/convnext", "stage2/lightgbm", "stage2/xgboost"]
    table = np.array([[w[t] for t in weights["targets"]] for w in weights["weights"].values()])
    np.testing.assert_allclose(table.sum(axis=0), 1.0, atol=1e-5)
    assert sorted(weights["fold_weights"]) == ["0", "1", "2"]
    scores = read_json(blend_dir / "meta.json")["scores"]
    assert scores["nested"] is True
    assert scores["in_sample_mae_report"]["mae"] <= min(r["mae"] for r in scores["runs"].values())
    # Submission: spec columns, test order, finite, and the checker agrees.
    spec = exp.cfg.dataset
    sub_path = exp.cfg.experiment_dir / "submission.csv"
    sub = pd.read_csv(sub_path)
    assert list(sub.columns) == spec.target_columns
    assert submission_problems(sub_path, exp.data_dir, spec) == []
    test_ids = read_table(exp.data_dir, spec, "test")[spec.id_column]
    blend_test = pd.read_parquet(blend_dir / TEST_FILE).set_index(spec.id_column)
    np.testing.assert_allclose(sub.to_numpy(), blend_test.loc[test_ids, spec.target_columns].to_numpy())
    # The summary names every run, the nested and in-sample blend scores and the submission.
    for text in ("stage1/convnext", "stage2/lightgbm", "nested", "in-sample", str(sub_path)):
        assert text in out
    assert "test MAE" not in out  # no oracle in this dataset


def test_rerun_does_no_work(experiment, capsys):
    assert cli_main(["blend", *experiment.cli_args()]) == 0
    meta_path = experiment.cfg.experiment_dir / "blend" / "lp" / "meta.json"
    finished = read_json(meta_path)["finished"]
    assert cli_main(["blend", *experiment.cli_args()]) == 0
    assert "up to date" in capsys.readouterr().out
    assert read_json(meta_path)["finished"] == finished


def test_changed_inputs_refit_and_move_the_old_blend_aside(experiment, capsys):
    assert cli_main(["blend", *experiment.cli_args()]) == 0
    write_model_run(experiment, "stage2/catboost", 0.35, 0.0, seed=7)  # a learner added
    assert cli_main(["blend", *experiment.cli_args()]) == 0
    assert "moving it aside" in capsys.readouterr().out
    blend_stage = experiment.cfg.experiment_dir / "blend"
    weights = read_json(blend_stage / "lp" / "weights.json")
    assert "stage2/catboost" in weights["models"]
    assert len([p for p in blend_stage.iterdir() if p.name.startswith("lp.old-")]) == 1
    assert cli_main(["blend", *experiment.cli_args("--force")]) == 0  # refit on demand


def test_blend_refuses_runs_on_different_folds(experiment, capsys):
    write_model_run(experiment, "stage2/catboost", 0.3, 0.0, seed=5, fold_hash="0123456789abcdef")
    with pytest.raises(FoldMismatchError, match="different folds.*stage2/catboost: 0123456789abcdef"):
        run_blend(experiment.cfg)
    assert cli_main(["blend", *experiment.cli_args()]) == 2
    assert "different folds" in capsys.readouterr().err


def test_blend_refuses_runs_not_on_the_experiment_folds(tmp_path):
    exp = make_experiment(tmp_path)
    write_model_run(exp, "stage2/lightgbm", 0.3, 0.0, seed=1, fold_hash="ffffffffffffffff")
    with pytest.raises(FoldMismatchError, match="folds.csv has hash"):
        run_blend(exp.cfg)


def test_blend_refuses_runs_with_other_ids(experiment):
    write_model_run(experiment, "stage2/catboost", 0.3, 0.0, seed=5, drop_ids=2)
    with pytest.raises(ArtifactError, match="same IDs.*2 missing"):
        run_blend(experiment.cfg)


def test_configured_run_list_and_unknown_names(experiment):
    cfg = experiment.cfg.model_copy(deep=True)
    cfg.blend.runs = ["stage2/lightgbm", "stage1/convnext"]
    inputs = load_inputs(cfg, experiment.store, experiment.folds)
    assert inputs.names == ["stage2/lightgbm", "stage1/convnext"]
    cfg.blend.runs = ["stage2/nope"]
    with pytest.raises(ArtifactError, match="stage2/nope.*finished:"):
        load_inputs(cfg, experiment.store, experiment.folds)


def test_unknown_optimizer_is_a_config_error(experiment):
    cfg = experiment.cfg.model_copy(deep=True)
    cfg.blend.optimizer = "magic"
    with pytest.raises(ConfigError, match="magic.*caruana"):
        run_blend(cfg)


def test_caruana_blend_and_oracle_score_in_summary(experiment, capsys):
    exp = experiment
    spec = exp.cfg.dataset
    oracle = exp.data_dir / "oracle"
    oracle.mkdir()
    test = read_table(exp.data_dir, spec, "test")
    labels = pd.DataFrame(np.zeros((len(test), len(spec.target_columns))), columns=spec.target_columns)
    labels.insert(0, spec.id_column, test[spec.id_column])
    labels.to_csv(oracle / "test_labels.csv", index=False)
    (oracle / "floor.json").write_text(json.dumps({"floor_mae": 0.5}))
    assert cli_main(["blend", *exp.cli_args("blend.optimizer=caruana",
                                            "blend.caruana.ensemble_size=5")]) == 0
    out = capsys.readouterr().out
    sub = pd.read_csv(exp.cfg.experiment_dir / "submission.csv").to_numpy()
    expected = np.abs(sub).mean()
    assert f"test MAE (oracle): {expected:.4f} = {expected / 0.5:.3f} x floor 0.5000" in out
    assert (exp.cfg.experiment_dir / "blend" / "caruana" / "weights.json").exists()
