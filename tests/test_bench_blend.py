"""The blend benchmark: every single model and each blend variant, nested, on a finished experiment."""

import pytest
from test_blend_fixtures import make_experiment, write_all_models, write_zero_test_labels

from benchmarks import bench_blend
from ensembling.fitting import fit_blend
from ensembling.inputs import load_inputs
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
