"""Simulate a chunk of scenes together (vectorised over scenes) and cut them into rows.

A scene is one drive snippet: up to six rows 10 s apart, each needing the second before it (for
the frames) and the three seconds after it (for the targets). Scenes of a chunk run as one
numpy batch; each scene's randomness comes only from its own generators, derived from
(seed, split, scene index), and chunks are fixed groups of scene indices, so the output does
not depend on how many workers run the chunks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from drivesim import driver
from drivesim.road import LANE_W, MAX_INTERSECTIONS, TURN_REVEAL_M, World, lane_offset, make_world
from drivesim.vehicle import CAR_LENGTH, GRAVITY, route_at, route_point

DT = 0.1
T_WARM = 12.0  # simulated before the first frame: the first row must look like any other
ROW_TIMES_DS = tuple(range(20, 521, 100))  # deciseconds of the rows in a scene (the real IDs)
N_ROWS_P = (0.07, 0.07, 0.08, 0.08, 0.08, 0.62)  # 1..6 rows per scene (mean about 4.8)
SPLIT_CODE = {"train": 0, "test": 1}
HIDDEN_COLUMNS = [
    "curv_10", "curv_20", "curv_40", "grade_0", "grade_20", "grade_40", "dz_20", "dz_40",
    "lead_visible", "lead_gap", "lead_speed", "lead_braking", "light_state", "stop_dist",
    "int_dist", "turn_intent", "lane", "n_lanes", "lane_offset_err", "lane_change_dir",
    "drive_v_des", "drive_aggressiveness",
]  # fmt: skip


# What perfect perception could read from the three frames at t (see `camera_state`): no
# habits, controller states, timers or seeds; NaN where the frames do not show it.
CAMERA_COLUMNS = [
    "curv_10", "curv_20", "curv_40", "grade_0", "grade_20", "grade_40", "dz_20", "dz_40",
    "lead_present", "lead_gap", "lead_closing_speed", "lead_brake_lights",
    "light_state", "light_state_t-0.5", "light_state_t-1.0", "stop_line_dist", "intersection_dist",
    "lane_index", "n_lanes", "lane_offset", "turn_committed",
]  # fmt: skip
LEAD_VISIBLE_M = 120.0  # a car further ahead is a few pixels wide
STOP_LINE_VISIBLE_M = 100.0
INTERSECTION_VISIBLE_M = 150.0


@dataclass
class SceneJob:
    """What identifies a scene: everything else follows from (seed, split, index)."""

    seed: int
    split: str
    index: int

    @property
    def scene_id(self) -> str:
        return hashlib.md5(f"drivesim:{self.seed}:{self.split}:{self.index}".encode()).hexdigest()

    def rngs(self) -> dict[str, np.random.Generator]:
        names = ("world", "drive", "sensor", "render", "rollout")
        seqs = np.random.SeedSequence([self.seed, SPLIT_CODE[self.split], self.index]).spawn(len(names))
        return {n: np.random.default_rng(s) for n, s in zip(names, seqs, strict=True)}


@dataclass
class SceneRun:
    """One simulated scene: its world, its kept rows and the per-step records."""

    job: SceneJob
    world: World
    row_steps: np.ndarray  # step index of each kept row
    row_ds: list[int]  # deciseconds of each kept row
    rec: dict[str, np.ndarray]  # per step (pre-step pose, the step's controls)
    snapshots: list[dict]  # full state before each kept row's step (for oracle rollouts)
    rngs: dict[str, np.random.Generator]


def step_of(t_s: float) -> int:
    return int(round((t_s + T_WARM) / DT))


def n_steps(horizons_s: list[float]) -> int:
    return step_of(ROW_TIMES_DS[-1] * 0.1 + max(horizons_s)) + 1


def stack_worlds(worlds: list[World]) -> dict[str, np.ndarray]:
    """World arrays of a chunk, one row per scene."""
    keys = ("X", "Y", "Z", "theta", "grade", "kappa", "kappa_road", "kappa_lead", "s_int", "s_stop", "s_arc0",
            "s_arc1", "turn_geom", "radius", "half_w", "has_light")
    w = {k: np.stack([getattr(wd, k) for wd in worlds]) for k in keys}
    w["n_lanes"] = np.array([wd.n_lanes for wd in worlds])
    w["park"] = np.array([wd.kind == "parked" for wd in worlds])
    w["lead_v_des"] = np.array([0.0 if wd.kind == "parked" else wd.lead_v_des for wd in worlds])
    w["lead_exit_s"] = np.array([wd.lead_exit_s for wd in worlds])
    w["green_s"] = np.stack([wd.green_s for wd in worlds])
    w["red_s"] = np.stack([wd.red_s for wd in worlds])
    w["wheelbase"] = np.array([wd.wheelbase for wd in worlds])
    w["steer_ratio"] = np.array([wd.steer_ratio for wd in worlds])
    for k in ("v_des", "a_max", "b_comf", "headway", "s0", "a_lat", "v_noise", "d_noise", "a_noise",
              "lc_rate", "reaction", "p_turn", "torque_gain", "grade_comp", "aggressiveness"):
        w[k] = np.array([getattr(wd.habits, k) for wd in worlds], float)
    return w


def gather_habits(w: dict, sc: np.ndarray) -> dict[str, np.ndarray]:
    """Per-member copies of the per-scene scalars the step needs."""
    keys = ("n_lanes", "park", "lead_v_des", "lead_exit_s", "v_des", "a_max", "b_comf", "headway", "s0",
            "a_lat", "v_noise", "d_noise", "a_noise", "lc_rate", "reaction", "p_turn", "torque_gain",
            "grade_comp", "wheelbase", "steer_ratio")
    return {k: w[k][sc] for k in keys}


def init_state(w: dict, worlds: list[World]) -> dict[str, np.ndarray]:
    """State at the first simulated step."""
    B = len(worlds)
    sc = np.arange(B)
    park = w["park"]
    lane = np.array([wd.lane0 for wd in worlds])
    d = np.where(park, w["n_lanes"] * LANE_W + 1.0, lane_offset(lane))
    s = np.full(B, 15.0)
    X, Y, _, th = route_point(w, sc, s, d)
    z = np.zeros(B)
    zi = np.zeros(B, int)
    st = dict(
        sc=sc, X=X, Y=Y, psi=th, v=np.array([wd.v0 for wd in worlds]), a=z.copy(),
        delta=np.arctan(w["wheelbase"] * route_at(w["kappa"], sc, s)), s=s, d_act=d, lane=lane, d_cmd=d,
        a_drv=GRAVITY * route_at(w["grade"], sc, s), lc_blink=np.zeros(B, bool), turn_blink=np.zeros(B, bool),
        lc_phase=zi.copy(), lc_t=z.copy(), lc_d1=np.ones(B), lc_d2=np.full(B, 4.0),
        lc_from=lane.copy(), lc_to=lane.copy(), vn=z.copy(), dn=z.copy(), an=z.copy(), j=zi.copy(),
        decided=zi.copy(), intent=zi.copy(), choice=-np.ones(B, int), hold=z.copy(),
        light=np.stack([wd.light0 for wd in worlds]),
        light_t=np.stack([wd.light_t0 for wd in worlds]),
        l_s=s + np.array([wd.lead_gap for wd in worlds]) + CAR_LENGTH,
        l_v=np.array([0.0 if wd.kind == "parked" else wd.v0 for wd in worlds]), l_a=z.copy(),
        l_vn=z.copy(), l_present=np.array([wd.lead_present for wd in worlds]), l_lane=lane.copy(),
        l_j=zi.copy(), l_choice=-np.ones(B, int), l_hold=z.copy(),
    )
    st["prev_ls"] = st["light"][sc, 0]
    st["l_prev"] = st["prev_ls"].copy()
    return st


REC_BEFORE = ("X", "Y", "psi", "v", "s", "d_act", "lane", "l_s", "l_v", "l_a", "l_lane", "l_present", "light")
REC_AFTER = ("a", "a_drv", "delta", "torque", "blink_l", "blink_r")


def simulate_chunk(jobs: list[SceneJob], horizons_s: list[float], world_edit=None,
                   reseed_from_step: int | None = None) -> list[SceneRun]:
    """Run the scenes of one chunk from start to the last row's last horizon.

    Parameters
    ----------
    jobs : the chunk's scenes.
    horizons_s : target horizons (s); the run ends at the last row's largest horizon.
    world_edit : optional ``World -> World`` applied to each drawn world (tests: another
        route choice at an intersection).
    reseed_from_step : optional step from which the driver noise is drawn afresh (tests:
        another future after t).

    Returns
    -------
    One SceneRun per job, in order.
    """
    rngs = [job.rngs() for job in jobs]
    worlds = [make_world(r["world"]) for r in rngs]
    if world_edit is not None:
        worlds = [world_edit(wd) for wd in worlds]
    kept = []
    for r in rngs:
        n = int(r["world"].choice(np.arange(1, 7), p=N_ROWS_P))
        first = int(r["world"].integers(0, 7 - n))
        kept.append(list(ROW_TIMES_DS[first : first + n]))
    K = n_steps(horizons_s)
    w = stack_worlds(worlds)
    st = init_state(w, worlds)
    hb = gather_habits(w, st["sc"])
    # each scene's noise comes from its own generator: identical whatever the chunking
    U = np.stack([r["drive"].random((K, driver.N_UNIFORM)) for r in rngs], axis=1)
    N = np.stack([r["drive"].standard_normal((K, driver.N_NORMAL)) for r in rngs], axis=1)
    if reseed_from_step is not None:
        other = np.random.default_rng([job.index + 7919 for job in jobs])
        U[reseed_from_step:] = other.random(U[reseed_from_step:].shape)
        N[reseed_from_step:] = other.standard_normal(N[reseed_from_step:].shape)
    snap_steps = {step_of(t * 0.1) for ks in kept for t in ks}
    rec = {k: [] for k in REC_BEFORE + REC_AFTER}
    snaps: dict[int, dict] = {}
    for k in range(K):
        if k in snap_steps:
            snaps[k] = {key: val.copy() for key, val in st.items()}
        for key in REC_BEFORE:
            rec[key].append(st[key])
        driver.step(st, w, hb, U[k], N[k], DT, replay=True)
        for key in REC_AFTER:
            rec[key].append(st[key])
    stacked = {k: np.stack(v, axis=1) for k, v in rec.items()}
    runs = []
    for b, job in enumerate(jobs):
        steps = np.array([step_of(t * 0.1) for t in kept[b]])
        runs.append(SceneRun(
            job=job, world=worlds[b], row_steps=steps, row_ds=kept[b],
            rec={k: v[b] for k, v in stacked.items()},
            snapshots=[_member(snaps[k], b) for k in steps], rngs=rngs[b],
        ))
    return runs


def _member(st: dict, b: int) -> dict:
    return {k: v[b : b + 1].copy() for k, v in st.items()}


def world_arrays(world: World) -> dict[str, np.ndarray]:
    """A single scene's world in the stacked layout (one row), for look-ups."""
    return stack_worlds([world])


def targets(run: SceneRun, horizons_s: list[float]) -> np.ndarray:
    """(rows, horizons, 3) exact future positions in the ego frame at each row's time."""
    w = world_arrays(run.world)
    r = run.rec
    out = np.empty((len(run.row_steps), len(horizons_s), 3))
    for i, k in enumerate(run.row_steps):
        fut = np.array([k + int(round(h / DT)) for h in horizons_s])
        z0 = route_at(w["Z"], np.zeros(1, int), r["s"][k : k + 1])
        zf = route_at(w["Z"], np.zeros(fut.size, int), r["s"][fut])
        dx, dy = r["X"][fut] - r["X"][k], r["Y"][fut] - r["Y"][k]
        c, s = np.cos(r["psi"][k]), np.sin(r["psi"][k])
        out[i, :, 0] = c * dx + s * dy
        out[i, :, 1] = -s * dx + c * dy
        out[i, :, 2] = zf - z0
    return out


CAN_LAG_STEPS = 1  # the continuous CAN signals arrive 0.1 s late


def telemetry(run: SceneRun) -> dict[str, np.ndarray]:
    """Signals at each kept row as a CAN bus reports them, keyed by their atmaCup names.

    Continuous signals lag by CAN_LAG_STEPS and carry noise and per-car calibration errors;
    the pedals follow the engine/brake share of the acceleration (not the slope's) through a
    per-car pedal map with noise; blinkers are whatever the driver chose to signal.
    """
    r, k, rng = run.rec, run.row_steps, run.rngs["sensor"]
    n = k.size
    park = run.world.kind == "parked"
    kl = np.maximum(k - CAN_LAG_STEPS, 0)
    steer_bias = rng.normal(0, 0.8)  # steering-angle sensor offset of this car (deg)
    speed_scale = 1.0 + rng.normal(0, 0.01)  # wheel-speed calibration
    accel_bias = rng.normal(0, 0.05)
    gas_gain, gas_idle = rng.uniform(0.3, 0.5), rng.uniform(0.04, 0.12)
    brake_thr = rng.uniform(-0.6, -0.2)  # pedal acceleration below which the brake is pressed
    v, a_drv = r["v"][kl], r["a_drv"][kl] + rng.normal(0, 0.08, n)
    steer = r["delta"][kl] * run.world.steer_ratio * 180.0 / np.pi + steer_bias + rng.normal(0, 0.3, n)
    brake_p = ((a_drv < brake_thr) | (v < 0.05)) & (not park)
    pedal = gas_idle + gas_gain * a_drv + v / 60.0 + rng.normal(0, 0.03, n)
    gas = np.where((a_drv > 0.0) & ~brake_p & (not park), np.clip(pedal, 0.0, 1.0), 0.0)
    return {
        "vEgo": v * speed_scale + rng.normal(0, 0.04, n),
        "aEgo": r["a"][kl] + accel_bias + rng.normal(0, 0.08, n),
        "steeringAngleDeg": steer,
        "steeringTorque": np.clip(r["torque"][kl] + rng.normal(0, 12.0, n), -700, 700),
        "brake": np.zeros(n),
        "brakePressed": brake_p,
        "gas": gas,
        "gasPressed": gas > 0,
        "gearShifter": np.array(["park" if park else "drive"] * n, dtype=object),
        "leftBlinker": r["blink_l"][k].astype(bool),
        "rightBlinker": r["blink_r"][k].astype(bool),
    }


def turn_committed(world: World, snap: dict) -> float:
    """+1/-1 once a left/right turn shows in the frames (`road.route_cut`), else 0."""
    j, s = int(snap["j"][0]), float(snap["s"][0])
    intent = int(snap["intent"][0]) if snap["decided"][0] else 0
    shown = s >= world.s_int[j] - world.half_w[j] - TURN_REVEAL_M
    return float(intent) if intent != 0 and shown else 0.0


def camera_state(run: SceneRun, spec) -> dict[str, np.ndarray]:
    """Per kept row, what perfect perception could read from the frames at t - 1, t - 0.5, t.

    Only the state at and before t enters (the world's road ahead in arc length, which does not
    depend on the route choice at an intersection not yet visibly taken), never habits,
    controller states, timers or seeds. Unknown values are NaN (see CAMERA_COLUMNS).

    Parameters
    ----------
    run : a simulated scene.
    spec : the dataset spec (camera, image size, frame offsets).

    Returns
    -------
    dict of CAMERA_COLUMNS -> (rows,) float arrays.
    """
    from drivesim.render import brake_lights_on, frame_camera, light_in_view

    w = world_arrays(run.world)
    wd, r = run.world, run.rec
    out: dict[str, list[float]] = {c: [] for c in CAMERA_COLUMNS}
    zero = np.zeros(1, int)
    nan = float("nan")
    offsets = {"light_state": 0.0, "light_state_t-0.5": -0.5, "light_state_t-1.0": -1.0}
    for k, snap in zip(run.row_steps, run.snapshots, strict=True):
        s, j = snap["s"], int(snap["j"][0])

        def at(key, d, s=s):
            return float(route_at(w[key], zero, s + d)[0])

        # the turn arc is part of the road ahead only once the car visibly takes it
        committed = turn_committed(wd, snap) != 0
        for d in (10, 20, 40):
            arc = at("kappa", d) - at("kappa_road", d) if committed else 0.0
            out[f"curv_{d}"].append(at("kappa_road", d) + arc)
        for d in (0, 20, 40):
            out[f"grade_{d}"].append(at("grade", d))
        out["dz_20"].append(at("Z", 20) - at("Z", 0))
        out["dz_40"].append(at("Z", 40) - at("Z", 0))
        gap = float(snap["l_s"][0] - s[0] - CAR_LENGTH)
        lead = bool(snap["l_present"][0]) and snap["l_lane"][0] == snap["lane"][0] and 0 < gap < LEAD_VISIBLE_M
        out["lead_present"].append(float(lead))
        out["lead_gap"].append(gap if lead else nan)
        out["lead_closing_speed"].append(float(snap["v"][0] - snap["l_v"][0]) if lead else nan)
        out["lead_brake_lights"].append(float(brake_lights_on(snap["l_a"][0], snap["l_v"][0])) if lead else nan)
        for col, off in offsets.items():
            kk = k + int(round(off / DT))
            jj = int(np.searchsorted(wd.s_int + wd.half_w + 3.0, r["s"][kk]))  # next light not passed
            seen = nan
            if jj < wd.n_intersections and wd.has_light[jj]:
                pose = dict(X=r["X"][kk], Y=r["Y"][kk], psi=r["psi"][kk], s=r["s"][kk])
                cam = frame_camera(wd, w, pose, spec.camera, spec.image_width, spec.image_height)
                if light_in_view(wd, cam, jj):
                    seen = float(r["light"][kk][jj])
            out[col].append(seen)
        stop_d = float(wd.s_stop[j] - s[0])
        out["stop_line_dist"].append(stop_d if 0.0 < stop_d < STOP_LINE_VISIBLE_M else nan)
        int_d = float(wd.s_int[j] - s[0])
        out["intersection_dist"].append(int_d if -wd.half_w[j] < int_d < INTERSECTION_VISIBLE_M else nan)
        out["lane_index"].append(float(snap["lane"][0]))
        out["n_lanes"].append(float(wd.n_lanes))
        out["lane_offset"].append(float(snap["d_act"][0] - lane_offset(snap["lane"][0])))
        out["turn_committed"].append(turn_committed(wd, snap))
    return {k: np.asarray(v, float) for k, v in out.items()}


def hidden_state(run: SceneRun) -> dict[str, np.ndarray]:
    """Per kept row, the latent variables a camera sees and telemetry does not (plus habits)."""
    w = world_arrays(run.world)
    wd = run.world
    out: dict[str, list[float]] = {c: [] for c in HIDDEN_COLUMNS}
    zero = np.zeros(1, int)
    for snap in run.snapshots:
        s, j = snap["s"], int(snap["j"][0])
        decided = float(snap["decided"][0])

        def at(key, d, s=s):
            return float(route_at(w[key], zero, s + d)[0])

        for d in (10, 20, 40):
            # a turn arc is visible as such only once the turn is signalled
            arc = at("kappa", d) - at("kappa_road", d)
            out[f"curv_{d}"].append(at("kappa_road", d) + decided * arc)
        for d in (0, 20, 40):
            out[f"grade_{d}"].append(at("grade", d))
        out["dz_20"].append(at("Z", 20) - at("Z", 0))
        out["dz_40"].append(at("Z", 40) - at("Z", 0))
        gap = float(snap["l_s"][0] - s[0] - CAR_LENGTH)
        vis = bool(snap["l_present"][0]) and gap < 120
        out["lead_visible"].append(float(vis))
        out["lead_gap"].append(gap if vis else 150.0)
        out["lead_speed"].append(float(snap["l_v"][0]) if vis else -1.0)
        out["lead_braking"].append(float(vis and (snap["l_a"][0] < -0.4 or snap["l_v"][0] < 0.2)))
        stop_d = float(wd.s_stop[j] - s[0] - 3.7)
        lit = bool(wd.has_light[j]) and -0.5 < stop_d < 150
        out["light_state"].append(float(1 + snap["light"][0, j]) if lit else 0.0)
        out["stop_dist"].append(stop_d if lit else 200.0)
        out["int_dist"].append(float(min(wd.s_int[j] - s[0], 300.0)))
        out["turn_intent"].append(decided * float(snap["intent"][0]))
        out["lane"].append(float(snap["lane"][0]))
        out["n_lanes"].append(float(wd.n_lanes))
        out["lane_offset_err"].append(float(snap["d_act"][0] - lane_offset(snap["lane"][0])))
        moving = snap["lc_phase"][0] == 2
        out["lane_change_dir"].append(float(np.sign(snap["lc_to"][0] - snap["lc_from"][0])) if moving else 0.0)
        out["drive_v_des"].append(wd.habits.v_des)
        out["drive_aggressiveness"].append(wd.habits.aggressiveness)
    return {k: np.asarray(v, float) for k, v in out.items()}


__all__ = ["CAMERA_COLUMNS", "DT", "HIDDEN_COLUMNS", "MAX_INTERSECTIONS", "SceneJob", "SceneRun", "simulate_chunk"]
