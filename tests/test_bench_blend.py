"""The blend benchmark: every single model and each blend variant, nested, on a finished experiment."""

import pytest
from test_blend_fixtures import (
    make_experiment,
    write_all_models,
    write_model_run,
    write_zero_test_labels,
)

from benchmarks import bench_blend
from ensembling.fitting import fit_blend
from ensembling.inputs import load_inputs
from stage2_gbdt.train import VARIANT_KEY
from stage2_gbdt.without_stage1 import WITHOUT_KEY
from trajstack.io import read_json, write_json_atomic
from trajstack.metrics import mae_report


def test_blend_benchmark_scores_singles_and_variants_nested(tmp_path):
    exp = make_experiment(tmp_path, extra_overrides=["report.enabled=false"])
    write_all_models(exp)
    spec = exp.cfg.dataset
    write_zero_test_labels(exp)
    result = bench_blend.run("atmacup18", str(exp.data_dir), exp.cfg.experiment,
                             overrides=exp.overrides)
    assert sorted(s["model"] for s in result["singles"]) == [
        "stage1/convnext", "stage2/lightgbm", "stage2/xgboost"]
    labels = [b["model"] for b in result["blends"]]
    assert labels[0] == "stage 1 + lightgbm, lp" and "stage 1 + 2 GBDTs, lp" in labels
    # The lp blend of everything: the same nested figure as fitting it directly.
    inputs = load_inputs(exp.cfg, exp.store, exp.folds)
    fit = fit_blend(inputs.oof, inputs.y, inputs.fold, inputs.test, "lp")
    lp = next(b for b in result["blends"] if b["model"] == "stage 1 + 2 GBDTs, lp")
    assert lp["cv_mae"] == pytest.approx(mae_report(inputs.y, fit.oof_nested, spec)["mae"])
    assert lp["test_mae"] == pytest.approx(abs(fit.test).mean())
    segmented = next(b for b in result["blends"] if "segments" in b["model"])
    assert isinstance(segmented["segments_kept"], list)
    table = bench_blend.to_markdown(result)
    best = min(result["singles"], key=lambda s: s["cv_mae"])
    assert f"Best single model: {best['model']}" in table
    assert f"{lp['cv_mae'] / best['cv_mae']:.3f} / {lp['test_mae'] / best['test_mae']:.3f}" in table


def run_with_extra_input(tmp_path, name: str, meta_key: str, meta_value: str) -> dict:
    """The benchmark on the usual runs plus a LightGBM run `name` marked `meta_key: meta_value`
    in its meta.json (how stage 2 marks a run without stage 1 or a variant)."""
    exp = make_experiment(tmp_path, extra_overrides=["report.enabled=false"])
    write_all_models(exp)
    run = write_model_run(exp, name, noise=0.01, bias=0.0, seed=9)
    meta = read_json(run.dir / "meta.json")
    write_json_atomic(run.dir / "meta.json", {**meta, "learner": "lightgbm", meta_key: meta_value})
    write_zero_test_labels(exp)
    return bench_blend.run("atmacup18", str(exp.data_dir), exp.cfg.experiment, overrides=exp.overrides)


def test_a_stage2_run_without_stage1_counts_as_a_single_model(tmp_path):
    # It is a blend input (stage2.without_stage1), so the blend is measured against it too.
    result = run_with_extra_input(tmp_path, "stage2/lightgbm-without-convnext", WITHOUT_KEY, "convnext")
    assert "Best single model: stage2/lightgbm-without-convnext." in bench_blend.to_markdown(result)


def test_a_variant_run_is_its_own_blend_step_not_a_gbdt(tmp_path):
    # A `stage2.variants` run is an extra blend input like the stage-1-less runs: counting it
    # among the learners' GBDTs would mislabel what each blend row adds.
    result = run_with_extra_input(tmp_path, "stage2/lightgbm_per_metre", VARIANT_KEY, "lightgbm_per_metre")
    labels = [b["model"] for b in result["blends"]]
    assert "stage 1 + 2 GBDTs, lp" in labels and labels[-1] == "+ 1 stage2.variants runs, lp"
    assert "stage2/lightgbm_per_metre" in [s["model"] for s in result["singles"]]
