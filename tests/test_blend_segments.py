"""Blend weights per segment: fit and chosen without the held-out fold, kept only where the
nested score says so, and through `trajstack blend` with blend.segments.by=scene_size."""

import numpy as np
import pytest
from test_blend_fixtures import make_experiment, write_all_models

from ensembling.fitting import fit_blend
from ensembling.optimizers import OPTIMIZERS, BlendOptimizer
from ensembling.segments import choose_segments, nested_segment_blend, scene_size_segments
from trajstack.cli import main as cli_main
from trajstack.config import load_config
from trajstack.io import read_json


class Recorder(BlendOptimizer):
    """Equal weights; records the row IDs (label column 0 holds each row's index) of every fit."""

    calls: list[set[int]] = []

    def _fit_weights(self, preds, y):
        Recorder.calls.append(set(y[:, 0].astype(int)))
        return np.ones((preds.shape[0], preds.shape[2]))


@pytest.fixture
def recorder(monkeypatch):
    monkeypatch.setitem(OPTIMIZERS._entries, "recorder", Recorder)
    Recorder.calls = []
    return Recorder


def _rows(n_rows=180, n_folds=3, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n_rows, 2))
    y[:, 0] = np.arange(n_rows)  # the row's ID, for the recorder
    oof = y[None] + rng.normal(scale=0.5, size=(2, n_rows, 2))
    return oof, y, np.arange(n_rows) % n_folds, np.where(np.arange(n_rows) % 5 < 2, "small", "large")


def test_no_held_out_row_reaches_a_weight_fit_or_the_segment_choice(recorder, monkeypatch):
    oof, y, fold, segment = _rows()
    import ensembling.segments as segments

    # Each outer fold starts with one segment choice on its training rows; tag the fits that
    # follow with the fold that choice leaves out (the fold being blended).
    state = {"held": None}
    tagged = []
    real_choose, real_fit = segments.choose_segments, segments.fit_weights

    def choose(oof_, y_, fold_, *args, **kwargs):
        left_out = sorted(set(np.unique(fold)) - set(np.unique(fold_)))
        state["held"] = left_out[0] if len(left_out) == 1 else None
        return real_choose(oof_, y_, fold_, *args, **kwargs)

    def fit(oof_, y_, *args):
        tagged.append((state["held"], set(y_[:, 0].astype(int))))
        return real_fit(oof_, y_, *args)

    monkeypatch.setattr(segments, "choose_segments", choose)
    monkeypatch.setattr(segments, "fit_weights", fit)
    nested, per_fold = nested_segment_blend(oof, y, fold, segment, "recorder", min_rows=5)
    assert np.isfinite(nested).all() and sorted(per_fold) == [0, 1, 2]
    small = set(np.flatnonzero(segment == "small"))
    for k in (0, 1, 2):
        fits = [rows for held, rows in tagged if held == k]
        held_rows = set(np.flatnonzero(fold == k))
        # Global and per-segment fits on the inner folds, then the final ones: none sees fold k.
        assert len(fits) >= 4, k
        assert all(not rows & held_rows for rows in fits), f"a row of held-out fold {k} reached a fit"
        assert any(rows <= small for rows in fits)  # segment fits were among them
    assert all(held is not None for held, _ in tagged)
    # The recorder does see every row when the fit is meant to (the final weights).
    recorder.calls.clear()
    fit_blend(oof, y, fold, oof[:, :4], "recorder", segment=segment,
              segment_test=segment[:4], nested=False, min_segment_rows=5)
    assert set(range(len(y))) in recorder.calls


def test_held_out_fold_does_not_change_its_own_segment_weights_or_choice():
    rng = np.random.default_rng(1)
    n = 300
    y = rng.normal(size=(n, 3))
    segment = np.where(np.arange(n) % 3 == 0, "small", "large")
    # Model 0 is good on small scenes, model 1 on large ones.
    scale = np.where(segment == "small", 0.1, 1.0)[None, :, None] * np.array([1, 0])[:, None, None] \
        + np.where(segment == "small", 1.0, 0.1)[None, :, None] * np.array([0, 1])[:, None, None]
    oof = y[None] + rng.laplace(size=(2, n, 3)) * scale
    fold = np.arange(n) % 4
    _, weights_before = nested_segment_blend(oof, y, fold, segment, "lp", min_rows=5)
    perturbed = oof.copy()
    held = fold == 1
    perturbed[:, held] = y[held][None] + rng.laplace(size=(2, held.sum(), 3))  # no segment pattern
    _, weights_after = nested_segment_blend(perturbed, y, fold, segment, "lp", min_rows=5)
    w0, w1 = weights_before[1], weights_after[1]
    np.testing.assert_array_equal(w0.global_, w1.global_)
    assert sorted(w0.by_segment) == sorted(w1.by_segment) == ["large", "small"]
    for label in w0.by_segment:
        np.testing.assert_array_equal(w0.by_segment[label], w1.by_segment[label])
    # Other folds' fits did see the change (so the check above could fail).
    assert any(not np.array_equal(weights_before[k].global_, weights_after[k].global_) for k in (0, 2, 3))


def test_segments_keep_their_weights_only_where_the_nested_score_is_lower():
    rng = np.random.default_rng(2)
    n = 400
    y = rng.normal(size=(n, 2))
    segment = np.where(rng.random(n) < 0.5, "small", "large")
    good = np.where(segment == "small", 0, 1)  # the model that is right on each segment
    oof = y[None] + rng.laplace(scale=1.0, size=(2, n, 2))
    oof[good, np.arange(n)] = y + rng.laplace(scale=0.05, size=(n, 2))
    fold = np.arange(n) % 4
    choice = choose_segments(oof, y, fold, segment, "lp", min_rows=5)
    assert choice.keep == {label: choice.mae_segment[label] < choice.mae_global[label]
                           for label in ("large", "small")}
    assert choice.keep == {"large": True, "small": True}
    fit = fit_blend(oof, y, fold, oof[:, :10], "lp", segment=segment, segment_test=segment[:10],
                    min_segment_rows=5)
    assert sorted(fit.segment_weights) == ["large", "small"]
    np.testing.assert_allclose(fit.segment_weights["small"][0], 1.0, atol=0.05)
    nested_global = fit_blend(oof, y, fold, oof[:, :10], "lp").oof_nested
    assert np.abs(fit.oof_nested - y).mean() < 0.5 * np.abs(nested_global - y).mean()
    # Equal weights everywhere: a segment's own weights score exactly the same, so they are dropped.
    same = choose_segments(oof, y, fold, segment, "mean", min_rows=5)
    assert same.keep == {"large": False, "small": False}
    # Too few training rows in a segment: never kept.
    assert choose_segments(oof, y, fold, segment, "lp", min_rows=10_000).keep == {
        "large": False, "small": False}


def test_scene_size_segments_follow_the_edges():
    spec = load_config("demo").dataset
    scenes = ["a" * 32, "b" * 32, "c" * 32]
    ids = [f"{scenes[0]}_20", f"{scenes[1]}_20", f"{scenes[1]}_120", *(f"{scenes[2]}_{t}" for t in (20, 120, 220))]
    assert scene_size_segments(ids, spec, [2]).tolist() == ["rows<=2"] * 3 + ["rows>2"] * 3
    assert scene_size_segments(ids, spec, [1, 2]).tolist() == [
        "rows<=1", "rows2-2", "rows2-2", "rows>2", "rows>2", "rows>2"]


def test_blend_command_with_scene_size_segments(tmp_path):
    exp = make_experiment(tmp_path, extra_overrides=["report.enabled=false"])
    write_all_models(exp)
    assert cli_main(["blend", *exp.cli_args("blend.segments.by=scene_size",
                                            "blend.segments.min_rows=5")]) == 0
    blend_dir = exp.cfg.experiment_dir / "blend" / "lp"
    scores = read_json(blend_dir / "scores.json")
    seg = scores["segments"]
    assert seg["by"] == "scene_size" and set(seg["nested_mae_global"]) == set(seg["nested_mae_segment"])
    assert seg["kept"] == sorted(k for k in seg["nested_mae_global"]
                                 if seg["nested_mae_segment"][k] < seg["nested_mae_global"][k])
    assert sorted(read_json(blend_dir / "weights.json")["segment_weights"]) == seg["kept"]
    assert cli_main(["report", *exp.cli_args("blend.segments.by=scene_size", "blend.segments.min_rows=5",
                                             "report.overlay_rows=0")]) == 0
    html = (exp.cfg.experiment_dir / "report" / "index.html").read_text()
    assert "Segments by scene_size" in html and f"kept for {', '.join(seg['kept']) or 'no segment'}" in html
    assert cli_main(["blend", *exp.cli_args("blend.segments.by=nope")]) == 2
