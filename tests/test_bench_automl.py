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


def _tiny_cfg(tmp_path):
    from dataset_factory import make_tiny_dataset
    from test_stage2 import FAST

    from trajstack.config import load_config

    data_dir = make_tiny_dataset(tmp_path / "data", n_scenes=8, rows_per_scene=3, n_test_scenes=2, seed=1).root
    return load_config("demo", [f"data_dir={data_dir}", f"output_dir={tmp_path / 'out'}", *FAST,
                                "features.stage1=false"])


def test_automl_in_its_own_interpreter_gets_the_rows_through_a_worker(monkeypatch, tmp_path):
    # --automl-python: the table is built here and each fit runs in a worker process of the
    # other interpreter. The worker is run in-process here (its command line parsed by main),
    # with a stand-in fit that predicts each row's label + 0.5: the rows must reach it in order
    # and its predictions come back to the same rows, as the in-process path gives.
    import numpy as np

    cfg = _tiny_cfg(tmp_path)
    calls = []

    def label_plus_half(train, test, *args, **kwargs):
        y = train[bench_automl.LABEL_COLUMN].to_numpy(float)
        return y + 0.5, np.full(len(test), 0.25), {"best_model": "stand-in", "n_models": 1}

    def worker_in_process(command, cwd=None):
        calls.append(command)
        assert command[1:3] == ["-m", "benchmarks.bench_automl"]
        code = bench_automl.main(command[3:])
        return type("Done", (), {"returncode": code})()

    monkeypatch.setattr(bench_automl, "fit_target", label_plus_half)
    monkeypatch.setattr(bench_automl.subprocess, "run", worker_in_process)
    via_worker = bench_automl.run_automl(cfg, 1.0, "best_quality", 1, targets=["x_1", "y_2"],
                                         python="/some/other/python")
    assert len(calls) == 2 and all(c[0] == "/some/other/python" for c in calls)
    for saved in (cfg.experiment_dir / "automl").glob("*.json"):
        saved.unlink()  # fit again, in process this time
    in_process = bench_automl.run_automl(cfg, 1.0, "best_quality", 1, targets=["x_1", "y_2"])
    assert len(calls) == 2
    assert via_worker["cv_mae"] == pytest.approx(0.5)  # label + 0.5 on the right rows
    assert via_worker["cv_mae"] == pytest.approx(in_process["cv_mae"])
    assert via_worker["test_mae"] == pytest.approx(in_process["test_mae"])


def test_a_failed_automl_worker_names_the_target_and_the_interpreter(tmp_path):
    # A real worker process of this interpreter, which has no AutoGluon: its fit fails, and the
    # bench says which target and interpreter, instead of reading a result that is not there.
    import re
    import sys

    if bench_automl.autogluon_available():
        pytest.skip("this interpreter has AutoGluon; the worker would fit")
    cfg = _tiny_cfg(tmp_path)
    with pytest.raises(RuntimeError, match=r"target x_1.*" + re.escape(sys.executable)):
        bench_automl.run_automl(cfg, 1.0, "best_quality", 1, targets=["x_1"], python=sys.executable)


def test_automl_time_counts_every_stage2_input_of_the_blend():
    # The blend's cost is all of its stage-2 inputs, those on fewer columns included; a run it
    # does not weigh is no part of it.
    automl = {"wall_s": 500.0, "cpu_s": 600.0}
    ours = [{"model": "blend/lp", "stage": "blend", "wall_s": 2.0, "cpu_s": None, "blend_input": False},
            {"model": "stage2/lightgbm", "stage": "stage2", "wall_s": 60.0, "cpu_s": 100.0,
             "blend_input": True},
            {"model": "stage2/lightgbm-without-x (fewer columns, a blend input)", "stage": "stage2",
             "wall_s": 40.0, "cpu_s": 50.0, "blend_input": True},
            {"model": "stage2/catboost", "stage": "stage2", "wall_s": 300.0, "cpu_s": 400.0,
             "blend_input": False}]
    assert bench_automl._stage2_time(ours, automl) == \
        "the blend's 2 stage-2 runs together: 100 s wall (0.20x AutoGluon's), 150 CPU-s (0.25x)."
    assert bench_automl._stage2_time(ours[1:], automl).startswith(
        "our 3 stage-2 runs together: 400 s wall (0.80x AutoGluon's), 550 CPU-s")
    # A run without a time record makes the total unknown, naming that run.
    ours[1]["wall_s"] = None
    assert "stage2/lightgbm predate" in bench_automl._stage2_time(ours, automl)
