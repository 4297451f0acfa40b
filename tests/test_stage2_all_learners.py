"""The demo's default stage 2 runs every learner of its config (lightgbm, xgboost, catboost),
through the CLI and the Makefile; each learner resumes on its own."""

import shutil
import subprocess
from pathlib import Path

import pytest
from dataset_factory import make_tiny_dataset
from test_stage2 import FAST, main

from trajstack.config import load_config

ALL = ["lightgbm", "xgboost", "catboost"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), n_scenes=12, rows_per_scene=3,
                             n_test_scenes=2, seed=4)


def _args(tiny, out, *extra):
    return ["--config", "demo", "--data", str(tiny.root), f"output_dir={out}", *FAST,
            "features.stage1=false", *extra]


def test_demo_default_fits_every_learner_and_each_resumes_alone(tiny, tmp_path, capsys):
    assert load_config("demo").stage2.learners == ALL
    root = tmp_path / "demo" / "stage2"
    assert main(_args(tiny, tmp_path)) == 0
    assert sorted(p.name for p in root.iterdir() if (p / "oof.parquet").exists()) == sorted(ALL)
    capsys.readouterr()
    # One learner lost (say, interrupted before it began): only it is fitted again.
    shutil.rmtree(root / "xgboost")
    assert main(_args(tiny, tmp_path)) == 0
    out = capsys.readouterr().out
    assert out.count("done already") == 2 and "stage2 xgboost: CV MAE" in out
    assert "stage2 lightgbm: done already" in out
    # --learner picks one learner only, one the config does not list too.
    assert main(_args(tiny, tmp_path, "--learner", "catboost_multi")) == 0
    out = capsys.readouterr().out
    assert "stage2 catboost_multi: CV MAE" in out and "lightgbm" not in out
    assert main(_args(tiny, tmp_path, "--learner", "catboost_multi")) == 0
    assert "stage2 catboost_multi: done already" in capsys.readouterr().out


def test_make_stage2_runs_the_config_learners_unless_learner_is_given():
    def dry_run(*extra):
        done = subprocess.run(["make", "-n", "stage2", "-o", "stage1", "-o", ".venv/.installed",
                               *extra], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1])
        return done.stdout

    assert "--learner" not in dry_run()  # stage2.learners of the config decides
    assert "--learner xgboost" in dry_run("LEARNER=xgboost")
