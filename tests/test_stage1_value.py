"""The report's stage-1 value table: stage 2 and the blend with and without each stage-1 run,
from `trajstack stage2 --without-stage1` runs that the blend itself leaves out."""

import numpy as np
import pytest
import yaml
from dataset_factory import make_tiny_dataset
from test_features_stage1 import write_fake_stage1_run
from test_stage2 import FAST

from ensembling.stage1_value import stage1_values
from trajstack.cli import main as cli_main
from trajstack.config import load_config
from trajstack.folds import ensure_folds
from trajstack.io import read_json


@pytest.fixture()
def experiment(tmp_path):
    ds = make_tiny_dataset(tmp_path / "data", n_scenes=15, rows_per_scene=4, n_test_scenes=3, seed=2)
    overrides = [f"output_dir={tmp_path / 'out'}", *FAST, "features.builders=[telemetry, stage1]",
                 "report.overlay_rows=0"]
    cfg = load_config("demo", [f"data_dir={ds.root}", *overrides])
    write_fake_stage1_run(cfg, "good", noise=0.05, seed=0)
    write_fake_stage1_run(cfg, "useless", noise=3.0, seed=1)
    return cfg, ["--config", "demo", "--data", str(ds.root), *overrides]


def test_stage1_value_from_runs_without_each_stage1_run(experiment, capsys):
    cfg, args = experiment
    stage2 = cfg.experiment_dir / "stage2"
    assert cli_main(["stage2", *args, "--learner", "lightgbm"]) == 0
    assert cli_main(["stage2", *args, "--learner", "lightgbm", "--without-stage1", "all"]) == 0
    for left_out, kept in (("good", ["useless"]), ("useless", ["good"])):
        run = stage2 / f"lightgbm-without-{left_out}"
        assert read_json(run / "meta.json")["without_stage1"] == left_out
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["features"]["stage1"]["runs"] == kept
    capsys.readouterr()
    assert cli_main(["stage2", *args, "--learner", "lightgbm", "--without-stage1", "good"]) == 0
    assert "lightgbm-without-good: done already" in capsys.readouterr().out
    assert cli_main(["stage2", *args, "--without-stage1", "nope"]) == 2
    assert "good" in capsys.readouterr().err

    # The blend leaves the runs without a stage-1 run out; the report compares with them.
    assert cli_main(["blend", *args]) == 0
    blend_models = read_json(cfg.experiment_dir / "blend" / "lp" / "weights.json")["models"]
    assert blend_models == ["stage1/good", "stage1/useless", "stage2/lightgbm"]
    values = {v.run: v for v in stage1_values(cfg, ensure_folds(cfg))}
    full = read_json(stage2 / "lightgbm" / "meta.json")["scores"]["mae"]
    for name, value in values.items():
        assert value.stage2_with == {"lightgbm": full}
        without = read_json(stage2 / f"lightgbm-without-{name}" / "meta.json")["scores"]["mae"]
        assert value.stage2_without == {"lightgbm": without}
        assert np.isfinite([value.blend_with, value.blend_without, value.alone]).all()
    # Leaving the good run out hurts; leaving the noise out does not hurt as much.
    good, useless = values["good"], values["useless"]
    assert good.alone < useless.alone
    assert good.stage2_without["lightgbm"] - full > useless.stage2_without["lightgbm"] - full
    assert good.blend_without > good.blend_with
    html = (cfg.experiment_dir / "report" / "index.html").read_text()
    assert "Stage-1 runs after stacking" in html
    assert f"{full:.4f} / {good.stage2_without['lightgbm']:.4f}" in html


def test_report_says_how_to_make_the_table(experiment):
    cfg, args = experiment
    assert cli_main(["stage2", *args, "--learner", "lightgbm"]) == 0
    assert cli_main(["report", *args]) == 0
    html = (cfg.experiment_dir / "report" / "index.html").read_text()
    assert "trajstack stage2 --without-stage1 all" in html


def test_learners_in_without_stage1_are_fitted_without_it_and_blended(experiment):
    cfg, args = experiment
    args = [*args, "stage2.without_stage1=[lightgbm]"]
    assert cli_main(["stage2", *args, "--learner", "lightgbm"]) == 0
    stage2 = cfg.experiment_dir / "stage2"
    assert {p.name for p in stage2.iterdir()} == {
        "lightgbm", "lightgbm-without-good", "lightgbm-without-useless"}
    assert read_json(stage2 / "lightgbm-without-good" / "meta.json")["without_stage1"] == "good"
    assert cli_main(["blend", *args]) == 0
    blend_models = read_json(cfg.experiment_dir / "blend" / "lp" / "weights.json")["models"]
    assert sorted(blend_models) == ["stage1/good", "stage1/useless", "stage2/lightgbm",
                                    "stage2/lightgbm-without-good", "stage2/lightgbm-without-useless"]
    # Only the named learners: xgboost runs alone.
    assert cli_main(["stage2", *args, "--learner", "xgboost"]) == 0
    assert not any(p.name.startswith("xgboost-without") for p in stage2.iterdir())
