"""The toolbox ablation bench on tiny data: rows train once, the table compares each to the
baseline, and a rerun reuses finished rows."""

from __future__ import annotations

import json

import pytest
from dataset_factory import make_tiny_dataset

import stage1_nn.train as train_module
from benchmarks import bench_toolbox

pytestmark = pytest.mark.slow


def test_toolbox_bench_rows_table_and_resume(tmp_path, monkeypatch):
    data = make_tiny_dataset(tmp_path / "data", n_scenes=6, rows_per_scene=2, seed=5, n_test_scenes=1)
    shrink = [f"output_dir={tmp_path / 'out'}", "stage1.model.backbone=test_convnext", "stage1.epochs=1",
              "stage1.batch_size=2", "stage1.threads=1", "folds.n_splits=3", "cache.workers=1"]
    result = bench_toolbox.run("demo", str(data.root), "tiny", ["baseline", "pixel_norm_sequence"], shrink)
    assert [r["row"] for r in result["rows"]] == ["baseline", "pixel_norm_sequence"]
    assert all(r["fold0_mae"] > 0 and r["seconds_per_epoch"] > 0 and r["epochs"] == 1 for r in result["rows"])
    assert result["rows"][0]["fold0_mae"] != result["rows"][1]["fold0_mae"]  # the switch changed training
    table = result["markdown"].splitlines()
    row = next(line for line in table if line.startswith("| pixel statistics of each row"))
    delta = result["rows"][1]["fold0_mae"] - result["rows"][0]["fold0_mae"]
    assert "`stage1.model.pixel_norm=sequence`" in row and f"| {delta:+.4f} |" in row
    assert any("| not run |" in line for line in table if line.startswith("| SAM"))
    saved = json.loads((tmp_path / "out" / "tiny-toolbox" / "bench_toolbox.json").read_text())
    assert [r["row"] for r in saved["rows"]] == ["baseline", "pixel_norm_sequence"]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished row was trained again")

    monkeypatch.setattr(train_module, "fit_fold", no_training)
    again = bench_toolbox.run("demo", str(data.root), "tiny", ["baseline"], shrink)
    assert [r["row"] for r in again["rows"]] == ["baseline", "pixel_norm_sequence"]
    assert again["rows"][0]["fold0_mae"] == result["rows"][0]["fold0_mae"]
    with pytest.raises(ValueError, match="unknown toolbox row"):
        bench_toolbox.run("demo", str(data.root), "tiny", ["nope"], shrink)
