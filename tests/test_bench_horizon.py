"""The horizon benchmark: the true horizon row is where drivesim drew the sky/ground boundary, each
estimator is scored against it, and data that is not drivesim's is refused with what to do."""

import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_horizon import HorizonBenchError, run, scene_indices, to_markdown
from drivesim.writer import generate
from trajstack.artifacts import ArtifactError
from trajstack.config import load_config
from trajstack.image_cache import build_or_open_cache
from trajstack.tables import read_table

SEED = 3


@pytest.fixture(scope="module")
def drivesim_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("drivesim")
    generate(out, n_train=6, n_test=1, seed=SEED, spec=load_config("demo").dataset, render=True,
             progress=False)
    return out


def _cfg(data, tmp_path):
    return load_config("demo", [f"data_dir={data}", f"output_dir={tmp_path}", "cache.workers=1"])


def test_true_horizon_row_is_where_the_frame_turns_from_sky_to_ground(drivesim_data, tmp_path):
    from benchmarks.bench_horizon import true_horizon_rows

    cfg = _cfg(drivesim_data, tmp_path)
    spec = cfg.dataset
    ids = read_table(drivesim_data, spec, "train")[spec.id_column].astype(str).tolist()
    truth, mount = true_horizon_rows(cfg, ids, "train", SEED)
    assert truth.shape == (len(ids), len(spec.frames)) and mount.shape == (len(ids),)
    # The mount row is the drive's: one value per scene, a few rows from the principal point.
    scenes = [i.split("_")[0] for i in ids]
    assert all(len(set(mount[np.array(scenes) == s])) == 1 for s in set(scenes))
    assert np.abs(mount - spec.camera.K[1][2]).max() < 0.05 * spec.camera.K[1][1]
    cache = build_or_open_cache(cfg.data_dir, spec, "train", cfg.cache_dir, 1)
    frames = np.asarray(cache.images[cache.positions(ids)]).astype(float)
    # Rows above the horizon are sky or skyline, rows below ground: the frame's column-median colour
    # changes across the true row far more than between two rows above it, in most frames (a crest
    # ahead or a car may hide the horizon in some).
    steps = []
    for n, f in zip(*np.nonzero((truth > 3) & (truth < 30)), strict=True):
        r = int(np.floor(truth[n, f] + 0.5))  # the first row whose centre lies below the horizon
        colour = np.median(frames[n, f], axis=1)
        steps.append((np.linalg.norm(colour[r] - colour[r - 1]), np.linalg.norm(colour[r - 2] - colour[r - 3])))
    across, above = np.array(steps).T
    assert len(steps) >= 5 and (across > above + 10).mean() >= 0.7
    # The step at the true row dwarfs the steps above it, frame by frame in the median.
    assert np.median(across) > 3 * np.median(above)


def test_estimators_are_scored_and_the_ground_edge_leads(drivesim_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("demo", str(drivesim_data), seed=SEED)
    scores = result["estimators"]
    assert result["frames"] == 3 * result["rows"]
    for s in scores.values():
        assert 0 <= s["within_1"] <= s["found"] <= 1
    assert scores["`ground_edge`"]["within_1"] > scores["`row_profile` strongest horizontal edge"]["within_1"]
    assert "`ground_edge`" in to_markdown(result)
    # The horizon shows (an edge spanning half the width within a row of it) in most frames.
    assert 0.5 < result["visible"] <= 1
    assert "`wide_edges` lowest of the widest" in scores
    mount = result["mount"]
    assert set(mount) == {"one frame", "the scene's median"}
    assert all(0 <= m["within_1"] <= 1 and 0 < m["found"] <= 1 for m in mount.values())
    assert "mount row" in to_markdown(result)


def test_data_of_another_seed_is_refused_with_what_to_do(drivesim_data):
    ids = [p.name.split("_")[0] for p in (drivesim_data / "images").iterdir()][:3]
    assert set(scene_indices(ids, SEED, "train").values()) <= set(range(6))
    with pytest.raises(HorizonBenchError, match="pass the --seed"):
        scene_indices(["0" * 32], SEED, "train")


def test_z_limits_scores_the_table_alone_and_with_each_true_column(drivesim_data, tmp_path, monkeypatch):
    from benchmarks import bench_z_limits

    # Taking the mount pitch out: a mount level with the principal point changes nothing, and a
    # horizon just where the mount alone puts it is a level road's, at cy.
    cy, fy = 11.76, 224.8

    def truth(horizon, mount):
        return bench_z_limits.Truth(np.array(horizon), np.array(mount), np.ones((1, 2), bool), np.zeros((1, 2)))

    horizon = [[cy, cy + 5.0]]
    np.testing.assert_allclose(bench_z_limits._level_rows(truth(horizon, [cy]), cy, fy), horizon)
    mount = cy + fy * np.tan(0.01)
    np.testing.assert_allclose(bench_z_limits._level_rows(truth([[mount]], [mount]), cy, fy), [[cy]], atol=1e-9)
    # Where the horizon does not show, the perfect edge reader has only the table's ground edge.
    hidden = bench_z_limits.Truth(np.array([[12.0, 13.0]]), np.array([12.0]), np.array([[True, False]]),
                                  np.array([[11.0, 20.0]]))
    shown = bench_z_limits.EXTRA["+ the true horizon row where it shows, the ground edge elsewhere"](hidden, cy, fy)
    assert [shown["true_horizon_shown_f0"][0], shown["true_horizon_shown_f1"][0]] == [12.0, 20.0]
    # An exact edge reader reads the first pixel row whose centre lies below the horizon.
    subpixel = bench_z_limits.Truth(np.array([[12.4, 12.6]]), np.array([12.0]), np.array([[True, False]]),
                                    np.array([[11.0, 20.0]]))
    pixel = bench_z_limits.EXTRA["+ the true horizon's pixel row"](subpixel, cy, fy)
    assert [pixel["true_horizon_pixel_f0"][0], pixel["true_horizon_pixel_f1"][0]] == [12.0, 13.0]
    pixel_shown = bench_z_limits.EXTRA["+ the true horizon's pixel row where it shows, the ground edge elsewhere"](
        subpixel, cy, fy)
    assert [pixel_shown["true_horizon_pixel_shown_f0"][0], pixel_shown["true_horizon_pixel_shown_f1"][0]] == [12.0, 20.0]
    # A table without the ground edge cannot give the "where it shows" row: said before simulating.
    with pytest.raises(ArtifactError, match="put ground_edge in features.image_stats.groups"):
        bench_z_limits._truth(load_config("demo"), pd.DataFrame({"ID": ["a" * 32 + "_10"]}), "train", SEED)
    monkeypatch.chdir(tmp_path)
    result = bench_z_limits.run("demo", str(drivesim_data), seed=SEED, overrides=[
        f"output_dir={tmp_path}", "folds.n_splits=2", "cache.workers=1", "stage2.n_jobs=1",
        "features.image_stats.progress=false", "stage2.early_stopping_rounds=5",
        "stage2.params.lightgbm={n_estimators: 20, num_leaves: 4, min_child_samples: 3}"])
    assert list(result["rows"]) == list(bench_z_limits.EXTRA)
    for row in result["rows"].values():
        assert 0 < row["cv"] < 5 and 0 < row["test"] < 5
    assert "true horizon row less the mount pitch" in bench_z_limits.to_markdown(result)
    assert 0 < result["shows"] <= 1
