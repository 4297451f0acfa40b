"""The HTML report and its camera projection."""

import re

import numpy as np
import pandas as pd
import pytest
from test_blend_fixtures import make_experiment, write_all_models

from ensembling.overlays import ego_to_camera, path_points, project
from ensembling.report import aggregate_importance, build_report
from trajstack.cli import main as cli_main
from trajstack.config import load_config
from trajstack.spec import CameraSpec

CAMERA = CameraSpec(K=[[226.164, 0.0, 63.624], [0.0, 224.824, 11.76], [0.0, 0.0, 1.0]], height_m=1.22)


def test_point_ahead_at_camera_height_projects_to_principal_point():
    pixels, valid = project(np.array([[10.0, 0.0, 1.22]]), CAMERA)
    assert valid.all()
    np.testing.assert_allclose(pixels[0], [63.624, 11.76])


def test_road_points_fall_below_the_horizon_and_left_is_left():
    # A point on the road d metres ahead is h/d below the optical axis: v = cy + fy * h / d.
    pixels, _ = project(np.array([[20.0, 0.0, 0.0], [40.0, 0.0, 0.0], [20.0, 3.0, 0.0]]), CAMERA)
    np.testing.assert_allclose(pixels[0, 1], 11.76 + 224.824 * 1.22 / 20)
    assert pixels[1, 1] < pixels[0, 1]  # farther is closer to the horizon
    assert pixels[2, 0] < 63.624  # y left -> smaller u
    np.testing.assert_allclose(ego_to_camera(np.array([[5.0, 2.0, 0.5]]), 1.22), [[-2.0, 0.72, 5.0]])


def test_points_behind_the_camera_are_not_drawn():
    _, valid = project(np.array([[-3.0, 0.0, 0.0], [0.2, 0.0, 0.0], [2.0, 0.0, 0.0]]), CAMERA)
    assert valid.tolist() == [False, False, True]


def test_path_points_follow_the_spec_target_order():
    spec = load_config("atmacup18").dataset
    row = np.arange(len(spec.target_columns), dtype=float)  # x_0, y_0, z_0, x_1, ...
    points = path_points(row, spec)
    assert points.shape == (spec.n_horizons, 3)
    np.testing.assert_allclose(points[1], [3.0, 4.0, 5.0])
    with pytest.raises(ValueError, match="ego_axes"):
        path_points(row, spec, ("x", "y", "w"))


def test_aggregate_importance_long_and_wide():
    long = pd.DataFrame({"feature": ["a", "b", "a", "b"], "target": ["x_0"] * 2 + ["y_0"] * 2,
                         "importance": [3.0, 1.0, 1.0, 3.0], "fold": [0, 0, 1, 1]})
    shares = aggregate_importance(long)
    np.testing.assert_allclose(shares.sum(), 1.0)
    assert set(shares.index) == {"a", "b"}
    wide = pd.DataFrame({"name": ["a", "b", "c"], "x_0": [1.0, 5.0, 0.0], "y_0": [1.0, 3.0, 0.0]})
    assert aggregate_importance(wide).index.tolist() == ["b", "a", "c"]
    assert aggregate_importance(pd.DataFrame({"v": [1.0]})) is None


def test_blend_writes_report_with_every_figure(tmp_path, capsys):
    exp = make_experiment(tmp_path, extra_overrides=["report.overlay_rows=1"])
    write_all_models(exp)
    assert cli_main(["blend", *exp.cli_args()]) == 0
    report = exp.cfg.experiment_dir / "report"
    html = (report / "index.html").read_text()
    images = re.findall(r"<img src='([^']+)'", html)
    for expected in ("mae_by_model.png", "mae_per_axis.png", "mae_per_horizon.png",
                     "blend_weights.png", "curves_stage1_convnext.png",
                     "importance_stage2_lightgbm.png", "error_vs_vEgo.png",
                     "error_vs_steeringAngleDeg.png", "overlay_best.png", "overlay_worst.png",
                     "overlay_random.png"):
        assert expected in images
    for image in images:
        assert (report / image).stat().st_size > 1000, image
    assert "blend/lp (nested)" in html and "blend/lp (in-sample)" in html
    # Up to date: a second build does nothing; --force rebuilds.
    capsys.readouterr()
    assert cli_main(["report", *exp.cli_args()]) == 0
    assert "up to date" in capsys.readouterr().out
    assert cli_main(["report", *exp.cli_args("--force")]) == 0


def test_report_without_blend_and_with_a_missing_telemetry_column(tmp_path):
    exp = make_experiment(tmp_path, extra_overrides=["report.speed_column=speed_kmh",
                                                     "report.overlay_rows=1"])
    write_all_models(exp)
    index = build_report(exp.cfg)
    html = index.read_text()
    assert "report.speed_column=&#x27;speed_kmh&#x27; is not a train column" in html
    assert "blend_weights.png" not in html and "overlay_best.png" in html
