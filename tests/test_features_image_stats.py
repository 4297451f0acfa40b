"""The image_stats builder: statistics respond to what they claim, one finite row per ID in table
order, cache key follows config and frames, and `trajstack stage2` runs with it."""

from typing import get_args

import numpy as np
import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset
from PIL import Image

from features import image_stats
from features.build import build_features
from features.config import ImageStatGroup
from features.image_stats import horizon_geometry, image_statistics
from stage2_gbdt.train import main as stage2_main
from trajstack.config import ConfigError, load_config


def _rgb(grey_frames):
    """(frames, H, W) uint8 -> one row (1, frames, H, W, 3)."""
    return np.repeat(np.asarray(grey_frames, np.uint8)[None, ..., None], 3, axis=-1)


def _texture(seed=0, h=96, w=192):
    """Smooth random texture (flow needs texture to lock on)."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = (rng.random((h, w)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(noise, (5, 5), 1.5)


@pytest.mark.parametrize(("dx", "dy"), [(3, 0), (-2, 0), (0, 2)])
def test_flow_of_a_shifted_frame_is_the_shift(dx, dy):
    tex = _texture()
    # Content moves by (dx, dy) pixels from each frame to the next.
    frames = [tex[16 - k * dy:80 - k * dy, 32 - k * dx:160 - k * dx] for k in range(3)]
    stats = image_statistics(_rgb(frames), ["flow"], (4, 4), 16).iloc[0]
    for pair in ("01", "12"):
        assert stats[f"img_flow{pair}_u_shift"] == pytest.approx(dx, abs=0.3)
        assert stats[f"img_flow{pair}_v_shift"] == pytest.approx(dy, abs=0.3)
        assert stats[f"img_flow{pair}_divergence"] == pytest.approx(0, abs=0.02)
    cells_dx = stats[[c for c in stats.index if c.startswith("img_flow12_cell") and c.endswith("_dx")]]
    assert len(cells_dx) == 16 and np.median(cells_dx) == pytest.approx(dx, abs=0.3)


def test_a_horizontal_edge_at_row_r_is_the_edge_profile_peak():
    for r in (12, 30, 47):
        frame = np.full((64, 128), 40, np.uint8)
        frame[r:] = 200  # bright below row r: the step lies between rows r - 1 and r
        stats = image_statistics(_rgb([frame] * 3), ["row_profile"], (4, 4), 16).iloc[0]
        for f in range(3):
            assert stats[f"img_edge_peak_row_f{f}"] == pytest.approx(r - 0.5, abs=0.6)
            assert stats[f"img_step_peak_row_f{f}"] == pytest.approx(r - 0.5, abs=0.6)
        profile = stats[[f"img_rowedge_{b:02d}" for b in range(16)]].to_numpy()
        assert profile.argmax() == (r - 1) // 4 or profile.argmax() == r // 4  # 4 rows per bin


def test_colour_rows_find_a_colour_boundary_and_its_motion():
    """Two colours of equal grey (a step the grey profiles miss) meeting at row r, a dark pole
    over a few columns: every estimator finds r, and the changes follow r across frames."""
    frames = []
    for r in (14, 17, 21):  # the boundary moves down 3 then 4 rows: the camera pitches up
        frame = np.empty((64, 128, 3), np.uint8)
        frame[:r] = (60, 150, 120)
        frame[r:] = (150, 120, 39)  # the same grey (0.299 R + 0.587 G + 0.114 B) as above
        frame[5:, 40:44] = 20       # a pole: the column median ignores it
        frames.append(frame)
    stats = image_statistics(np.stack(frames)[None], ["colour_rows"], (4, 4), 16).iloc[0]
    for f, r in enumerate((14, 17, 21)):
        for name in ("top_step", "split", "mean_step"):
            assert stats[f"img_colour_{name}_row_f{f}"] == r
        assert stats[f"img_colour_low_step_row_f{f}"] == r
    assert stats["img_colour_split_row_change_f0"] == 7 and stats["img_colour_top_step_row_change_f1"] == 4
    grey_rows = image_statistics(np.stack(frames)[None], ["row_profile"], (4, 4), 16).iloc[0]
    assert abs(grey_rows["img_edge_peak_row_f0"] - 14) > 2  # the grey edge profile misses it


@pytest.mark.parametrize("dy", [2, -3])
def test_vertical_shift_is_the_shift_of_the_view(dy):
    # A view of horizontal bands (what the far scene shows: skyline, horizon) plus texture; it
    # moves down by dy rows from each frame to the next (the camera pitches up).
    rows = np.random.default_rng(5).integers(40, 220, 96)
    tex = np.clip(rows[:, None] + (_texture(4).astype(int) - 128) // 8, 0, 255).astype(np.uint8)
    frames = [tex[16 - k * dy:80 - k * dy, 32:160] for k in range(3)]
    stats = image_statistics(_rgb(frames), ["vertical_shift"], (4, 4), 16).iloc[0]
    for name in ("edge", "intensity"):
        assert stats[f"img_vshift_{name}_f0f1"] == pytest.approx(dy, abs=0.3)
        assert stats[f"img_vshift_{name}_f1f2"] == pytest.approx(dy, abs=0.3)
        assert stats[f"img_vshift_{name}_f0f2"] == pytest.approx(2 * dy, abs=0.3)


def test_row_colours_read_the_frame_at_t_row_by_row_past_a_pole():
    """Sky colour above row r, ground below, a dark pole over a few columns; the older frames
    put the boundary elsewhere and must not count."""
    r = 19
    frames = []
    for boundary in (5, 30, r):                        # oldest first: the frame at t is the last
        frame = np.empty((64, 128, 3), np.uint8)
        frame[:boundary] = (90, 140, 230)
        frame[boundary:] = (70, 110, 40)
        frame[3:, 60:63] = 10                          # a pole: the column median ignores it
        frames.append(frame)
    stats = image_statistics(np.stack(frames)[None], ["row_colours"], (4, 4), 16).iloc[0]
    upper = 40                                         # 0.625 of 64 rows
    assert len(stats) == 3 * upper + upper - 1
    sky, ground = np.array([90, 140, 230]) / 255, np.array([70, 110, 40]) / 255
    for row in (0, r - 1, r, upper - 1):
        want = sky if row < r else ground
        got = [stats[f"img_rowcolour_r{row:02d}_c{c}"] for c in range(3)]
        np.testing.assert_allclose(got, want, atol=1e-6)
    from_top = np.array([stats[f"img_rowcolour_from_top_r{row:02d}"] for row in range(1, upper)])
    np.testing.assert_allclose(from_top[: r - 1], 0, atol=1e-6)
    np.testing.assert_allclose(from_top[r - 1:], np.linalg.norm(sky - ground), atol=1e-6)


def _ground_scene(r, seed=0):
    """Sky above row r with a skyline block on it, ground below with a pole, a car and a road
    reaching up to r + 3 in the middle, sensor noise: the top edge of the ground is row r."""
    rng = np.random.default_rng(seed)
    frame = np.empty((64, 128, 3), np.float64)
    frame[:r] = (90, 140, 230)
    frame[r - 6:r, 20:70] = (60, 70, 80)               # a skyline block sitting on the horizon
    frame[r:] = (70, 110, 40)
    for row in range(r + 3, 64):                       # the road: wider nearer the car
        half = 2 + (row - r) * 2
        frame[row, 64 - half:64 + half] = (100, 100, 100)
    frame[2:, 100:103] = 10                            # a pole through sky and ground
    frame[r - 2:r + 8, 60:68] = (200, 30, 30)          # a far car across the horizon
    return np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)


def test_ground_edge_is_the_top_of_the_ground_and_follows_it_across_frames():
    rows = (14, 17, 21)                                # the edge moves down: the camera pitches up
    frames = np.stack([_ground_scene(r, seed=r) for r in rows])[None]
    stats = image_statistics(frames, ["ground_edge"], (4, 4), 16).iloc[0]
    assert [stats[f"img_ground_edge_row_f{f}"] for f in range(3)] == list(rows)
    assert stats["img_ground_edge_row_median"] == 17 and stats["img_ground_edge_row_change"] == 7


def test_ground_edge_falls_back_to_half_the_width_behind_a_close_truck():
    frame = _ground_scene(15)
    frame[5:30, 20:70] = (40, 40, 45)                  # a truck over 40% of the horizon
    frames = np.stack([frame] * 3)[None]
    assert image_statistics(frames, ["ground_edge"], (4, 4), 16).iloc[0]["img_ground_edge_row_f2"] == 15
    strict = image_stats.ground_edge_rows(frames, fallback_width=None)
    assert np.isnan(strict).all()                      # 90% of the width: not found


def test_wide_edges_list_the_horizon_and_a_crossing_road_below_it():
    frame = _ground_scene(15)
    frame[22:26] = (150, 120, 90)                      # a crossing road across the whole width
    frames = np.stack([frame] * 3)[None]
    stats = image_statistics(frames, ["ground_edge", "wide_edges"], (4, 4), 16).iloc[0]
    assert stats["img_ground_edge_row_f2"] == 26       # the lowest wide edge: the road's near side
    # The crossing road's two sides span the whole width; the horizon, behind the pole and the car,
    # a little less; the skyline block's top a third of it.
    assert stats["img_wide_edge_share_f2"] == 1.0
    assert stats["img_wide_edge_highest_row_f2"] == 22 and stats["img_wide_edge_lowest_row_f2"] == 26
    assert stats["img_wide_edge_lowest_row_median"] == 26
    assert stats["img_wide_edge_rows_f2"] == 3         # horizon and both sides of the crossing road
    loose = image_stats.wide_edge_stats(frames, tolerance=0.1)
    assert loose["wide_edge_highest_row_f2"][0] == 15  # within 0.1 of the widest: the horizon too


def test_wide_edges_are_missing_on_a_frame_without_edges():
    flat = np.full((1, 3, 64, 128, 3), 120, np.uint8)
    stats = image_statistics(flat, ["wide_edges"], (4, 4), 16).iloc[0]
    assert stats.filter(like="_row_").isna().all() and (stats.filter(like="share") == 0).all()


def test_ground_edge_is_missing_where_no_row_spans_the_frame():
    flat = np.full((1, 3, 64, 128, 3), 120, np.uint8)
    flat[..., 30:, 60:70, :] = 20                      # a post: an edge over a few columns only
    stats = image_statistics(flat, ["ground_edge"], (4, 4), 16).iloc[0]
    assert stats.isna().all() and len(stats) == 5


def _road_scene(row, col, seed=0):
    """Sky above row 12 with a skyline block, ground below, a pole and a car body, and four lane
    lines and road edges that meet at (row, col): the road's vanishing point, sensor noise."""
    import cv2

    rng = np.random.default_rng(seed)
    frame = np.empty((64, 128, 3), np.float64)
    frame[:12] = (90, 140, 230)
    frame[6:12, 10:50] = (60, 70, 80)                  # skyline: horizontal and vertical edges
    frame[12:] = (80, 85, 80)
    frame[20:64, 110:113] = 20                         # a pole: vertical
    frame[24:32, 40:60] = (200, 30, 30)                # a car body: a box
    up = 8                                             # anti-aliased lines, drawn 8x finer
    big = cv2.resize(frame, (128 * up, 64 * up), interpolation=cv2.INTER_NEAREST)
    for spread, colour in ((-1.3, (230, 230, 230)), (1.6, (230, 200, 40)), (-3.0, (120, 120, 120)),
                           (2.8, (230, 230, 230))):    # columns per row below the vanishing row
        top, bottom = row + 8, 64.0
        start = (col + spread * (top - row), top)
        end = (col + spread * (bottom - row), bottom)
        cv2.line(big, tuple(int(round(v * up)) for v in start), tuple(int(round(v * up)) for v in end),
                 colour, thickness=up, lineType=cv2.LINE_AA)
    frame = cv2.resize(big, (128, 64), interpolation=cv2.INTER_AREA)
    return np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)


def test_vanishing_point_is_where_the_slanted_lines_meet_despite_poles_cars_and_horizon():
    points = ((14.0, 70.0), (16.5, 60.0), (19.0, 75.5))  # the camera pitching up, the road bending
    frames = np.stack([_road_scene(r, c, seed=i) for i, (r, c) in enumerate(points)])[None]
    stats = image_statistics(frames, ["vanishing_point"], (4, 4), 16).iloc[0]
    for f, (row, col) in enumerate(points):
        assert abs(stats[f"img_vanishing_row_f{f}"] - row) < 0.5
        assert abs(stats[f"img_vanishing_col_f{f}"] - col) < 1.0
    assert abs(stats["img_vanishing_row_median"] - 16.5) < 0.5


def _bent_road_scene(far_row, near_row, col, seed=0):
    """`_road_scene`'s sky and ground with four lane lines that run towards (near_row, col) up to
    row 28 and bend there towards (far_row, col): a change of grade ahead."""
    import cv2

    rng = np.random.default_rng(seed)
    frame = np.empty((64, 128, 3), np.float64)
    frame[:12] = (90, 140, 230)
    frame[12:] = (80, 85, 80)
    up, bend = 8, 28.0
    big = cv2.resize(frame, (128 * up, 64 * up), interpolation=cv2.INTER_NEAREST)
    for spread in (-1.3, 1.6, -3.0, 2.8):              # columns per row below the near vanishing row
        at_bend = (col + spread * (bend - near_row), bend)
        far_spread = spread * (bend - near_row) / (bend - far_row)
        for start, end in (((col + far_spread * (15 - far_row), 15.0), at_bend),
                           (at_bend, (col + spread * (64 - near_row), 64.0))):
            cv2.line(big, tuple(int(round(v * up)) for v in start), tuple(int(round(v * up)) for v in end),
                     (230, 230, 230), thickness=up, lineType=cv2.LINE_AA)
    frame = cv2.resize(big, (128, 64), interpolation=cv2.INTER_AREA)
    return np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)


def test_vanishing_bands_tell_the_far_roads_point_from_the_near_roads():
    bends = ((9.0, 13.0), (13.0, 13.0), (16.0, 13.0))  # a rise ahead, an even grade, a dip
    frames = np.stack([_bent_road_scene(far, near, 64.0, seed=i) for i, (far, near) in enumerate(bends)])[None]
    stats = image_statistics(frames, ["vanishing_bands"], (4, 4), 16).iloc[0]
    for f, (far, near) in enumerate(bends):
        assert abs(stats[f"img_vanishing_far_row_f{f}"] - far) < 1.0
        assert abs(stats[f"img_vanishing_near_row_f{f}"] - near) < 0.5
        assert abs(stats[f"img_vanishing_far_minus_near_row_f{f}"] - (far - near)) < 1.0
    assert abs(stats["img_vanishing_far_minus_near_row_median"]) < 1.0


def test_vanishing_point_is_missing_without_slanted_lines():
    frame = np.full((1, 3, 64, 128, 3), 120, np.uint8)
    frame[..., :14, :, :] = 200                        # a horizon
    frame[..., 20:, 60:63, :] = 20                     # a pole
    stats = image_statistics(frame, ["vanishing_point"], (4, 4), 16).iloc[0]
    assert stats.isna().all() and len(stats) == 7


def test_vanishing_scene_stats_calibrate_the_ground_edge_with_the_scenes_median_row():
    spec = load_config("demo").dataset
    a, b = "a" * 32, "b" * 32                          # two scenes
    table = pd.DataFrame({"ID": [f"{a}_10", f"{a}_20", f"{a}_30", f"{b}_10"]})
    stats = pd.DataFrame({"img_vanishing_row_median": [12.0, 14.0, np.nan, 20.0],
                          **{f"img_ground_edge_row_f{f}": [15.0 + f, 16.0, np.nan, 18.0] for f in range(3)},
                          "img_ground_edge_row_median": [16.0, 16.0, 17.0, np.nan]})
    out = image_stats.vanishing_scene_stats(stats, table, spec, n_frames=3,
                                           groups=["ground_edge", "vanishing_point"])
    np.testing.assert_allclose(out["img_vanishing_row_scene_median"], [13, 13, 13, 20])
    np.testing.assert_allclose(out["img_ground_edge_minus_vanishing_f2"], [4, 3, np.nan, -2])
    np.testing.assert_allclose(out["img_ground_edge_minus_vanishing_median"], [3, 3, 4, np.nan])
    alone = image_stats.vanishing_scene_stats(stats, table, spec, n_frames=3, groups=["vanishing_point"])
    assert list(alone.columns) == ["img_vanishing_row_scene_median"]


def test_horizon_pitch_and_height_change_follow_the_horizon_row():
    spec = load_config("demo").dataset
    physics = load_config("demo").features.physics
    fy, cy = spec.camera.K[1][1], spec.camera.K[1][2]
    table = pd.DataFrame({physics.speed_column: [10.0, 10.0, 0.0], physics.accel_column: [0.0] * 3})
    rows = np.array([[cy] * 3, [cy + 10] * 3, [cy + 10] * 3])  # level, nose up, nose up but parked
    geometry = horizon_geometry(rows, table, spec, physics)
    assert geometry["horizon_pitch_f2"][0] == pytest.approx(0)
    assert geometry["horizon_pitch_f2"][1] == pytest.approx(np.arctan(10 / fy))
    last = len(spec.horizons_s) - 1
    assert geometry[f"horizon_dz_{last}"][1] == pytest.approx(10 / fy * 10 * spec.horizons_s[-1])
    assert geometry[f"horizon_dz_{last}"][2] == 0 and geometry[f"horizon_dz_{last}"][0] == 0


def test_similarity_and_orientation_respond():
    tex = _texture(1)[:64, :128]
    same = image_statistics(_rgb([tex] * 3), ["similarity"], (4, 4), 16).iloc[0]
    other = image_statistics(_rgb([tex, _texture(2)[:64, :128], tex]), ["similarity"], (4, 4), 16).iloc[0]
    assert same["img_ncc_01_all"] == pytest.approx(1.0) and same["img_mad_01_all"] == 0
    assert other["img_ncc_01_all"] < 0.5 and other["img_mad_01_all"] > 0.05
    # Edges leaning one way (a diagonal stripe pattern) vs its mirror image: jxy changes sign.
    ys, xs = np.mgrid[0:64, 0:128]
    stripes = (np.sin((xs + ys) / 3.0) * 100 + 128).astype(np.uint8)
    lean = image_statistics(_rgb([stripes] * 3), ["orientation"], (4, 4), 16).iloc[0]
    mirrored = image_statistics(_rgb([stripes[:, ::-1]] * 3), ["orientation"], (4, 4), 16).iloc[0]
    assert lean["img_cell05_jxy"] > 0.3 and mirrored["img_cell05_jxy"] < -0.3
    # Edge energy only in the right half: the band's centroid is right of centre.
    right = np.zeros((64, 128), np.uint8)
    right[:, 64:] = stripes[:, 64:]
    assert image_statistics(_rgb([right] * 3), ["orientation"], (4, 4), 16).iloc[0][
        "img_band2_edge_x_centroid"] > 0.3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), n_scenes=8, rows_per_scene=3,
                             n_test_scenes=2, seed=3)


# The demo's scene options name groups that a test may leave out.
NO_SCENE_OPTIONS = ("features.image_stats.scene_deviation=[]", "features.image_stats.scene_neighbours=[]")


def _cfg(tiny, out, *overrides):
    return load_config("demo", [f"data_dir={tiny.root}", f"output_dir={out}", "folds.n_splits=2",
                                "features.stage1=false", "features.builders=[image_stats]",
                                "features.image_stats.progress=false", *overrides])


def test_builder_gives_one_finite_row_per_id_in_table_order(tiny, tmp_path):
    every_group = "features.image_stats.groups=[" + ", ".join(get_args(ImageStatGroup)) + "]"
    table = build_features(_cfg(tiny, tmp_path, "cache.workers=2", every_group, *NO_SCENE_OPTIONS))
    assert table.train["ID"].tolist() == pd.read_csv(tiny.table_path("train"))["ID"].tolist()
    assert table.test["ID"].tolist() == pd.read_csv(tiny.table_path("test"))["ID"].tolist()
    values = table.train[table.feature_columns].to_numpy()
    assert values.shape[1] > 200 and not np.isinf(values).any()
    # Only the ground edge (no row spans the frame), the wide edges (no edge) and the vanishing
    # point (no slanted lines) may be missing; every other value is finite.
    may_miss = {c for c in table.feature_columns
                if any(k in c for k in ("ground_edge", "wide_edge", "vanishing"))}
    for split in (table.train, table.test):
        missing = split[table.feature_columns].isna().any()
        assert set(missing[missing].index) <= may_miss
    assert (table.train[table.feature_columns].std() > 0).mean() > 0.9  # rows differ
    # Workers and chunking do not change a value.
    serial = build_features(_cfg(tiny, tmp_path / "serial", "cache.workers=1", every_group, *NO_SCENE_OPTIONS))
    pd.testing.assert_frame_equal(table.train, serial.train)


def test_cache_key_follows_config_and_frames(tiny, tmp_path):
    lines: list[str] = []
    first = build_features(_cfg(tiny, tmp_path), log=lines.append)
    build_features(_cfg(tiny, tmp_path, "features.image_stats.progress=true"), log=lines.append)
    assert "built" in lines[0] and "cached" in lines[1]  # progress is not part of the key
    fewer = build_features(_cfg(tiny, tmp_path, "features.image_stats.groups=[row_profile]",
                                *NO_SCENE_OPTIONS), log=lines.append)
    assert "built" in lines[2] and fewer.hash != first.hash
    assert all(c.startswith("img_") and ("row" in c) for c in fewer.feature_columns)
    # A frame redrawn: the builder recomputes (its key holds the image cache's fingerprint).
    path = tiny.frame_path(tiny.test_ids[0], 2)
    Image.fromarray(np.full((64, 128, 3), 90, np.uint8)).save(path)
    again = build_features(_cfg(tiny, tmp_path), log=lines.append)
    assert "built" in lines[3] and again.hash != first.hash
    assert not again.test.iloc[0].equals(first.test.iloc[0])


def test_stage2_runs_with_image_stats(tiny, tmp_path):
    args = ["--config", "demo", "--data", str(tiny.root), f"output_dir={tmp_path}",
            "--learner", "lightgbm", "folds.n_splits=2", "stage2.n_jobs=1",
            "stage2.early_stopping_rounds=5", "features.stage1=false",
            "features.builders=[telemetry, physics, image_stats]",
            "features.image_stats.progress=false",
            "stage2.params.lightgbm={n_estimators: 10, num_leaves: 4, min_child_samples: 3}"]
    assert stage2_main(args) == 0
    run = tmp_path / "demo" / "stage2" / "lightgbm"
    test = pd.read_parquet(run / "test.parquet")
    assert len(test) == len(tiny.test_ids) and np.isfinite(test.iloc[:, 1:].to_numpy()).all()
    importance = pd.read_csv(run / "importance.csv", index_col=0)
    assert any(str(name).startswith("img_") for name in importance.index)


def test_scene_deviation_is_each_column_minus_its_scene_mean_across_chunks(tiny, tmp_path, monkeypatch):
    # Two rows per worker task: every scene of the tiny data (3 rows) spans two tasks.
    monkeypatch.setattr(image_stats, "ROWS_PER_TASK", 2)
    cfg = _cfg(tiny, tmp_path, "cache.workers=2", "features.image_stats.groups=[horizon, row_colours]",
               "features.image_stats.scene_deviation=[row_colours]", "features.image_stats.scene_neighbours=[]")
    table = build_features(cfg)
    raw = [c for c in table.feature_columns if c.startswith("img_rowcolour")
           and not c.endswith("_minus_scene_mean")]
    deviation = [c for c in table.feature_columns if c.endswith("_minus_scene_mean")]
    assert raw and deviation == [f"{c}_minus_scene_mean" for c in raw]  # row_colours only
    for split in (table.train, table.test):
        scene = split["ID"].str.split("_").str[0]
        expected = split[raw] - split[raw].groupby(scene).transform("mean")
        np.testing.assert_allclose(split[deviation].to_numpy(), expected.to_numpy(), atol=1e-6)
        assert np.abs(split[deviation].groupby(scene).sum().to_numpy()).max() < 1e-4
        assert (split[deviation].abs().sum() > 0).mean() > 0.5  # the rows of a scene differ
    # The deviation is part of the builder's key.
    without = build_features(_cfg(tiny, tmp_path, "features.image_stats.groups=[horizon, row_colours]",
                                  *NO_SCENE_OPTIONS))
    assert without.hash != table.hash and not any(c.endswith("_minus_scene_mean")
                                                  for c in without.feature_columns)


def test_scene_deviation_of_the_horizon_group_covers_its_telemetry_columns(tiny, tmp_path):
    table = build_features(_cfg(tiny, tmp_path, "features.image_stats.groups=[horizon]",
                                "features.image_stats.scene_deviation=[horizon]",
                                "features.image_stats.scene_neighbours=[]"))
    deviation = {c.removesuffix("_minus_scene_mean") for c in table.feature_columns
                 if c.endswith("_minus_scene_mean")}
    assert deviation == {c for c in table.feature_columns if not c.endswith("_minus_scene_mean")}
    assert "img_horizon_dz_0" in deviation and "img_edge_peak_row_f0" in deviation


def test_scene_deviation_of_a_group_not_computed_is_refused(tiny, tmp_path):
    with pytest.raises(ConfigError, match="scene_deviation names \\['row_colours'\\]"):
        _cfg(tiny, tmp_path, "features.image_stats.groups=[horizon]")


def test_scene_neighbours_carry_a_groups_latest_rows_from_the_rows_before_and_after(tiny, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.setattr(image_stats, "ROWS_PER_TASK", 2)  # every scene spans two worker tasks
    cfg = _cfg(tiny, tmp_path, "cache.workers=2", *NO_SCENE_OPTIONS,
               "features.image_stats.groups=[ground_edge, vanishing_point]",
               "features.image_stats.scene_neighbours=[ground_edge]")
    table = build_features(cfg)
    # The ground edge of the frame at t, its median and change, and both minus the scene's
    # vanishing row; the older frames' (f0, f1) are left out.
    carried = ["img_ground_edge_row_f2", "img_ground_edge_row_median", "img_ground_edge_row_change",
               "img_ground_edge_minus_vanishing_f2", "img_ground_edge_minus_vanishing_median"]
    added = [c for c in table.feature_columns if c.endswith(("_prev1", "_next1"))]
    assert sorted(added) == sorted(f"{c}_{kind}{n}" for c in carried for kind in ("", "diff_")
                                   for n in ("prev1", "next1"))
    for split in (table.train, table.test):
        scene, time = split["ID"].str.split("_").str[0], split["ID"].str.split("_").str[1].astype(int)
        ordered = split.assign(scene=scene, time=time).sort_values(["scene", "time"])
        for column in carried:
            expected = ordered.groupby("scene")[column].shift(1)
            np.testing.assert_allclose(ordered[f"{column}_prev1"], expected, atol=1e-6)
            np.testing.assert_allclose(ordered[f"{column}_diff_next1"],
                                       ordered[column] - ordered.groupby("scene")[column].shift(-1),
                                       atol=1e-5)
        assert split["img_ground_edge_row_f2_prev1"].notna().sum() > 0


def test_scene_neighbours_of_a_group_not_computed_or_of_the_row_itself_are_refused(tiny, tmp_path):
    with pytest.raises(ConfigError, match="scene_neighbours names \\['wide_edges'\\]"):
        _cfg(tiny, tmp_path, *NO_SCENE_OPTIONS, "features.image_stats.groups=[ground_edge]",
             "features.image_stats.scene_neighbours=[wide_edges]")
    with pytest.raises(ConfigError, match="scene_offsets has 0"):
        _cfg(tiny, tmp_path, "features.image_stats.scene_offsets=[0, 1]")
