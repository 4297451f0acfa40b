"""The AutoML benchmark is optional: without autogluon it says so and succeeds."""

import pytest

from benchmarks import bench_automl


def test_bench_automl_skips_with_a_clear_message_without_autogluon(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(bench_automl, "autogluon_available", lambda: False)
    readme = tmp_path / "README.md"
    assert bench_automl.main(["--readme", str(readme)]) == 0
    out = capsys.readouterr().out
    assert "skipped, autogluon.tabular is not installed" in out and "[automl]" in out
    assert not readme.exists()  # nothing measured, nothing written


def test_automl_fits_stage2s_own_target_per_metre_scale_and_baseline(monkeypatch, tmp_path):
    # A stand-in for AutoGluon that records the target it was handed and predicts 1 everywhere:
    # the bench must hand it (label - baseline) / scale, and put scale and baseline back.
    import numpy as np
    from dataset_factory import make_tiny_dataset
    from test_stage2 import FAST

    from stage2_gbdt.train import prepare
    from trajstack.config import load_config
    from trajstack.metrics import mae

    data_dir = make_tiny_dataset(tmp_path / "data", n_scenes=8, rows_per_scene=3, n_test_scenes=2, seed=1).root
    cfg = load_config("demo", [f"data_dir={data_dir}", f"output_dir={tmp_path / 'out'}", *FAST,
                               "features.stage1=false", "stage2.per_metre_axes=[z]"])
    handed = {}

    def one_everywhere(train, test, *args, **kwargs):
        handed[len(handed)] = train[bench_automl.LABEL_COLUMN].to_numpy(float)
        return np.ones(len(train)), np.ones(len(test)), {"best_model": "stand-in", "n_models": 1}

    monkeypatch.setattr(bench_automl, "fit_target", one_everywhere)
    result = bench_automl.run_automl(cfg, 1.0, "best_quality", 1, targets=["x_1", "z_1"])
    data = prepare(cfg)
    spec, ft = cfg.dataset, data.features
    cols = [spec.target_columns.index(t) for t in ("x_1", "z_1")]
    ids = ft.train[spec.id_column].to_numpy()
    labels = data.labels.set_index(spec.id_column).loc[ids, ["x_1", "z_1"]].to_numpy(float)
    scale, base = data.scale_train[:, cols], data.baseline_train[:, cols]
    assert (scale[:, 1] > 1).any() and (scale[:, 0] == 1).all()
    known = np.isfinite(labels[:, 1])
    np.testing.assert_allclose(handed[1], ((labels[:, 1] - base[:, 1]) / scale[:, 1])[known])
    expected = np.column_stack([1 + base[:, 0], scale[:, 1] + base[:, 1]])
    assert result["cv_mae"] == pytest.approx(mae(labels, expected))
    assert result["cv_mae"] != pytest.approx(mae(labels, 1 + base))  # the scale was put back
