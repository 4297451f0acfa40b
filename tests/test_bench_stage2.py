"""The full-scale stage-2 benchmark on tiny data: learners on a subset of the targets, the
resumable rows, the Ray rows checked against joblib, the blend line; and `fit_learner` on part
of the targets."""

import numpy as np
import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset
from test_stage2 import FAST

from benchmarks import bench_stage2
from stage2_gbdt.params import learner_params
from stage2_gbdt.train import fit_learner, prepare
from trajstack.config import ConfigError, load_config

SUBSET = ("x_0", "y_5")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    data = make_tiny_dataset(tmp_path_factory.mktemp("data"), n_scenes=12, rows_per_scene=3,
                             n_test_scenes=2, seed=4)
    # Test labels all 0, as a simulator's oracle holds them: the bench then quotes a test MAE.
    ids = pd.read_csv(data.table_path("test"), dtype=str)[data.spec.id_column]
    (data.root / "oracle").mkdir()
    pd.DataFrame({data.spec.id_column: ids, **{t: 0.0 for t in data.spec.target_columns}}).to_csv(
        data.root / "oracle" / "test_labels.csv", index=False)
    return data


def test_fit_learner_on_part_of_the_targets_gives_those_columns_of_the_full_fit(tiny, tmp_path):
    cfg = load_config("demo", [f"data_dir={tiny.root}", f"output_dir={tmp_path}", *FAST,
                               "features.stage1=false"])
    data = prepare(cfg, log=lambda line: None)
    params = learner_params(cfg, "lightgbm")
    full = fit_learner(data, "lightgbm", params)
    part = fit_learner(data, "lightgbm", params, targets=["y_5", "x_0"])
    columns = [cfg.dataset.target_columns.index(t) for t in ("y_5", "x_0")]
    np.testing.assert_array_equal(part.oof, full.oof[:, columns])
    np.testing.assert_array_equal(part.test, full.test[:, columns])
    assert list(part.importance.columns) == ["y_5", "x_0"]
    with pytest.raises(ConfigError, match=r"\['w_9'\].*valid: x_0, y_0"):
        fit_learner(data, "lightgbm", params, targets=["x_0", "w_9"])


def test_measure_fits_what_stage2_fits_per_metre_scales_included(tiny, tmp_path):
    # The demo learns z per metre (stage2.per_metre_axes): the bench's row must fit the same.
    overrides = [f"data_dir={tiny.root}", f"output_dir={tmp_path}", *FAST, "features.stage1=false",
                 "stage2.per_metre_axes=[z]"]
    cfg = load_config("demo", overrides)
    data = prepare(cfg, log=lambda line: None)
    assert data.scale_train is not None and (data.scale_train != 1).any()
    _, timed = bench_stage2.measure(data, "lightgbm", "demo", overrides, targets=["z_5", "x_0"])
    direct = fit_learner(data, "lightgbm", learner_params(cfg, "lightgbm"), targets=["z_5", "x_0"])
    np.testing.assert_array_equal(timed.oof, direct.oof)
    np.testing.assert_array_equal(timed.test, direct.test)


def test_measure_starts_without_an_earlier_rows_idle_joblib_workers(tiny, tmp_path, monkeypatch):
    # joblib keeps its workers alive after a call: a row timed next must neither count their
    # memory nor reuse them (skipping the worker start-up its own run would pay).
    import os

    import joblib

    idle = set(joblib.Parallel(n_jobs=2)(joblib.delayed(os.getpid)() for _ in range(4)))
    assert os.getpid() not in idle
    watched = []

    class Recording(bench_stage2.ProcessTreeMonitor):
        def __enter__(self):
            super().__enter__()
            watched.append(set(self._cpu))  # the processes seen when the timing starts
            return self

    monkeypatch.setattr(bench_stage2, "ProcessTreeMonitor", Recording)
    overrides = [f"data_dir={tiny.root}", f"output_dir={tmp_path}", *FAST, "features.stage1=false"]
    data = prepare(load_config("demo", overrides), log=lambda line: None)
    bench_stage2.measure(data, "lightgbm", "demo", overrides, targets=["x_0"])
    assert watched and idle.isdisjoint(watched[0])


def _full(tiny, work, *extra, **kwargs):
    return bench_stage2.time_full_scale(tiny.root, "demo", [*FAST, "features.stage1=false", *extra],
                                        work, **kwargs)


def test_full_scale_rows_resume_subset_learners_are_labelled_and_blended(tiny, tmp_path, monkeypatch):
    kwargs = {"learners": ("lightgbm", "xgboost"), "ray_learners": (),
              "subset_learners": ("xgboost",), "subset_targets": SUBSET}
    first = _full(tiny, tmp_path, **kwargs)
    rows = first["learners"]
    assert rows["lightgbm"]["targets"] == load_config("demo").dataset.target_columns
    assert rows["xgboost"]["targets"] == list(SUBSET)
    assert set(rows["xgboost"]["cv_mae_per_target"]) == set(SUBSET)
    # Test labels are all 0: the test MAE is the mean |prediction| over the fitted targets only.
    xgb = np.load(next((tmp_path / "predictions").glob("xgboost-*.npz")))
    assert rows["xgboost"]["test_mae"] == pytest.approx(np.abs(xgb["test"]).mean(), abs=1e-5)
    assert first["feature_build"]["wall_s"] >= 0 and first["feature_build"]["log"]
    # The blend covers the targets both learners fitted, with nested CV.
    blend = first["blend"]
    assert blend["targets"] == ["x_0", "y_5"] and blend["models"] == ["lightgbm", "xgboost"]
    assert np.isfinite(blend["cv_mae_nested"]) and blend["test_mae"] is not None
    table = bench_stage2.full_scale_markdown(first)
    assert "| xgboost | 2 of 18 (x_0, y_5) | joblib |" in table
    lgb_same = np.mean([rows["lightgbm"]["cv_mae_per_target"][t] for t in SUBSET])
    assert f"| lightgbm, same 2 targets | (its row above) | | | | | {lgb_same:.4f} |" in table
    assert "| blend (lp: lightgbm, xgboost) | 2 |" in table
    # lightgbm fitted 18 targets, xgboost 2: their times are not added up.
    assert "| stage 2 + blend | not summed" in table and "sum of the joblib rows" not in table

    # A rerun fits nothing: every row is read back with its figures.
    real_measure = bench_stage2.measure
    def no_fit(*args, **kw):
        raise AssertionError("a finished row was fitted again")

    monkeypatch.setattr(bench_stage2, "measure", no_fit)
    again = _full(tiny, tmp_path, **kwargs)
    assert again["learners"] == first["learners"]
    assert again["blend"]["cv_mae_nested"] == blend["cv_mae_nested"]
    # A changed learner param redoes that learner's row only.
    fitted = []

    def record(data, key, *args, **kw):
        fitted.append(key)
        return real_measure(data, key, *args, **kw)

    monkeypatch.setattr(bench_stage2, "measure", record)
    changed = _full(tiny, tmp_path, "stage2.params.lightgbm.n_estimators=10", **kwargs)
    assert fitted == ["lightgbm"]
    assert changed["learners"]["xgboost"] == first["learners"]["xgboost"]


def test_ray_rows_are_timed_beside_joblib_on_the_same_work(tiny, tmp_path, monkeypatch):
    # No cluster here: joblib stands in for Ray (the executor override is dropped), so what is
    # tested is which rows are timed, in what order, paired how, and what the table sums.
    real_measure = bench_stage2.measure
    fitted = []

    def joblib_for_ray(data, key, config, overrides, targets=None):
        on_ray = "stage2.executor=ray" in overrides
        fitted.append((key, on_ray, targets))
        figures, result = real_measure(data, key, config,
                                       [o for o in overrides if o != "stage2.executor=ray"], targets)
        # Known figures: Ray 1.5x the wall, 2x the CPU and 2.5x the memory of joblib.
        cost = (15.0, 16.0, 250) if on_ray else (10.0, 8.0, 100)
        return {**figures, **dict(zip(("wall_s", "cpu_s", "peak_rss_mb"), cost, strict=True))}, result

    monkeypatch.setattr(bench_stage2, "measure", joblib_for_ray)
    result = _full(tiny, tmp_path, learners=("lightgbm", "xgboost"), ray_learners=("lightgbm",),
                   ray_targets=SUBSET, ray_repeats=2)
    pair = list(SUBSET)
    # The learner's row fits all 18 targets: each Ray row gets a joblib row on its 2, timed
    # just before it, alternating over the repeats.
    assert fitted == [("lightgbm", False, None), ("xgboost", False, None),
                      ("lightgbm", False, pair), ("lightgbm", True, pair),
                      ("lightgbm", False, pair), ("lightgbm", True, pair)]
    rows = result["learners"]
    assert list(rows) == ["lightgbm", "xgboost", "lightgbm joblib", "lightgbm ray",
                          "lightgbm joblib #2", "lightgbm ray #2"]
    assert [rows[n]["same_work_as_ray"] for n in rows] == [False, False, True, False, True, False]
    for ray_name, joblib_name in (("lightgbm ray", "lightgbm joblib"), ("lightgbm ray #2", "lightgbm joblib #2")):
        ray_row, joblib_row = rows[ray_name], rows[joblib_name]
        assert ray_row["targets"] == joblib_row["targets"] == pair
        assert ray_row["executor"] == "ray" and joblib_row["executor"] == "joblib"
        assert ray_row["max_abs_diff_vs_joblib"] == 0.0
        assert ray_row["vs_joblib"] == {"row": joblib_name, "wall_s": 1.5, "cpu_s": 2.0, "peak_rss_mb": 2.5}
    table = bench_stage2.full_scale_markdown(result)
    assert "| lightgbm joblib | 2 of 18 (x_0, y_5) | joblib, the Ray row's work |" in table
    assert ("| lightgbm ray / lightgbm joblib (same targets, folds, n_jobs, threads) | | ratio | "
            "1.50x | 2.00x | 2.50x |") in table
    # The joblib rows there for Ray are neither blended nor summed with the learners' rows.
    assert result["blend"]["models"] == ["lightgbm", "xgboost"]
    total = round(10.0 + 10.0 + result["blend"]["wall_s"], 1)
    assert f"| stage 2 + blend (sum of the joblib rows and the blend) | 18 | | {total} |" in table

    # Ray on exactly the learner's targets: the learner's own row is its joblib row.
    fitted.clear()
    alone = _full(tiny, tmp_path / "same", learners=("lightgbm",), ray_learners=("lightgbm",),
                  subset_learners=("lightgbm",), subset_targets=SUBSET)
    assert fitted == [("lightgbm", False, pair), ("lightgbm", True, pair)]
    assert list(alone["learners"]) == ["lightgbm", "lightgbm ray"]
    assert alone["learners"]["lightgbm ray"]["vs_joblib"]["row"] == "lightgbm"


@pytest.mark.ray
def test_process_tree_monitor_counts_a_local_rays_workers():
    # Ray's workers are the raylet's children, not joblib-style children of this process: the
    # monitor must still see them (a local Ray started by this process).
    pytest.importorskip("ray", reason="executor=ray needs the `ray` extra")
    import os
    import time

    from stage2_gbdt.parallel import ray_session, run_tasks

    def burn(seconds):  # nested: pickled by value for the workers
        import os
        import time

        end = time.process_time() + seconds
        while time.process_time() < end:
            pass
        return os.getpid()

    with bench_stage2.ProcessTreeMonitor(interval=0.05) as monitor, ray_session(None, 2):
        workers = set(run_tasks(burn, [(1.0,), (1.0,)], n_jobs=2, executor="ray"))
        time.sleep(0.2)  # a sample after the tasks, while the workers live
    assert os.getpid() not in workers
    assert sum(monitor._cpu.get(pid, 0.0) for pid in workers) >= 1.8


@pytest.mark.ray
def test_full_scale_ray_row_is_checked_against_joblib(tiny, tmp_path):
    pytest.importorskip("ray", reason="executor=ray needs the `ray` extra")
    with pytest.raises(ValueError, match="among its targets"):
        _full(tiny, tmp_path, learners=("lightgbm",), ray_learners=("lightgbm",),
              subset_learners=("lightgbm",), subset_targets=SUBSET, ray_targets=("z_3",))
    # Ray on one of the joblib row's targets: compared on that target's column.
    result = _full(tiny, tmp_path, learners=("lightgbm",), ray_learners=("lightgbm",),
                   subset_learners=("lightgbm",), subset_targets=SUBSET, ray_targets=("y_5",))
    ray_row, joblib_row = result["learners"]["lightgbm ray"], result["learners"]["lightgbm"]
    assert ray_row["executor"] == "ray" and ray_row["targets"] == ["y_5"]
    # Compared with a joblib row on y_5 alone, the same work; the 2-target row is not it.
    assert ray_row["vs_joblib"]["row"] == "lightgbm joblib"
    assert result["learners"]["lightgbm joblib"]["targets"] == ["y_5"]
    assert ray_row["max_abs_diff_vs_joblib"] == 0.0
    assert ray_row["cv_mae"] == joblib_row["cv_mae_per_target"]["y_5"]
    # Ray's start-up is timed apart, inside the row's figures.
    assert 0 < ray_row["ray_start_s"] <= ray_row["wall_s"]
    assert 0 < ray_row["ray_start_cpu_s"] <= ray_row["cpu_s"]
    table = bench_stage2.full_scale_markdown(result)
    assert "ray, predictions identical to joblib" in table
    assert (f"| lightgbm ray: of which Ray start-up (until ray.init returns) | | ray | "
            f"{ray_row['ray_start_s']} | {ray_row['ray_start_cpu_s']:.1f} |") in table


def test_make_bench_runs_the_full_scale_stage2_only_when_named(monkeypatch, tmp_path):
    from benchmarks import run as bench_run

    ran = []
    fakes = {name: (title, lambda args, name=name: ran.append(name) or {"markdown": name})
             for name, (title, _) in bench_run.BENCHMARKS.items()}
    monkeypatch.setattr(bench_run, "BENCHMARKS", fakes)
    readme = tmp_path / "README.md"
    assert bench_run.main(["--readme", str(readme)]) == 0
    assert "stage2" in ran and "stage2_full" not in ran
    ran.clear()
    assert bench_run.main(["--readme", str(readme), "--only", "stage2_full"]) == 0
    assert ran == ["stage2_full"] and "<!-- bench:stage2_full -->" in readme.read_text()


def test_process_tree_monitor_leaves_out_its_own_sampling(monkeypatch):
    # A /proc scan that costs CPU (as on a machine with many processes) while the work itself
    # sleeps: the sampler's CPU must not be counted as the work's.
    import os
    import time

    samples = []

    def stats(self):
        end = time.thread_time() + 0.03
        while time.thread_time() < end:  # the scan's own cost
            pass
        samples.append(1)
        return {os.getpid(): (1, time.process_time(), 1 << 20)}

    monkeypatch.setattr(bench_stage2.ProcessTreeMonitor, "_stats", stats)
    monitor = bench_stage2.ProcessTreeMonitor(interval=0.01)
    with monitor:
        while len(samples) < 8:
            time.sleep(0.01)
    burnt = 0.03 * len(samples)  # >= 0.24 CPU-s of scanning, 0.03 of it in the final sample
    assert monitor.cpu_s < burnt / 2
