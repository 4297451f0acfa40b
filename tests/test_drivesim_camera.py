"""drivesim camera_state: one row per train and test row, numeric, and blind to the future.

The future after t is perturbed two ways: fresh driver randomness from t on, and another
route choice at the next crossing. Neither may change what the frames at t show (camera_state,
and the frames themselves), while both change the future (the targets).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from drivesim.render import render_frame
from drivesim.road import TURN_REVEAL_M, reroute
from drivesim.scene import (
    CAMERA_COLUMNS,
    SceneJob,
    camera_state,
    simulate_chunk,
    step_of,
    targets,
    world_arrays,
)
from drivesim.writer import generate
from trajstack.config import load_config

SPEC = load_config("atmacup18").dataset


def test_camera_state_has_every_train_and_test_row(tmp_path):
    generate(tmp_path, n_train=8, n_test=4, seed=3, spec=SPEC, render=False, progress=False)
    cam = pd.read_csv(tmp_path / "oracle" / "camera_state.csv", dtype={SPEC.id_column: str})
    train = pd.read_csv(tmp_path / SPEC.train_file, dtype={SPEC.id_column: str})
    test = pd.read_csv(tmp_path / SPEC.test_file, dtype={SPEC.id_column: str})
    assert list(cam.columns) == [SPEC.id_column, *CAMERA_COLUMNS]
    assert sorted(cam[SPEC.id_column]) == sorted([*train[SPEC.id_column], *test[SPEC.id_column]])
    assert cam[SPEC.id_column].is_unique
    for col in CAMERA_COLUMNS:
        assert pd.api.types.is_float_dtype(cam[col]) or pd.api.types.is_integer_dtype(cam[col]), col
    # always-known columns are never empty; perception-limited ones are empty exactly when unseen
    for col in ("curv_10", "curv_40", "grade_0", "dz_40", "lead_present", "lane_index", "n_lanes",
                "lane_offset", "turn_committed"):
        assert cam[col].notna().all(), col
    assert (cam["lead_gap"].notna() == (cam["lead_present"] == 1)).all()
    assert set(cam["light_state"].dropna()) <= {0.0, 1.0, 2.0}
    assert not set(cam.columns) & {"drive_v_des", "drive_aggressiveness", "lane_change_dir"}


def _urban_jobs(n: int) -> list[SceneJob]:
    """Scenes with at least two crossings (so a route choice lies ahead of some row)."""
    from drivesim.road import make_world

    jobs, i = [], 0
    while len(jobs) < n:
        job = SceneJob(21, "train", i)
        if make_world(job.rngs()["world"]).n_intersections >= 2:
            jobs.append(job)
        i += 1
    return jobs


def _camera(run) -> np.ndarray:
    cam = camera_state(run, SPEC)
    return np.stack([cam[c] for c in CAMERA_COLUMNS], 1)


def test_fresh_driver_randomness_after_t_leaves_camera_state_unchanged():
    jobs = _urban_jobs(6)
    t_row = 22.0  # row at 22 s: the future is redrawn from its step on
    base = simulate_chunk(jobs, SPEC.horizons_s)
    other = simulate_chunk(jobs, SPEC.horizons_s, reseed_from_step=step_of(t_row))
    n_before = n_after_changed = 0
    for a, b in zip(base, other, strict=True):
        ca, cb = _camera(a), _camera(b)
        ta, tb = targets(a, SPEC.horizons_s), targets(b, SPEC.horizons_s)
        for i, ds in enumerate(a.row_ds):
            if ds * 0.1 <= t_row:
                np.testing.assert_array_equal(ca[i], cb[i])  # NaN == NaN here
                n_before += 1
            else:
                n_after_changed += int(not np.allclose(ta[i], tb[i]))
        if t_row * 10 in a.row_ds:  # the row at t itself: the future it predicts did change
            i = a.row_ds.index(int(t_row * 10))
            assert not np.allclose(ta[i], tb[i])
    assert n_before >= 5 and n_after_changed >= 3


def _row_before_choice(run) -> tuple[int, int] | None:
    """(row, crossing) for a row whose next crossing's turn is not yet decided nor shown, but
    whose crossing lies within the frames' reach (so a drawn route would show)."""
    wd = run.world
    best = None
    for i, snap in enumerate(run.snapshots):
        j, s = int(snap["j"][0]), float(snap["s"][0])
        undecided = j < wd.n_intersections and not snap["decided"][0]
        hidden = undecided and s < wd.s_int[j] - wd.half_w[j] - TURN_REVEAL_M
        if hidden and wd.s_int[j] - s < 140.0 and (best is None or wd.s_int[j] - s < best[2]):
            best = (i, j, wd.s_int[j] - s)
    return None if best is None else best[:2]


def test_another_route_choice_ahead_leaves_camera_state_and_frames_unchanged():
    """A branch not yet taken must not show: not in camera_state, not in the frames (lane
    markings, the road beyond the crossing, other cars following the ego's route)."""
    checked = 0
    for job in _urban_jobs(16):
        (base,) = simulate_chunk([job], SPEC.horizons_s)
        found = _row_before_choice(base)
        if found is None:
            continue
        i, j = found
        geom = int(base.world.turn_geom[j])
        new_geom = 1 if geom == 0 else 0
        (alt,) = simulate_chunk([job], SPEC.horizons_s, world_edit=lambda w, j=j, g=new_geom: reroute(w, j, g))
        assert int(alt.world.turn_geom[j]) == new_geom
        ca, cb = _camera(base), _camera(alt)
        for r in range(i + 1):
            np.testing.assert_array_equal(ca[r], cb[r], err_msg=f"{job.scene_id} row {r}")
        # the three frames of that row are pixel for pixel the same
        k = int(base.row_steps[i])
        for off in SPEC.frame_offsets_s:
            kk = k + int(round(off / 0.1))
            imgs = []
            for run in (base, alt):
                rec = run.rec
                pose = dict(X=rec["X"][kk], Y=rec["Y"][kk], psi=rec["psi"][kk], s=rec["s"][kk],
                            t=kk * 0.1, lights=rec["light"][kk], l_s=rec["l_s"][kk], l_a=rec["l_a"][kk],
                            l_v=rec["l_v"][kk], l_lane=rec["l_lane"][kk], present=bool(rec["l_present"][kk]))
                img, _ = render_frame(run.world, world_arrays(run.world), pose, SPEC.camera,
                                      SPEC.image_width, SPEC.image_height, np.random.default_rng(0))
                imgs.append(img.astype(int))
            assert np.abs(imgs[0] - imgs[1]).max() == 0, f"{job.scene_id}: frame shows the route"
        checked += 1
        if checked == 3:
            break
    assert checked == 3


@pytest.mark.parametrize("geom", [1, -1])
def test_reroute_changes_the_future_route(geom):
    from drivesim.road import make_world

    job = _urban_jobs(1)[0]
    world = make_world(job.rngs()["world"])
    j = 0
    other = reroute(world, j, geom if world.turn_geom[j] != geom else 0)
    before = int(min(world.s_arc0[j], other.s_arc0[j])) - 1
    np.testing.assert_allclose(world.X[:before], other.X[:before])
    assert np.abs(world.X[-1] - other.X[-1]) + np.abs(world.Y[-1] - other.Y[-1]) > 5.0
    np.testing.assert_allclose(world.Z, other.Z)
