"""A dataset without frames and traffic lights (drivesim --no-images) runs end to end (issue 13):
validate (telemetry-only) -> folds -> stage 2 -> blend -> report, with features.stage1=false."""

from __future__ import annotations

import pandas as pd
import pytest

from drivesim.__main__ import main as drivesim_main
from trajstack.cli import main as cli_main
from trajstack.config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def frameless(tmp_path_factory):
    data = tmp_path_factory.mktemp("frameless") / "data"
    assert drivesim_main(["--out", str(data), "--train-scenes", "12", "--test-scenes", "3",
                          "--seed", "1", "--no-images", "--quiet"]) == 0
    spec = load_config("demo").dataset
    assert not (data / spec.images_dir).exists() and not (data / spec.traffic_lights_dir).exists()
    return data


def test_validate_says_which_switch_made_it_telemetry_only(frameless, capsys):
    # Without a switch: one error naming both switches (not one per row).
    assert cli_main(["validate", "--config", "demo", "--data", str(frameless), "--no-progress"]) == 2
    out = capsys.readouterr().out
    errors = [line for line in out.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "--telemetry-only" in errors[0] and "dataset.images_dir=null" in errors[0]

    assert cli_main(["validate", "--config", "demo", "--data", str(frameless), "--no-progress",
                     "--telemetry-only"]) == 0
    out = capsys.readouterr().out
    assert "telemetry-only mode (--telemetry-only)" in out and "features.stage1=false" in out
    assert "traffic-light folder not found" in out  # a warning: the builder adds no columns
    assert "0 errors" in out and ": valid" in out

    assert cli_main(["validate", "--config", "demo", "--data", str(frameless), "--no-progress",
                     "dataset.images_dir=null", "dataset.traffic_lights_dir=null"]) == 0
    out = capsys.readouterr().out
    assert "telemetry-only mode (dataset.images_dir is null)" in out
    assert "0 errors, 0 warnings" in out


def test_stage2_blend_report_run_without_frames(frameless, tmp_path, capsys):
    common = ["--config", "demo", "--data", str(frameless), "--exp", "tele", f"output_dir={tmp_path}",
              f"cache.dir={tmp_path / 'cache'}", "folds.n_splits=2", "features.stage1=false",
              "stage2.n_jobs=1", "stage2.params.lightgbm.n_estimators=30", "report.overlay_rows=2"]
    assert cli_main(["folds", *common]) == 0
    # Stage 1 needs frames: a one-line error that says what to run instead.
    assert cli_main(["stage1", *common, "dataset.images_dir=null"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "features.stage1=false" in err

    assert cli_main(["stage2", *common, "--learner", "lightgbm"]) == 0
    # No traffic-light folder, no frames: those builders (the demo turns image_stats on) add no
    # columns, and say so.
    err = capsys.readouterr().err
    assert "no traffic-light features" in err and "no image statistics" in err
    oof = pd.read_parquet(tmp_path / "tele" / "stage2" / "lightgbm" / "oof.parquet")
    assert len(oof) == len(pd.read_csv(frameless / "train_features.csv"))
    assert cli_main(["blend", *common]) == 0
    out = capsys.readouterr().out
    submission = tmp_path / "tele" / "submission.csv"
    assert f"submission: {submission}" in out
    assert len(pd.read_csv(submission)) == len(pd.read_csv(frameless / "test_features.csv"))

    report = tmp_path / "tele" / "report"
    html = (report / "index.html").read_text()
    assert "No overlays: a telemetry-only dataset" in html
    assert not list(report.glob("overlay_*.png"))
    assert cli_main(["check-submission", str(submission), "--data", str(frameless), "--config", "demo"]) == 0
