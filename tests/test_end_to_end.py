"""End-to-end smoke run: drivesim data -> stage1 -> stage2 -> blend -> a valid submission.

The real CLI commands on tiny simulated data and the demo config shrunk (2 folds, 1 epoch,
few trees), as `make stage1 stage2 blend` runs them. CPU only, offline; a minute or two.
"""

import subprocess
import sys

import pandas as pd
import pytest

from trajstack.config import load_config

pytestmark = pytest.mark.slow

TINY = ["folds.n_splits=2", "stage1.epochs=1", "stage1.progress=false",
        "stage2.params.lightgbm.n_estimators=30", "report.overlay_rows=2"]


def _run(*args, cwd):
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_pipeline_produces_a_valid_submission(tmp_path):
    data = tmp_path / "data"
    _run("-m", "drivesim", "--out", str(data), "--train-scenes", "12", "--test-scenes", "3",
         "--seed", "0", "--workers", "1", "--quiet", cwd=tmp_path)
    common = ["--config", "demo", "--data", str(data), "--exp", "smoke",
              f"output_dir={tmp_path / 'outputs'}", *TINY]
    _run("-m", "trajstack", "stage1", *common, cwd=tmp_path)
    _run("-m", "trajstack", "stage2", *common, "--learner", "lightgbm", cwd=tmp_path)
    out = _run("-m", "trajstack", "blend", *common, cwd=tmp_path)

    submission = tmp_path / "outputs" / "smoke" / "submission.csv"
    for text in ("stage1/", "stage2/lightgbm", "nested", f"submission: {submission}",
                 "test MAE (oracle)", "x floor"):
        assert text in out
    checked = _run("-m", "trajstack", "check-submission", str(submission), "--data", str(data),
                   "--config", "demo", cwd=tmp_path)
    assert "valid submission" in checked
    test_rows = len(pd.read_csv(data / "test_features.csv"))
    targets = load_config("demo").dataset.target_columns
    assert pd.read_csv(submission).columns.tolist() == targets
    assert len(pd.read_csv(submission)) == test_rows
    assert (tmp_path / "outputs" / "smoke" / "report" / "index.html").exists()
    # A second blend does no work again.
    assert "up to date" in _run("-m", "trajstack", "blend", *common, cwd=tmp_path)
