"""The toolbox ablation bench on tiny data: rows train once, the table compares each to the
baseline with the fold-0 share captured against the ladder's references, and a rerun reuses
finished rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset
from test_bench_ladder import OFFSETS, PERCEPTION, TELEMETRY, write_run

import stage1_nn.train as train_module
from benchmarks import bench_toolbox
from benchmarks.bench_ladder import experiment_names
from trajstack.config import load_config
from trajstack.tables import read_table

pytestmark = pytest.mark.slow


def test_toolbox_bench_rows_table_and_resume(tmp_path, monkeypatch):
    data = make_tiny_dataset(tmp_path / "data", n_scenes=6, rows_per_scene=2, seed=5, n_test_scenes=1)
    shrink = [f"output_dir={tmp_path / 'out'}", "stage1.model.backbone=test_convnext", "stage1.epochs=1",
              "stage1.batch_size=2", "stage1.threads=1", "folds.n_splits=3", "cache.workers=1"]
    # the ladder's references, on the bench's folds: predictions = labels + OFFSETS per axis
    names = experiment_names("tiny")
    spec = load_config("demo", [f"data_dir={data.root}"]).dataset
    test_ids = read_table(data.root, spec, "test")[spec.id_column]
    test_labels = pd.DataFrame({spec.id_column: test_ids, **{c: 0.0 for c in spec.target_columns}})
    for role, features in (("telemetry", TELEMETRY), ("perception", PERCEPTION)):
        cfg = load_config("demo", [f"data_dir={data.root}", *shrink, f"experiment={names[role]}"])
        write_run(cfg, "stage2", "lightgbm", role, test_labels, features=features)
    result = bench_toolbox.run("demo", str(data.root), "tiny", ["baseline", "pixel_norm_sequence"], shrink)
    assert [r["row"] for r in result["rows"]] == ["baseline", "pixel_norm_sequence"]
    # share of stage 1 alone on fold 0: (telemetry - row) / (telemetry - perception), overall and z
    tel, perc = OFFSETS["telemetry"]["cv"], OFFSETS["perception"]["cv"]
    refs = result["references"]
    assert refs["telemetry"]["mae"] == pytest.approx(sum(tel) / 3) and refs["perception"]["z"] == pytest.approx(perc[2])
    for r in result["rows"]:
        scores = bench_toolbox.row_shares(bench_toolbox.row_config("demo", str(data.root), "tiny", r["row"],
                                                                   r["overrides"], shrink), refs)["scores"]
        assert scores["mae"] == pytest.approx(r["fold0_mae"])  # the same rows as the row's own score
        assert r["share"]["mae"] == pytest.approx((sum(tel) / 3 - r["fold0_mae"]) / (sum(tel) / 3 - sum(perc) / 3))
        assert r["share"]["z"] == pytest.approx((tel[2] - r["fold0_mae_per_axis"]["z"]) / (tel[2] - perc[2]))
    assert refs["n_rows"] < len(read_table(data.root, spec, "train"))  # fold 0's rows only
    assert bench_toolbox.reference_scores("demo", str(data.root), "elsewhere", shrink, build=False) is None
    assert all(r["fold0_mae"] > 0 and r["seconds_per_epoch"] > 0 and r["epochs"] == 1 for r in result["rows"])
    assert result["rows"][0]["fold0_mae"] != result["rows"][1]["fold0_mae"]  # the switch changed training
    table = result["markdown"].splitlines()
    row = next(line for line in table if line.startswith("| pixel statistics of each row"))
    delta = result["rows"][1]["fold0_mae"] - result["rows"][0]["fold0_mae"]
    assert "`stage1.model.pixel_norm=sequence`" in row and f"| {delta:+.4f} |" in row
    assert f"| {100 * result['rows'][1]['share']['mae']:.1f}% |" in row
    assert "stage 1 alone on fold 0" in result["markdown"]
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
