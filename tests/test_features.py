"""Feature builders: scene lags stay inside scene and split, physics, traffic lights, registry,
cache, and telemetry with NaN or whole columns missing."""

import json

import numpy as np
import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset

from features.base import BUILDERS, BuildContext
from features.build import build_features
from features.scene_lags import minus_scene_mean, scene_lag_features, scene_neighbours
from features.traffic_lights import light_row
from trajstack.config import ConfigError, load_config
from trajstack.physics import physics_baseline, physics_forecasts
from trajstack.registry import Registry, RegistryError
from trajstack.tables import read_table, scene_and_time

NO_STAGE1 = "features.stage1=false"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    # 4 rows per scene: times 20, 120, 220, 320 sort as strings 120 < 20 < 220 < 320, so the
    # lag code must sort by parsed time, not by ID.
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), n_scenes=6, rows_per_scene=4,
                             n_test_scenes=3, seed=1)


def _cfg(tiny, tmp_path, *overrides):
    return load_config("demo", [f"data_dir={tiny.root}", f"output_dir={tmp_path}",
                                "folds.n_splits=3", NO_STAGE1, *overrides])


def _ctx(cfg, train, test):
    return BuildContext(cfg, train, test)


def _marked(table, offset):
    """Give every row a unique vEgo (row number + offset), to trace where lag values come from."""
    table = table.copy()
    table["vEgo"] = np.arange(len(table), dtype=float) + offset
    return table


def test_scene_lags_never_cross_a_scene_and_follow_time_order(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path)
    train = _marked(read_table(tiny.root, cfg.dataset, "train"), 0)
    feats = scene_lag_features(train, _ctx(cfg, train, None))
    assert feats["ID"].tolist() == train["ID"].tolist()
    scenes, times = scene_and_time(train["ID"], cfg.dataset)
    for scene in np.unique(scenes):
        rows = np.flatnonzero(scenes == scene)
        rows = rows[np.argsort(times[rows])]  # time order within the scene
        values = train["vEgo"].to_numpy()[rows]
        prev1 = feats["lag_vEgo_prev1"].to_numpy()[rows]
        next2 = feats["lag_vEgo_next2"].to_numpy()[rows]
        assert np.isnan(prev1[0]) and np.array_equal(prev1[1:], values[:-1])
        assert np.array_equal(next2[:-2], values[2:]) and np.isnan(next2[-2:]).all()
        assert np.allclose(feats["lag_vEgo_scene_mean"].to_numpy()[rows], values.mean())
        assert (feats["lag_scene_position"].to_numpy()[rows] == np.arange(len(rows))).all()
        assert (feats["lag_scene_size"].to_numpy()[rows] == len(rows)).all()
        assert np.allclose(feats["lag_gap_prev_s"].to_numpy()[rows][1:], 10.0)


def test_minus_scene_mean_skips_missing_values_and_keeps_row_order():
    spec = load_config("demo").dataset
    a, b = "a" * 32, "b" * 32
    frame = pd.DataFrame({"ID": [f"{a}_20", f"{b}_20", f"{a}_120", f"{a}_220", f"{b}_120"],
                          "v": [1.0, 10.0, 2.0, np.nan, 30.0], "w": [0.0, 0.0, 3.0, 3.0, 4.0]},
                         index=[7, 3, 5, 1, 9])
    out = minus_scene_mean(frame, ["v", "w"], spec)
    assert list(out.columns) == ["v_minus_scene_mean", "w_minus_scene_mean"]
    assert list(out.index) == [7, 3, 5, 1, 9]
    np.testing.assert_allclose(out["v_minus_scene_mean"], [-0.5, -10.0, 0.5, np.nan, 10.0])
    np.testing.assert_allclose(out["w_minus_scene_mean"], [-2.0, -2.0, 1.0, 1.0, 2.0])


def test_scene_neighbours_are_the_scenes_rows_in_time_order_whatever_the_row_order():
    spec = load_config("demo").dataset
    a, b = "a" * 32, "b" * 32
    # Scene a at times 20, 120, 220 (rows 2, 0, 3); scene b at 20, 120 (rows 1, 4).
    frame = pd.DataFrame({"ID": [f"{a}_120", f"{b}_20", f"{a}_20", f"{a}_220", f"{b}_120"],
                          "v": [2.0, 10.0, 1.0, 4.0, 30.0]}, index=[7, 3, 5, 1, 9])
    out = scene_neighbours(frame, ["v"], spec, [-1, 1, 2])
    assert list(out.columns) == ["v_prev1", "v_diff_prev1", "v_next1", "v_diff_next1",
                                 "v_next2", "v_diff_next2"]
    assert list(out.index) == [7, 3, 5, 1, 9]
    np.testing.assert_allclose(out["v_prev1"], [1.0, np.nan, np.nan, 2.0, 10.0])
    np.testing.assert_allclose(out["v_next1"], [4.0, 30.0, 2.0, np.nan, np.nan])
    np.testing.assert_allclose(out["v_diff_next1"], [-2.0, -20.0, -1.0, np.nan, np.nan])
    np.testing.assert_allclose(out["v_next2"], [np.nan, np.nan, 4.0, np.nan, np.nan])


def test_scene_lags_never_cross_the_split(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path, "features.builders=[scene_lags]", "features.cache=false")
    train = _marked(read_table(tiny.root, cfg.dataset, "train"), 0)
    test = _marked(read_table(tiny.root, cfg.dataset, "test"), 1000)
    table = build_features(cfg, train=train, test=test)
    lag_cols = [c for c in table.train.columns if c.startswith("lag_vEgo") and "diff" not in c
                and "minus" not in c and "std" not in c]
    train_vals = table.train[lag_cols].to_numpy()
    test_vals = table.test[lag_cols].to_numpy()
    assert np.nanmax(train_vals) < 1000 and np.nanmin(test_vals) >= 1000
    # Changing the test table (or the targets) leaves the train features untouched.
    other = build_features(cfg, train=train.assign(x_0=-5.0), test=_marked(test, 5000))
    pd.testing.assert_frame_equal(table.train, other.train)


def test_physics_forecasts_follow_kinematics(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path)
    spec, phys = cfg.dataset, cfg.features.physics
    table = pd.DataFrame({"vEgo": [10.0, 10.0, 2.0, 10.0], "aEgo": [0.0, 0.0, -2.0, 1.0],
                          "steeringAngleDeg": [0.0, 90.0, 0.0, -90.0]})
    f = physics_forecasts(table, spec, phys)
    x5, y5 = spec.target_columns.index("x_5"), spec.target_columns.index("y_5")
    assert f["constant_velocity"][0, x5] == pytest.approx(30.0)
    assert f["constant_acceleration"][2, x5] == pytest.approx(1.0)  # stops after 1 s, 1 m
    assert f["constant_turn_rate"][0, y5] == pytest.approx(0.0)
    assert f["constant_turn_rate"][1, y5] > 1.0 > 0.0 > f["constant_turn_rate"][3, y5]
    radius = 1 / (np.tan(np.deg2rad(90 / phys.steering_ratio)) / phys.wheelbase_m)
    assert np.hypot(f["constant_turn_rate"][1, x5], f["constant_turn_rate"][1, y5] - radius) == \
        pytest.approx(radius)
    assert np.all(f["constant_turn_rate"][:, 2::3] == 0.0)  # z: up, forecast 0


def test_physics_forecast_never_backs_the_car_up(tiny, tmp_path):
    # A car in a forward gear that stands (or reads slightly negative speed) while braking stays
    # put; one that brakes to a stop stays stopped. The forecasts read no gear: a row in reverse
    # follows the same rule (trajstack/physics.py docstring).
    cfg = _cfg(tiny, tmp_path)
    spec, phys = cfg.dataset, cfg.features.physics
    table = pd.DataFrame({"vEgo": [0.0, -0.16, 2.0, -0.16, 0.0],
                          "aEgo": [-0.5, -0.5, -2.0, 0.0, -0.5],
                          "steeringAngleDeg": [0.0, 30.0, 90.0, 0.0, 0.0],
                          "gearShifter": ["drive", "drive", "drive", "drive", "reverse"]})
    f = physics_forecasts(table, spec, phys)
    x_cols = [spec.target_columns.index(f"x_{k}") for k in range(spec.n_horizons)]
    y_cols = [spec.target_columns.index(f"y_{k}") for k in range(spec.n_horizons)]
    for model in ("constant_velocity", "constant_acceleration", "constant_turn_rate"):
        standing = f[model][[0, 1, 3, 4]]
        assert np.all(standing[:, x_cols] == 0.0) and np.all(standing[:, y_cols] == 0.0), model
    # 2 m/s braking at 2 m/s2 stops after 1 s, 1 m along the arc, and stays there.
    for model in ("constant_acceleration", "constant_turn_rate"):
        x, y = f[model][2, x_cols], f[model][2, y_cols]
        assert np.all(np.diff(x) >= 0) and np.allclose(x[1:], x[1]), model  # stopped from 1 s on
        assert np.hypot(x[-1], y[-1]) == pytest.approx(1.0, rel=1e-3)  # chord of a 1 m arc
    assert f["constant_turn_rate"][2, y_cols[-1]] > 0.0  # the 1 m were driven on a left arc
    base = physics_baseline(table, spec, phys)
    assert np.all(base[[0, 1, 3, 4]] == 0.0)


def test_traffic_light_row_counts_and_largest_light():
    classes = ["green", "red", "left", "right"]
    entries = [{"index": 0, "class": "red", "bbox": [0, 0, 2, 2]},
               {"index": 0, "class": "left", "bbox": [0, 0, 2, 2]},
               {"index": 1, "class": "green", "bbox": [10, 10, 11, 11]}]
    row = light_row(entries, classes, largest=True)
    assert row[:2] == [3.0, 2.0] and row[2:6] == [1.0, 1.0, 1.0, 0.0]
    assert row[6:10] == [0.0, 1.0, 1.0, 0.0]  # largest light: red + left
    assert row[10:14] == [0, 0, 2, 2]
    assert light_row([], classes, largest=False) == [0.0] * 6


def test_traffic_light_features_read_files(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path, "features.builders=[traffic_lights]")
    table = build_features(cfg)
    row_id = tiny.train_ids[0]
    entries = json.loads(tiny.light_path(row_id).read_text())
    row = table.train.set_index("ID").loc[row_id]
    assert row["tl_n_entries"] == len(entries)
    assert {f"tl_count_{c}" for c in cfg.dataset.traffic_light_classes} <= set(table.train.columns)


def test_unknown_and_duplicate_builders_are_refused(tiny, tmp_path):
    with pytest.raises(RegistryError, match="unknown feature builder 'lagz'.*scene_lags"):
        build_features(_cfg(tiny, tmp_path, "features.builders=[telemetry, lagz]"))
    with pytest.raises(ConfigError, match="more than once"):
        _cfg(tiny, tmp_path, "features.builders=[telemetry, telemetry]")
    registry = Registry("thing")
    registry.register("a")(1)
    with pytest.raises(RegistryError, match="already registered"):
        registry.register("a")(2)
    assert set(BUILDERS.keys()) == {"telemetry", "scene_lags", "physics", "traffic_lights", "stage1",
                                   "files", "image_stats"}


def test_features_are_cached_by_input_hash(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path, "features.builders=[telemetry, scene_lags, physics]")
    lines: list[str] = []
    first = build_features(cfg, log=lines.append)
    second = build_features(cfg, log=lines.append)
    assert [("built" in s) for s in lines] == [True] * 3 + [False] * 3
    pd.testing.assert_frame_equal(first.train, second.train)
    assert first.categorical_columns == ["gearShifter"]
    changed = build_features(_cfg(tiny, tmp_path, "features.builders=[telemetry, scene_lags, physics]",
                                  "features.scene_lags.offsets=[-1]"), log=lines.append)
    assert "built" in lines[-2] and changed.hash != first.hash


def test_telemetry_with_nan_and_missing_columns_goes_through(tmp_path):
    # A drive log exported to this schema: no steering / blinker columns at all, aEgo empty.
    overrides = ["dataset.telemetry={vEgo: float, aEgo: float, gearShifter: category}",
                 "dataset.flip.negate_columns=[]", "dataset.flip.swap_columns=[]",
                 "dataset.traffic_lights_dir=null"]
    spec = load_config("demo", overrides).dataset
    ds = make_tiny_dataset(tmp_path / "data", n_scenes=6, rows_per_scene=3, spec=spec)
    for split in ("train", "test"):
        frame = ds.read_table(split)
        frame["aEgo"] = ""
        ds.write_table(split, frame)
    cfg = load_config("demo", [*overrides, f"data_dir={ds.root}", f"output_dir={tmp_path / 'out'}",
                               NO_STAGE1])
    with pytest.warns(UserWarning):
        table = build_features(cfg)
    assert table.train["aEgo"].isna().all() and table.train["vEgo"].notna().all()
    assert table.train["phys_cv_x_5"].notna().all()  # speed is there
    assert table.train["phys_ca_x_5"].isna().all()  # acceleration is not
    base = physics_baseline(read_table(ds.root, spec, "train"), spec, cfg.features.physics)
    assert np.isfinite(base).all()  # residual baseline falls back to constant velocity
    assert not any(c.startswith("tl_") for c in table.train.columns)
