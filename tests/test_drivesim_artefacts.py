"""drivesim v2: simulator patterns a model could learn but real driving data lacks stay gone.

Each test measures one artefact on simulated rows or runs and fails if it comes back: the
start transient, grade without dynamics, noiseless CAN signals, one car for every scene, habits
on one knob, memoryless lights, too many parked rows.
"""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from drivesim.road import DS, make_world
from drivesim.scene import SceneJob, simulate_chunk, step_of, telemetry
from drivesim.writer import simulate_rows
from trajstack.config import load_config

SPEC = load_config("atmacup18").dataset


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    """Train rows of a few hundred scenes, no images (statistics over scenes)."""
    return simulate_rows(240, 0, seed=7, spec=SPEC, workers=2)


@pytest.fixture(scope="module")
def runs():
    """Three chunks of scenes with their per-step records."""
    return [run for start in (0, 16, 32) for run in
            simulate_chunk([SceneJob(9, "train", i) for i in range(start, start + 16)], SPEC.horizons_s)]


@functools.cache
def _worlds(n: int, seed: int = 4) -> list:
    return [make_world(SceneJob(seed, "train", i).rngs()["world"]) for i in range(n)]


def test_first_row_of_a_drive_is_like_any_other(rows):
    """The row at 2 s (the first simulated row) must not be special: not mostly straight road,
    not mostly accelerating out of a warm-up (v1: 81% straight vs 48%, 37% vs 26% accelerating)."""
    from scipy.stats import ks_2samp

    ds = rows[SPEC.id_column].str.split("_").str[1].astype(int)
    first, later = rows[ds == 20], rows[ds > 20]
    assert len(first) > 150
    straight = lambda t: (t["hidden:curv_40"].abs() < 1e-4).mean()  # noqa: E731
    assert abs(straight(first) - straight(later)) < 0.12
    accel = lambda t: (t["aEgo"].astype(float) > 0.2).mean()  # noqa: E731
    assert abs(accel(first) - accel(later)) < 0.07
    for col in ("aEgo", "vEgo", "hidden:curv_10", "hidden:curv_40"):
        stat = ks_2samp(first[col].astype(float), later[col].astype(float)).statistic
        assert stat < 0.15, (col, stat)


def _constant_grade(world, g: float):
    grade = np.full_like(world.grade, g)
    Z = np.concatenate([[0.0], np.cumsum(grade[:-1] * DS)])
    return replace(world, grade=grade, Z=Z)


def test_grade_slows_the_car_uphill():
    """Gravity acts along the slope and the driver compensates only part of it at once."""
    jobs = [SceneJob(3, "train", i) for i in range(8)]
    speed = {}
    for g in (0.06, -0.06):
        out = simulate_chunk(jobs, SPEC.horizons_s, world_edit=lambda w, g=g: _constant_grade(w, g))
        speed[g] = np.mean([run.rec["v"][step_of(0.0):].mean() for run in out if run.world.kind != "parked"])
    assert speed[0.06] < speed[-0.06] - 0.15, speed


def test_gas_is_not_a_noiseless_function_of_acceleration(rows):
    on = rows[rows["gas"] > 0]
    X = np.column_stack([np.ones(len(on)), on["aEgo"], on["vEgo"], on["aEgo"] ** 2, on["aEgo"] * on["vEgo"]])
    coef, *_ = np.linalg.lstsq(X, on["gas"].to_numpy(float), rcond=None)
    resid = on["gas"].to_numpy(float) - X @ coef
    assert resid.std() > 0.04, resid.std()


def test_can_signals_lag_the_true_state(runs):
    """aEgo is the acceleration of the last 0.1 s (a CAN lag), not that of the coming step."""
    now, lagged = [], []
    for run in runs:
        tel, k = telemetry(run), run.row_steps
        now.append(np.corrcoef(tel["aEgo"], run.rec["a"][k])[0, 1] if k.size > 2 else np.nan)
        lagged.append(np.corrcoef(tel["aEgo"], run.rec["a"][k - 1])[0, 1] if k.size > 2 else np.nan)
    tel = pd.DataFrame({"now": now, "lagged": lagged}).dropna()
    assert (tel["lagged"] > tel["now"]).mean() > 0.7


def test_blinkers_precede_most_but_not_all_lane_changes(runs):
    signalled = []
    for run in runs:
        lane, blink = run.rec["lane"], run.rec["blink_l"] | run.rec["blink_r"]
        for k in np.flatnonzero(np.diff(lane) != 0) + 1:
            signalled.append(bool(blink[max(k - 8, 0) : k].any()))
    assert len(signalled) >= 15
    assert 0.6 < np.mean(signalled) < 0.97, (np.mean(signalled), len(signalled))


def test_each_car_has_its_own_wheelbase_and_steering_ratio():
    worlds = _worlds(1500)
    wb = np.array([w.wheelbase for w in worlds])
    ratio = np.array([w.steer_ratio for w in worlds])
    assert wb.min() >= 2.5 and wb.max() <= 3.1 and wb.std() > 0.1
    assert ratio.min() >= 12 and ratio.max() <= 18 and ratio.std() > 1.0
    # and the dynamics use them: the same drive with another car steers differently
    job = [SceneJob(3, "train", 1)]
    a = simulate_chunk(job, SPEC.horizons_s, world_edit=lambda w: replace(w, wheelbase=2.5, steer_ratio=12.0))[0]
    b = simulate_chunk(job, SPEC.horizons_s, world_edit=lambda w: replace(w, wheelbase=3.1, steer_ratio=18.0))[0]
    ta, tb = telemetry(a)["steeringAngleDeg"], telemetry(b)["steeringAngleDeg"]
    assert np.abs(ta - tb).max() > 1.0


def test_drive_habits_do_not_collapse_onto_one_scalar():
    habits = pd.DataFrame([
        dict(v_des=w.habits.v_des, headway=w.habits.headway, b_comf=w.habits.b_comf,
             a_lat=w.habits.a_lat, a_max=w.habits.a_max, kind=w.kind) for w in _worlds(1500)
    ])
    habits["v_des"] -= habits.groupby("kind")["v_des"].transform("mean")  # the road sets the level
    corr = habits.drop(columns="kind").corr().to_numpy()
    share_pc1 = np.linalg.eigvalsh(corr)[-1] / len(corr)
    assert share_pc1 < 0.7, share_pc1
    off = corr[~np.eye(len(corr), dtype=bool)]
    assert np.abs(off).max() < 0.8
    assert corr[0, 1] < -0.1 and corr[0, 3] > 0.1  # faster drivers: shorter headway, harder cornering


def test_traffic_lights_run_on_a_cycle(runs):
    """Green phases have a length (not an exponential wait): time in a state tells time left."""
    greens = []
    for run in runs:
        L = run.rec["light"]  # (steps, intersections)
        for j in range(run.world.n_intersections):
            starts = np.flatnonzero((L[1:, j] == 0) & (L[:-1, j] != 0)) + 1
            ends = np.flatnonzero((L[1:, j] != 0) & (L[:-1, j] == 0)) + 1
            for s in starts:
                later = ends[ends > s]
                if later.size:
                    greens.append((later[0] - s) * 0.1)
    greens = np.array(greens)
    assert greens.size >= 30
    assert greens.min() >= 15.0 and greens.std() / greens.mean() < 0.4, (greens.min(), greens.std() / greens.mean())


def test_drive_gear_share_as_in_the_real_data(rows):
    parked = np.mean([w.kind == "parked" for w in _worlds(1500)])  # v1: 2% of drives
    assert parked < 0.01, parked
    assert (rows["gearShifter"] == "drive").mean() >= 0.99
