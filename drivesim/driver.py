"""The driver and the traffic: one batched simulation step.

Every random event of a step (light changes, turn choices, lane changes, yellow-light choices,
reaction times, the slow wander of desired speed and lane position, the lead driver's wander)
is read from the noise arrays passed in, never drawn here. So the main run replays the noise
drawn for its scene, and an oracle rollout from a copied state gets fresh noise: that is the
driver randomness which makes part of the future unpredictable.

State and world are dicts of numpy arrays; state arrays have the batch's length B and carry
`sc`, the row of each batch member's scene in the world arrays.
"""

from __future__ import annotations

import numpy as np

from drivesim.road import LANE_W, MAX_INTERSECTIONS, T_YELLOW, lane_offset
from drivesim.vehicle import (
    CAR_LENGTH,
    FRONT_OVERHANG,
    GRAVITY,
    STEER_TAU,
    bicycle_step,
    project_to_route,
    pure_pursuit,
    route_at,
    route_point,
)

NI = MAX_INTERSECTIONS
# uniform noise columns (the first NI are spare: lights run on fixed cycles)
(U_TURN, U_TURN_DIR, U_LC, U_LC_DIR, U_LC_D1, U_LC_D2, U_YELLOW, U_REACT, U_L_YELLOW, U_L_REACT,
 U_LC_BLINK, U_TURN_BLINK) = range(NI, NI + 12)
N_UNIFORM = NI + 12
P_BLINK_LC, P_BLINK_TURN = 0.85, 0.92  # drivers signal most, not all, lane changes and turns
N_NORMAL = 4  # ego speed wander, ego lane wander, lead speed wander, ego pedal jitter
TAU_V, TAU_D, TAU_LEAD, TAU_A = 8.0, 2.5, 5.0, 1.5
LOOKAHEAD_D = np.arange(0.0, 64.0, 4.0)
LEAD = dict(a_max=1.5, b=2.0, headway=1.4, s0=2.0, a_lat=2.2, v_noise=0.12)


def idm_interaction(v, dv, gap, a_max, b, headway, s0):
    """IDM braking term for an obstacle `gap` metres ahead closing at `dv` (0 where gap is inf)."""
    s_star = s0 + np.maximum(0.0, v * headway + v * dv / (2.0 * np.sqrt(a_max * b)))
    return np.where(np.isfinite(gap), -a_max * (s_star / np.maximum(gap, 0.2)) ** 2, 0.0)


def free_accel(v, v_target, a_max, b):
    """IDM free-road term towards v_target, bounded below by a firm braking."""
    ratio = v / np.maximum(v_target, 0.1)
    return np.maximum(a_max * (1.0 - ratio**4), -1.5 * b)


def curve_speed(kappa_arr, sc, s, v_cap, a_lat, b):
    """Highest speed now that still allows the curves ahead at lateral acceleration a_lat."""
    ss = s[:, None] + LOOKAHEAD_D[None, :]
    k = np.abs(route_at(kappa_arr, sc[:, None], ss))
    v_allow = np.sqrt(a_lat[:, None] / np.maximum(k, 1e-3))
    lim = np.sqrt(v_allow**2 + 2.0 * 0.7 * b[:, None] * LOOKAHEAD_D[None, :]).min(axis=1)
    return np.minimum(v_cap, lim)


def light_logic(s, v, s_stop, has, ls, prev, choice, hold, u_dec, u_react, reaction, dt):
    """Stop-line obstacle for an agent approaching a light.

    Returns
    -------
    gap to the stop line where the agent means to stop (inf elsewhere), new choice, new hold.
    choice: -1 undecided, 0 stop, 1 go (taken once when the light turns yellow). hold: the
    reaction time left after a green light before pulling away.
    """
    g = s_stop - (s + FRONT_OVERHANG)
    before = has & (g > -0.5)
    b_req = v * v / (2.0 * np.maximum(g, 0.5))
    p_stop = 1.0 / (1.0 + np.exp(np.clip((b_req - 2.6) / 0.5, -50.0, 50.0)))
    choice = np.where(before & (ls == 1) & (choice < 0), np.where(u_dec < p_stop, 0, 1), choice)
    start = before & (ls == 0) & (prev == 2) & (v < 1.0)
    # reaction time: 0.3 s plus an exponential wait with the driver's mean
    hold = np.where(start, 0.3 - reaction * np.log1p(-0.999 * u_react), np.maximum(hold - dt, 0.0))
    choice = np.where(ls == 0, -1, choice)
    stop = before & (((ls == 2) & (choice != 1)) | ((ls == 1) & (choice == 0)) | (hold > 0))
    return np.where(stop, g, np.inf), choice, hold


def _ou(x, tau, sigma, n, dt):
    return x - x * dt / tau + sigma * np.sqrt(2.0 * dt / tau) * n


def _step_lights(st, w, dt):
    """Each light runs its own fixed cycle green -> yellow -> red (so a light's history tells
    how long it has left)."""
    L, Lt = st["light"], st["light_t"] + dt
    sc = st["sc"]
    dur = np.where(L == 0, w["green_s"][sc], np.where(L == 1, T_YELLOW, w["red_s"][sc]))
    change = Lt >= dur
    st["light"] = np.where(change, (L + 1) % 3, L)
    st["light_t"] = np.where(change, Lt - dur, Lt)


def _advance_intersection(w, sc, s, j):
    """Index of the next intersection not yet passed."""
    jc = np.minimum(j, NI - 1)
    end = np.maximum(w["s_arc1"][sc, jc], w["s_int"][sc, jc] + w["half_w"][sc, jc]) + 3.0
    return np.where((s > end) & (j < NI - 1), j + 1, j)


def _step_lead(st, w, hb, u, n, dt):
    sc, rows = st["sc"], np.arange(st["sc"].size)
    j_old = st["l_j"]
    j = _advance_intersection(w, sc, st["l_s"], j_old)
    moved = j != j_old
    st["l_j"] = j
    st["l_choice"] = np.where(moved, -1, st["l_choice"])
    ls = st["light"][rows, j]
    gap, st["l_choice"], st["l_hold"] = light_logic(
        st["l_s"], st["l_v"], w["s_stop"][sc, j], w["has_light"][sc, j], ls, st["l_prev"],
        st["l_choice"], st["l_hold"], u[:, U_L_YELLOW], u[:, U_L_REACT], 0.8, dt)
    st["l_prev"] = ls
    v = st["l_v"]
    vt = curve_speed(w["kappa_lead"], sc, st["l_s"], hb["lead_v_des"] * (1.0 + st["l_vn"]),
                     np.full(v.size, LEAD["a_lat"]), np.full(v.size, LEAD["b"]))
    a = free_accel(v, vt, LEAD["a_max"], LEAD["b"]) + idm_interaction(
        v, v, gap, LEAD["a_max"], LEAD["b"], LEAD["headway"], 1.0)
    a = np.clip(a, -7.0, LEAD["a_max"])
    a = np.where(hb["park"], 0.0, st["l_a"] + np.clip(a - st["l_a"], -10 * dt, 5 * dt))
    v_new = np.maximum(v + a * dt, 0.0)
    st["l_a"] = (v_new - v) / dt
    st["l_s"] = st["l_s"] + 0.5 * (v + v_new) * dt
    st["l_v"] = v_new
    st["l_vn"] = _ou(st["l_vn"], TAU_LEAD, LEAD["v_noise"], n[:, 2], dt)
    st["l_present"] = st["l_present"] & (st["l_s"] < hb["lead_exit_s"])  # turned off its own way


def _step_lane_change(st, w, hb, u, near_int, dt):
    ph, lane = st["lc_phase"], st["lane"]
    can = (hb["n_lanes"] >= 2) & (st["v"] > 6.0) & ~near_int & (ph == 0) & ~hb["park"]
    trig = can & (u[:, U_LC] < hb["lc_rate"] * dt)
    dirn = np.where(lane == 0, 1, np.where(lane == hb["n_lanes"] - 1, -1, np.where(u[:, U_LC_DIR] < 0.5, 1, -1)))
    st["lc_from"] = np.where(trig, lane, st["lc_from"])
    st["lc_to"] = np.where(trig, lane + dirn, st["lc_to"])
    st["lc_d1"] = np.where(trig, 1.0 + 2.0 * u[:, U_LC_D1], st["lc_d1"])
    st["lc_d2"] = np.where(trig, 3.0 + 2.0 * u[:, U_LC_D2], st["lc_d2"])
    st["lc_blink"] = np.where(trig, u[:, U_LC_BLINK] < P_BLINK_LC, st["lc_blink"])
    ph = np.where(trig, 1, ph)
    t = np.where(trig, 0.0, st["lc_t"] + dt)
    to_move = (ph == 1) & (t >= st["lc_d1"])
    ph = np.where(to_move, 2, ph)
    t = np.where(to_move, 0.0, t)
    st["lane"] = np.where(to_move, st["lc_to"], lane)
    done = (ph == 2) & (t >= st["lc_d2"])
    ph = np.where(done, 0, ph)
    st["lc_phase"], st["lc_t"] = ph, t
    frac = np.clip(t / st["lc_d2"], 0.0, 1.0)
    d_from, d_to = lane_offset(st["lc_from"]), lane_offset(st["lc_to"])
    moving = d_from + (d_to - d_from) * 0.5 * (1.0 - np.cos(np.pi * frac))
    d = np.where(ph == 2, moving, lane_offset(st["lane"]))
    st["d_cmd"] = np.where(hb["park"], hb["n_lanes"] * LANE_W + 1.0, d)


def step(st: dict, w: dict, hb: dict, u: np.ndarray, n: np.ndarray, dt: float, replay: bool) -> None:
    """Advance every batch member by dt, in place.

    Parameters
    ----------
    st : state arrays (B,) (lights (B, NI)); updated in place. After the call it also holds the
        step's controls: ``a`` (applied acceleration, slope included), ``a_drv`` (the pedals'
        share), ``a_cmd``, ``delta``, ``torque``, ``blink_l``, ``blink_r``; the pose is the one *before* the step in
        ``X0, Y0, psi0, v0`` (what telemetry at this step reports).
    w : world arrays of the chunk (see `scene.stack_worlds`).
    hb : per-member habit arrays (gathered once with `scene.gather_habits`).
    u, n : (B, N_UNIFORM) uniforms and (B, N_NORMAL) standard normals for this step.
    replay : True in the main run: turn choices follow the route's geometry (the world's
        realised choice); False in rollouts: undecided turns are drawn afresh.
    """
    sc, rows = st["sc"], np.arange(st["sc"].size)
    s, v = st["s"], st["v"]
    _step_lights(st, w, dt)

    # intersections: bookkeeping, turn decision seconds before the intersection
    j_old = st["j"]
    j = _advance_intersection(w, sc, s, j_old)
    moved = j != j_old
    st["j"] = j
    for key, val in (("decided", 0), ("intent", 0), ("choice", -1)):
        st[key] = np.where(moved, val, st[key])
    s_int = w["s_int"][sc, j]
    decide = (st["decided"] == 0) & (s_int - s < 3.5 * v + 25.0) & (s_int < 1e8) & ~hb["park"]
    fresh = np.where(u[:, U_TURN] < hb["p_turn"], np.where(u[:, U_TURN_DIR] < 0.5, 1, -1), 0)
    chosen = w["turn_geom"][sc, j] if replay else fresh
    st["intent"] = np.where(decide, chosen, st["intent"])
    st["turn_blink"] = np.where(decide, u[:, U_TURN_BLINK] < P_BLINK_TURN, st["turn_blink"])
    st["decided"] = np.where(decide, 1, st["decided"])

    # lane keeping and lane changes (not near intersections, not while turning)
    near_int = (s_int - s < 80.0) | (st["intent"] != 0)
    _step_lane_change(st, w, hb, u, near_int, dt)

    # longitudinal: curves ahead, the turn if intended, the lead car, the light
    ls = st["light"][rows, j]
    stop_gap, st["choice"], st["hold"] = light_logic(
        s, v, w["s_stop"][sc, j], w["has_light"][sc, j], ls, st["prev_ls"], st["choice"],
        st["hold"], u[:, U_YELLOW], u[:, U_REACT], hb["reaction"], dt)
    st["prev_ls"] = ls
    v_target = curve_speed(w["kappa_road"], sc, s, hb["v_des"] * (1.0 + st["vn"]), hb["a_lat"], hb["b_comf"])
    turning = (st["intent"] != 0) & (s < w["s_arc1"][sc, j])
    r_ego = np.maximum(w["radius"][sc, j] - st["intent"] * st["d_cmd"], 3.0)
    v_turn = np.sqrt(hb["a_lat"] * r_ego)
    d_turn = np.maximum(w["s_arc0"][sc, j] - s, 0.0)
    v_target = np.where(turning, np.minimum(v_target, np.sqrt(v_turn**2 + 1.4 * hb["b_comf"] * d_turn)), v_target)
    same_lane = st["l_present"] & (st["l_lane"] == st["lane"])
    lead_gap = np.where(same_lane, st["l_s"] - s - CAR_LENGTH, np.inf)
    a_cmd = free_accel(v, v_target, hb["a_max"], hb["b_comf"]) + np.minimum(
        idm_interaction(v, v - st["l_v"], lead_gap, hb["a_max"], hb["b_comf"], hb["headway"], hb["s0"]),
        idm_interaction(v, v, stop_gap, hb["a_max"], hb["b_comf"], 0.5, 0.8))
    a_cmd = np.clip(a_cmd + st["an"], -7.0, hb["a_max"] + 0.5)
    # the slope pulls along the road; the driver's pedal compensates part of it at once, the
    # rest shows as a speed error that the controller above corrects later
    g_along = -GRAVITY * route_at(w["grade"], sc, s)
    a_drv = st["a_drv"] + np.clip(a_cmd - hb["grade_comp"] * g_along - st["a_drv"], -10.0 * dt, 5.0 * dt)
    a_drv = np.where(hb["park"], 0.0, a_drv)  # pedal (engine/brake) acceleration, jerk-limited
    a = np.where(hb["park"], 0.0, a_drv + g_along)

    # lateral: pure pursuit on the lane centre (plus the driver's wander)
    look = np.clip(0.8 * v + 4.0, 5.0, 25.0)
    tx, ty, _, _ = route_point(w, sc, s + look, st["d_cmd"] + st["dn"])
    delta_cmd = pure_pursuit(st["X"], st["Y"], st["psi"], tx, ty, look, hb["wheelbase"])
    delta = st["delta"] + (delta_cmd - st["delta"]) * min(dt / STEER_TAU, 1.0)
    delta = np.where(hb["park"], 0.0, delta)

    # controls as telemetry reports them
    st["X0"], st["Y0"], st["psi0"], st["v0"] = st["X"], st["Y"], st["psi"], v
    steer_rate = (delta - st["delta"]) / dt * hb["steer_ratio"] * 180.0 / np.pi
    lat_acc = v * v * np.tan(delta) / hb["wheelbase"]
    st["torque"] = np.clip(hb["torque_gain"] * lat_acc + 0.6 * steer_rate, -700.0, 700.0)
    st["delta"], st["a_cmd"], st["a_drv"] = delta, a_cmd, a_drv
    lc_left = (st["lc_phase"] > 0) & (st["lc_to"] > st["lc_from"]) & st["lc_blink"]
    lc_right = (st["lc_phase"] > 0) & (st["lc_to"] < st["lc_from"]) & st["lc_blink"]
    signalling = (st["intent"] != 0) & (s < w["s_arc1"][sc, j] - 2.0) & st["turn_blink"]
    st["blink_l"] = lc_left | (signalling & (st["intent"] > 0))
    st["blink_r"] = lc_right | (signalling & (st["intent"] < 0))

    # integrate the ego, then the lead, then the slow random processes
    X, Y, psi, v_new, a_app = bicycle_step(st["X"], st["Y"], st["psi"], v, a, delta, dt, hb["wheelbase"])
    st["a"] = a_app
    st["a_drv"] = np.where(v_new <= 0.0, -g_along, a_drv)  # at rest the brake just holds the car
    st["X"], st["Y"], st["psi"], st["v"] = X, Y, psi, v_new
    st["s"], st["d_act"] = project_to_route(w, sc, s + 0.5 * (v + v_new) * dt, X, Y)
    _step_lead(st, w, hb, u, n, dt)
    st["vn"] = _ou(st["vn"], TAU_V, hb["v_noise"], n[:, 0], dt)
    st["dn"] = _ou(st["dn"], TAU_D, hb["d_noise"], n[:, 1], dt)
    st["an"] = _ou(st["an"], TAU_A, hb["a_noise"], n[:, 3], dt)
