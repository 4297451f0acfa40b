"""The world of one drive: a 3-D road (route), its intersections and lights, other cars, habits.

Everything here is drawn once per scene from the scene's world RNG, before any driving. The
route is the centreline the ego will follow, sampled every `DS` metres: turns at intersections
where the ego turns are part of it (as 90-degree arcs), so the route's shape beyond an
undecided intersection is not known to the driver, only to the world (see `driver.py`).

Japan keeps left: the ego's lanes lie left of the centreline (offset d > 0, left positive),
lane i centred at d = (i + 0.5) * LANE_W; oncoming lanes lie at d < 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

DS = 1.0  # route sampling step (m)
ROUTE_LEN = 2300  # samples: 27.5 m/s x 73 s (warm-up included) plus the rendering look-ahead
LANE_W = 3.5
MAX_INTERSECTIONS = 24
EGO_START_S = 15.0
TURN_REVEAL_M = 10.0  # a turn shows in the frames once the car is this close to the crossing's near side
KINDS = ("urban", "suburban", "highway", "parked")
KIND_P = (0.63, 0.277, 0.09, 0.003)  # parked: gear "park" in 0.3% of rows, as in the real data
# joint draw of the habits (standard-normal scores): faster drivers keep shorter headways,
# brake and corner harder, accelerate harder; correlated, not one knob
HABIT_CORR = np.array([
    # v_des headway b_comf a_lat a_max
    [1.0, -0.4, 0.3, 0.4, 0.3],
    [-0.4, 1.0, -0.3, -0.3, -0.3],
    [0.3, -0.3, 1.0, 0.4, 0.4],
    [0.4, -0.3, 0.4, 1.0, 0.4],
    [0.3, -0.3, 0.4, 0.4, 1.0],
])
T_YELLOW = 3.0  # s; green and red phases are drawn per light (a fixed cycle, not memoryless)


@dataclass
class Habits:
    """A drive's habits: the scene context shared by all its rows."""

    aggressiveness: float
    v_des: float  # desired speed (m/s)
    a_max: float  # comfortable acceleration
    b_comf: float  # comfortable deceleration
    headway: float  # time gap to a lead (s)
    s0: float  # standstill gap (m)
    a_lat: float  # accepted lateral acceleration in curves
    v_noise: float  # std of the slow desired-speed wander (fraction)
    d_noise: float  # std of the lateral wander in the lane (m)
    a_noise: float  # std of the pedal jitter (m/s2)
    lc_rate: float  # lane changes per second where allowed
    reaction: float  # mean extra reaction time at a green light (s)
    p_turn: float  # chance of turning at an intersection
    torque_gain: float  # steeringTorque per m/s2 of lateral acceleration
    grade_comp: float  # share of the slope's pull the driver's pedal compensates at once


@dataclass
class Look:
    """Per-drive appearance, so a network has to generalise instead of memorising colours."""

    sky_top: np.ndarray
    sky_horizon: np.ndarray
    ground: np.ndarray
    road: np.ndarray
    marking: np.ndarray
    centre_line: np.ndarray
    skyline: np.ndarray  # building/tree silhouette height (rad) per azimuth bin
    skyline_color: np.ndarray
    brightness: float
    noise: float
    blur: float
    pitch_offset: float  # camera mount pitch (rad)


@dataclass
class World:
    """One scene's world. Route arrays have length `ROUTE_LEN`; intersection arrays `MAX_INTERSECTIONS`."""

    kind: str
    X: np.ndarray
    Y: np.ndarray
    Z: np.ndarray
    theta: np.ndarray
    grade: np.ndarray
    kappa: np.ndarray  # curvature of the route (turn arcs included)
    kappa_road: np.ndarray  # curvature without the turn arcs (what a driver plans on)
    marking_ok: np.ndarray  # False inside intersections (no lane markings there)
    n_lanes: int
    n_opp: int
    lane0: int
    # intersections, padded with s = 1e9
    s_int: np.ndarray  # crossing centreline position along the approach
    s_stop: np.ndarray  # stop line
    s_arc0: np.ndarray  # start of the turn arc (== s_int - R for a turn)
    s_arc1: np.ndarray  # end of the turn arc
    turn_geom: np.ndarray  # +1 left, -1 right, 0 straight: what the route does
    radius: np.ndarray  # centreline radius of the turn (for either direction)
    half_w: np.ndarray  # half width of the crossing road
    has_light: np.ndarray
    light0: np.ndarray  # initial light state 0 green 1 yellow 2 red
    light_t0: np.ndarray  # initial time spent in that state
    green_s: np.ndarray  # each light's green phase (s)
    red_s: np.ndarray  # each light's red phase (s)
    centre: np.ndarray  # (MAX_INTERSECTIONS, 3) world point of the crossing centre
    approach: np.ndarray  # (MAX_INTERSECTIONS,) approach heading
    # other cars
    lead_present: bool
    lead_gap: float
    lead_v_des: float
    kappa_lead: np.ndarray  # the lead's own path curvature: the road plus its own turns
    lead_exit_s: float  # where the lead turns off (its own choice, independent of the route)
    lead_color: np.ndarray
    oncoming: np.ndarray  # (n, 3): s at t=0, speed, colour index
    car_colors: np.ndarray
    v0: float
    habits: Habits
    wheelbase: float  # this car's (m)
    steer_ratio: float  # steering-wheel angle per road-wheel angle
    look: Look
    n_intersections: int = field(default=0)


def _integrate(kappa: np.ndarray, grade: np.ndarray) -> tuple[np.ndarray, ...]:
    """Centreline from curvature and grade profiles (midpoint rule, so turns close properly)."""
    theta = np.concatenate([[0.0], np.cumsum(kappa[:-1] * DS)])
    mid = theta + 0.5 * kappa * DS
    X = np.concatenate([[0.0], np.cumsum(np.cos(mid[:-1]) * DS)])
    Y = np.concatenate([[0.0], np.cumsum(np.sin(mid[:-1]) * DS)])
    Z = np.concatenate([[0.0], np.cumsum(grade[:-1] * DS)])
    return X, Y, Z, theta


def _grade_profile(rng: np.random.Generator, kind: str) -> np.ndarray:
    """Piecewise-constant grade joined by linear ramps (parabolic vertical curves)."""
    sigma = {"urban": 0.015, "suburban": 0.025, "highway": 0.015, "parked": 0.015}[kind]
    if rng.random() < 0.3:
        sigma *= 0.2  # a flat town
    grade = np.empty(ROUTE_LEN)
    i, g = 0, float(np.clip(rng.normal(0, sigma), -0.08, 0.08))
    while i < ROUTE_LEN:
        hold = int(rng.uniform(60, 300) / DS)
        grade[i : i + hold] = g
        i += hold
        g_new = float(np.clip(rng.normal(0, sigma), -0.08, 0.08))
        ramp = int(rng.uniform(40, 120) / DS)
        grade[i : i + ramp] = np.linspace(g, g_new, ramp)[: max(0, min(ramp, ROUTE_LEN - i))]
        i += ramp
        g = g_new
    return grade


def _habits(rng: np.random.Generator, kind: str) -> Habits:
    z = np.linalg.cholesky(HABIT_CORR) @ rng.standard_normal(5)
    base = {"urban": 10.5, "suburban": 14.5, "highway": 22.5, "parked": 11.5}[kind]
    return Habits(
        aggressiveness=float(np.mean(z * np.array([1, -1, 1, 1, 1]))),
        v_des=float(np.clip(base + 2.2 * z[0], 6.0, 27.5)),
        headway=float(np.clip(1.45 * np.exp(0.22 * z[1]), 0.8, 2.6)),
        b_comf=float(np.clip(2.1 * np.exp(0.22 * z[2]), 1.2, 3.5)),
        a_lat=float(np.clip(2.2 * np.exp(0.22 * z[3]), 1.2, 3.6)),
        a_max=float(np.clip(1.6 * np.exp(0.25 * z[4]), 0.8, 2.8)),
        s0=float(rng.uniform(1.8, 2.8)),
        v_noise=float(rng.uniform(0.05, 0.10)),
        d_noise=float(rng.uniform(0.08, 0.22)),
        a_noise=float(rng.uniform(0.1, 0.3)),
        lc_rate={"urban": 1 / 50, "suburban": 1 / 40, "highway": 1 / 25, "parked": 0.0}[kind],
        reaction=float(rng.uniform(0.4, 1.4)),
        p_turn={"urban": 0.25, "suburban": 0.2, "highway": 0.0, "parked": 0.0}[kind],
        torque_gain=float(rng.uniform(35, 60)),
        grade_comp=float(rng.uniform(0.5, 0.9)),
    )


def _look(rng: np.random.Generator, kind: str) -> Look:
    tint = rng.uniform(-12, 12, 3)
    green = rng.random() < (0.2 if kind == "urban" else 0.6)
    ground = np.array([95, 115, 70] if green else [120, 115, 105], float) + rng.uniform(-20, 20, 3)
    road_grey = rng.uniform(70, 120)
    skyline = np.zeros(720)
    if kind != "highway" or rng.random() < 0.5:
        # blocks of buildings / trees, in world azimuth so they rotate with the car
        edges = np.sort(rng.integers(0, 720, size=int(rng.integers(20, 80))))
        heights = rng.uniform(0.0, 0.09 if kind == "urban" else 0.04, size=edges.size)
        for j, e in enumerate(edges):
            skyline[e:] = heights[j]
    return Look(
        sky_top=np.array([90, 140, 210], float) + tint + rng.uniform(-30, 30),
        sky_horizon=np.array([190, 205, 220], float) + tint,
        ground=ground,
        road=np.full(3, road_grey) + rng.uniform(-6, 6, 3),
        marking=np.full(3, rng.uniform(190, 245)),
        centre_line=np.array([230, 190, 60], float) if rng.random() < 0.5 else np.full(3, 225.0),
        skyline=skyline,
        skyline_color=np.array([90, 90, 95], float) + rng.uniform(-30, 30, 3),
        brightness=float(rng.uniform(0.65, 1.25)),
        noise=float(rng.uniform(1.0, 7.0)),
        blur=float(rng.uniform(0.0, 0.8)),
        pitch_offset=float(rng.normal(0, 0.005)),
    )


def make_world(rng: np.random.Generator) -> World:
    """Draw one scene's world.

    Parameters
    ----------
    rng : the scene's world generator (nothing else draws from it).

    Returns
    -------
    World with its route, intersections, other cars, habits and look.
    """
    kind = str(rng.choice(KINDS, p=KIND_P))
    habits = _habits(rng, kind)
    n_lanes = int(rng.choice([1, 2, 3], p=[0.1, 0.3, 0.6] if kind == "highway" else [0.55, 0.4, 0.05]))
    n_opp = int(rng.choice([1, 2])) if kind != "highway" else n_lanes
    kappa_road = np.zeros(ROUTE_LEN)
    kappa = np.zeros(ROUTE_LEN)
    marking_ok = np.ones(ROUTE_LEN, bool)
    ints: list[dict] = []
    p_int = {"urban": 0.55, "suburban": 0.3, "highway": 0.0, "parked": 0.3}[kind]
    r_range = {"urban": (50, 1000), "suburban": (60, 1000), "highway": (400, 2000), "parked": (60, 1000)}[kind]
    i = int(rng.uniform(0, 60) / DS)  # no special lead-in: the first row is like any other
    while i < ROUTE_LEN:
        r = rng.random()
        if r < p_int and len(ints) < MAX_INTERSECTIONS:
            half_w = float(rng.choice([3.5, 5.25, 7.0]))
            geom = 0
            if rng.random() < habits.p_turn:
                geom = 1 if rng.random() < 0.5 else -1
            # left turns hug the kerb, right turns cross the oncoming lanes on a wider arc
            radius = float(max(7.0, half_w + 2.0 + rng.uniform(0, 1.5)) if geom >= 0 else half_w + 2.5 + rng.uniform(0, 2.5))
            s_int = i * DS + rng.uniform(25, 60)
            s_stop = s_int - max(half_w + 2.0, 5.0)
            if geom != 0:
                a0 = int(round((s_int - radius) / DS))
                a1 = a0 + int(round(np.pi / 2 * radius / DS))
                kappa[a0:a1] = geom / radius
                s_arc0, s_arc1 = a0 * DS, a1 * DS
                end = a1 + int(rng.uniform(30, 60) / DS)
            else:
                s_arc0, s_arc1 = s_int, s_int
                end = int((s_int + half_w + rng.uniform(20, 60)) / DS)
            marking_ok[int(s_stop / DS) : int(max(s_arc1, s_int + half_w) / DS) + 1] = False
            ints.append(
                dict(s_int=s_int, s_stop=s_stop, s_arc0=s_arc0, s_arc1=s_arc1, geom=geom,
                     radius=radius, half_w=half_w,
                     has_light=rng.random() < (0.7 if kind == "urban" else 0.45))
            )
            i = end
        elif r < p_int + 0.45:
            # a curve (sometimes an S-bend), with clothoid-like linear ramps
            n_bends = 2 if rng.random() < 0.3 else 1
            sign = 1.0 if rng.random() < 0.5 else -1.0
            for _ in range(n_bends):
                radius = float(np.exp(rng.uniform(np.log(r_range[0]), np.log(r_range[1]))))
                angle = rng.uniform(0.2, 1.4 if radius < 200 else 0.6)
                length = max(int(angle * radius / DS), 4)
                ramp = max(int(min(0.4 * length, 40 / DS)), 2)
                k = sign / radius
                prof = np.concatenate([np.linspace(0, k, ramp), np.full(length, k), np.linspace(k, 0, ramp)])
                kappa_road[i : i + prof.size] = prof[: max(0, ROUTE_LEN - i)]
                i += prof.size
                sign = -sign
            i += int(rng.uniform(10, 80) / DS)
        else:
            i += int(rng.uniform(40, 250) / DS)
    kappa += kappa_road
    grade = _grade_profile(rng, kind)
    X, Y, Z, theta = _integrate(kappa, grade)

    nI = MAX_INTERSECTIONS
    pad = lambda v: np.full(nI, v, float)  # noqa: E731
    s_int, s_stop, s_arc0, s_arc1 = pad(1e9), pad(1e9), pad(1e9), pad(1e9)
    turn_geom, radius, half_w = np.zeros(nI, int), pad(8.0), pad(3.5)
    has_light = np.zeros(nI, bool)
    for j, it in enumerate(ints):
        s_int[j], s_stop[j], s_arc0[j], s_arc1[j] = it["s_int"], it["s_stop"], it["s_arc0"], it["s_arc1"]
        turn_geom[j], radius[j], half_w[j], has_light[j] = it["geom"], it["radius"], it["half_w"], it["has_light"]
    centre, approach = _intersection_frames(X, Y, Z, theta, s_int, s_arc0, len(ints))
    green_s, red_s = rng.uniform(18, 40, nI), rng.uniform(15, 35, nI)
    phase = rng.random(nI) * (green_s + T_YELLOW + red_s)  # where in its cycle each light starts
    light0 = np.where(phase < green_s, 0, np.where(phase < green_s + T_YELLOW, 1, 2))
    light_t0 = np.where(light0 == 0, phase, np.where(light0 == 1, phase - green_s, phase - green_s - T_YELLOW))

    # the lead turns at intersections by its own choice (never by the ego's route), and leaves
    kappa_lead = kappa_road.copy()
    lead_exit_s = 1e9
    for j, it in enumerate(ints):
        if rng.random() < 0.25:
            a0 = int(round((it["s_int"] - radius[j]) / DS))
            kappa_lead[a0 : a0 + int(round(np.pi / 2 * radius[j] / DS))] += (1 if rng.random() < 0.5 else -1) / radius[j]
            lead_exit_s = it["s_int"] + it["half_w"]
            break
    v0 = 0.0 if kind == "parked" else habits.v_des * rng.uniform(0.8, 1.05)
    car_colors = np.array([[200, 200, 205], [30, 30, 35], [160, 20, 25], [40, 60, 140], [210, 210, 200], [120, 120, 125], [60, 90, 60]], float)
    lead_present = kind == "parked" or rng.random() < {"urban": 0.6, "suburban": 0.45, "highway": 0.55}[kind]
    lead_gap = rng.uniform(6, 12) if kind == "parked" else (rng.uniform(6, 50) if v0 < 1 else rng.uniform(8, 18) + v0 * rng.uniform(0.8, 2.5))
    n_on = int(rng.integers(0, 4)) if kind != "highway" else int(rng.integers(0, 6))
    oncoming = np.stack([rng.uniform(50, ROUTE_LEN * DS, n_on), rng.uniform(6, 18, n_on),
                         rng.integers(0, len(car_colors), n_on).astype(float)], axis=1)
    return World(
        kind=kind, X=X, Y=Y, Z=Z, theta=theta, grade=grade, kappa=kappa, kappa_road=kappa_road,
        marking_ok=marking_ok, n_lanes=n_lanes, n_opp=n_opp,
        lane0=int(rng.integers(0, n_lanes)), s_int=s_int, s_stop=s_stop, s_arc0=s_arc0,
        s_arc1=s_arc1, turn_geom=turn_geom, radius=radius, half_w=half_w, has_light=has_light,
        light0=light0, light_t0=light_t0, centre=centre, approach=approach,
        lead_present=bool(lead_present), lead_gap=float(lead_gap),
        lead_v_des=float(np.clip(habits.v_des * rng.uniform(0.8, 1.15), 5, 27.5)),
        kappa_lead=kappa_lead, lead_exit_s=float(lead_exit_s),
        lead_color=car_colors[int(rng.integers(0, len(car_colors)))],
        oncoming=oncoming, car_colors=car_colors, v0=float(v0), habits=habits,
        wheelbase=float(rng.uniform(2.5, 3.1)), steer_ratio=float(rng.uniform(12.0, 18.0)),
        green_s=green_s, red_s=red_s,
        look=_look(rng, kind), n_intersections=len(ints),
    )


def lane_offset(lane: np.ndarray | int) -> np.ndarray:
    """Lateral offset (m, left positive) of the centre of the ego-direction lane `lane`."""
    return (np.asarray(lane) + 0.5) * LANE_W


def reroute(world: World, j: int, geom: int) -> World:
    """The same world with another route choice at intersection j (+1 left, -1 right, 0 straight).

    The road before the turn arc, the grade profile and every other intersection's position in
    arc length stay; the route's plan view beyond intersection j follows the new choice.
    """
    old = int(world.turn_geom[j])
    kappa = world.kappa.copy()
    marking_ok = world.marking_ok.copy()
    s_int, R = float(world.s_int[j]), float(world.radius[j])
    if old != 0:
        kappa[int(round(world.s_arc0[j] / DS)) : int(round(world.s_arc1[j] / DS))] -= old / R
    if geom != 0:
        a0 = int(round((s_int - R) / DS))
        a1 = a0 + int(round(np.pi / 2 * R / DS))
        kappa[a0:a1] += geom / R
        s_arc0, s_arc1 = a0 * DS, a1 * DS
    else:
        s_arc0 = s_arc1 = s_int
    marking_ok[int(world.s_stop[j] / DS) : int(max(s_arc1, s_int + world.half_w[j]) / DS) + 1] = False
    X, Y, Z, theta = _integrate(kappa, world.grade)
    turn_geom, arc0, arc1 = world.turn_geom.copy(), world.s_arc0.copy(), world.s_arc1.copy()
    turn_geom[j], arc0[j], arc1[j] = geom, s_arc0, s_arc1
    centre, approach = _intersection_frames(X, Y, Z, theta, world.s_int, arc0, world.n_intersections)
    return replace(world, X=X, Y=Y, Z=Z, theta=theta, kappa=kappa, marking_ok=marking_ok,
                   turn_geom=turn_geom, s_arc0=arc0, s_arc1=arc1, centre=centre, approach=approach)


def _intersection_frames(X, Y, Z, theta, s_int, s_arc0, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Crossing centre (world point, height of the road at the crossing) and approach heading."""
    centre, approach = np.zeros((MAX_INTERSECTIONS, 3)), np.zeros(MAX_INTERSECTIONS)
    for j in range(n):
        k0 = min(int(s_arc0[j] / DS), ROUTE_LEN - 1)
        approach[j] = theta[k0]
        along = s_int[j] - k0 * DS
        ki = min(int(round(s_int[j] / DS)), ROUTE_LEN - 1)
        centre[j] = [X[k0] + along * np.cos(theta[k0]), Y[k0] + along * np.sin(theta[k0]), Z[ki]]
    return centre, approach


def route_cut(world: World, s_ego: float) -> float:
    """Arc length beyond which a camera at s_ego cannot yet tell the route from the road ahead.

    Until the car is within TURN_REVEAL_M of the next crossing, the frames show the road going
    straight through it (`render.route_view`) whichever way the route goes; np.inf when no
    crossing lies ahead.
    """
    n = world.n_intersections
    near_side = world.s_int[:n] - world.half_w[:n]
    jj = int(np.searchsorted(near_side - TURN_REVEAL_M, s_ego, side="right"))
    return float(near_side[jj] - 5.0) if jj < n else float("inf")
