"""Render a dash-camera frame: numpy only, through the dataset's pinhole camera.

Everything is drawn as world-space quads (road ribbons following the 3-D route, lane markings,
crossing roads, stop lines, cars as boxes, traffic lights), projected through K from the
camera 1.22 m above the road (pitched with the road), and rasterised as horizontal spans in
far-to-near order (painter's algorithm): vectorised, about a millisecond a frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivesim.road import DS, LANE_W, World, lane_offset, route_cut
from drivesim.vehicle import route_at

NEAR = 0.5
# look-ahead grid (m ahead of the car): fine near, coarse far
_AHEAD = np.concatenate([np.arange(0, 40, 1.0), np.arange(40, 90, 2.0), np.arange(90, 171, 5.0)])
LIGHT_RGB = {0: (60, 255, 120), 1: (255, 200, 40), 2: (255, 50, 40)}  # lit green/yellow/red
LIGHT_CLASS = {0: "green", 1: "yellow", 2: "red"}


@dataclass
class Camera:
    """Pinhole camera at a pose: world point -> pixel (u right, v down) and depth."""

    K: np.ndarray
    width: int
    height: int
    C: np.ndarray
    f: np.ndarray
    left: np.ndarray
    up: np.ndarray
    pitch: float

    @classmethod
    def at(cls, K, width, height, X, Y, Z, psi, pitch, mount_height):
        cp, sp, cy, sy = np.cos(pitch), np.sin(pitch), np.cos(psi), np.sin(psi)
        return cls(
            K=np.asarray(K, float), width=width, height=height,
            C=np.array([X, Y, Z + mount_height]), f=np.array([cp * cy, cp * sy, sp]),
            left=np.array([-sy, cy, 0.0]), up=np.array([-sp * cy, -sp * sy, cp]), pitch=pitch,
        )

    def project(self, P: np.ndarray):
        """(..., 3) world points -> u, v, depth arrays of shape (...)."""
        rel = P - self.C
        z = rel @ self.f
        zs = np.where(np.abs(z) < 1e-6, 1e-6, z)
        u = self.K[0, 2] - self.K[0, 0] * (rel @ self.left) / zs
        v = self.K[1, 2] - self.K[1, 1] * (rel @ self.up) / zs
        return u, v, z

    @property
    def horizon_row(self) -> float:
        return float(self.K[1, 2] + self.K[1, 1] * np.tan(self.pitch))


def rasterize(img: np.ndarray, quads: np.ndarray, colors: np.ndarray, bias: np.ndarray, cam: Camera) -> None:
    """Paint convex world quads (Q, 4, 3) onto img (H, W, 3), far to near, in place."""
    H, W = img.shape[:2]
    u, v, z = cam.project(quads)
    keep = (z > NEAR).all(1) & (v.max(1) >= 0) & (v.min(1) <= H) & (u.max(1) >= 0) & (u.min(1) <= W)
    u, v, z, colors, bias = u[keep], v[keep], z[keep], colors[keep], bias[keep]
    if not len(u):
        return
    depth = z.mean(1) + bias
    r0 = np.clip(np.ceil(v.min(1) - 0.5), 0, H).astype(np.int64)
    r1 = np.clip(np.floor(v.max(1) - 0.5), -1, H - 1).astype(np.int64)
    nr = np.maximum(r1 - r0 + 1, 0)
    qi = np.repeat(np.arange(len(u)), nr)
    row = r0[qi] + np.arange(qi.size) - np.repeat(np.cumsum(nr) - nr, nr)
    yc = (row + 0.5)[:, None]
    ua, va = u[qi], v[qi]
    ub, vb = np.roll(ua, -1, axis=1), np.roll(va, -1, axis=1)
    dv = vb - va
    t = (yc - va) / np.where(dv == 0, np.inf, dv)
    valid = (dv != 0) & (t >= 0) & (t <= 1)
    x = ua + t * (ub - ua)
    c0 = np.clip(np.ceil(np.where(valid, x, np.inf).min(1) - 0.5), 0, W).astype(np.int64)
    c1 = np.clip(np.floor(np.where(valid, x, -np.inf).max(1) - 0.5), -1, W - 1).astype(np.int64)
    nc = np.maximum(c1 - c0 + 1, 0)
    order = np.argsort(-depth[qi], kind="stable")  # far first: nearer spans overwrite
    nc_o = nc[order]
    si = np.repeat(order, nc_o)
    col = c0[si] + np.arange(si.size) - np.repeat(np.cumsum(nc_o) - nc_o, nc_o)
    flat = img.reshape(-1, 3)
    flat[row[si] * W + col] = colors[qi[si]]


class QuadList:
    """Collects quads with their colour and depth bias (negative: painted over equal depths)."""

    def __init__(self) -> None:
        self.quads: list[np.ndarray] = []
        self.colors: list[np.ndarray] = []
        self.bias: list[np.ndarray] = []

    def add(self, quads: np.ndarray, color, bias: float = 0.0) -> None:
        quads = np.asarray(quads, float).reshape(-1, 4, 3)
        self.quads.append(quads)
        self.colors.append(np.broadcast_to(np.asarray(color, float), (len(quads), 3)))
        self.bias.append(np.full(len(quads), bias))

    def draw(self, img: np.ndarray, cam: Camera) -> None:
        if self.quads:
            rasterize(img, np.concatenate(self.quads), np.concatenate(self.colors), np.concatenate(self.bias), cam)


def route_view(wa: dict, s: np.ndarray, cut: float, d: np.ndarray | float = 0.0):
    """World (X, Y, Z, heading) of arc lengths s, offset d, as the frames show them.

    Up to `cut` the route; beyond it the road straight through the next crossing (the road's
    own bends, no turn), so the frames never show a branch before the car visibly takes it.
    """
    s = np.asarray(s, float)
    zero = np.zeros(s.shape, int)
    near = np.minimum(s, cut)
    th = route_at(wa["theta"], zero, near)
    X, Y = route_at(wa["X"], zero, near), route_at(wa["Y"], zero, near)
    beyond = s > cut
    if beyond.any():
        c1 = np.array([cut])
        x0, y0, t0 = (float(route_at(wa[k], np.zeros(1, int), c1)[0]) for k in ("X", "Y", "theta"))
        grid = cut + np.arange(0.0, float(s.max()) - cut + 2 * DS, DS)
        k = route_at(wa["kappa_road"], np.zeros(grid.size, int), grid)
        th_g = t0 + np.concatenate([[0.0], np.cumsum(k[:-1] * DS)])
        mid = th_g + 0.5 * k * DS
        Xg = x0 + np.concatenate([[0.0], np.cumsum(np.cos(mid[:-1]) * DS)])
        Yg = y0 + np.concatenate([[0.0], np.cumsum(np.sin(mid[:-1]) * DS)])
        sb = s[beyond]
        X, Y, th = X.copy(), Y.copy(), th.copy()
        X[beyond], Y[beyond], th[beyond] = np.interp(sb, grid, Xg), np.interp(sb, grid, Yg), np.interp(sb, grid, th_g)
    Z = route_at(wa["Z"], zero, s)  # the grade profile does not depend on the route
    return X - np.sin(th) * d, Y + np.cos(th) * d, Z, th


class _Samples:
    """The road centreline at sample positions (as `route_view` shows it), looked up once per frame."""

    def __init__(self, wa: dict, s: np.ndarray, cut: float) -> None:
        self.X, self.Y, self.Z, th = route_view(wa, s, cut)
        self.nx, self.ny = -np.sin(th), np.cos(th)

    def ribbon(self, d_left: float, d_right: float, mask: np.ndarray | None = None, step: int = 1) -> np.ndarray:
        """Quads of a strip along the route between offsets d_right < d_left."""
        X, Y, Z, nx, ny = (a[::step] for a in (self.X, self.Y, self.Z, self.nx, self.ny))
        L = np.stack([X + nx * d_left, Y + ny * d_left, Z], 1)
        R = np.stack([X + nx * d_right, Y + ny * d_right, Z], 1)
        q = np.stack([L[:-1], R[:-1], R[1:], L[1:]], 1)
        return q if mask is None else q[mask[::step][:-1]]


def _markings_shown(world: World, s: np.ndarray, cut: float) -> np.ndarray:
    """Where lane markings run: the route's own up to `cut`, beyond it those of the road
    straight through (broken only across each crossing)."""
    mk = world.marking_ok[np.clip(s.astype(int), 0, world.marking_ok.size - 1)]
    n = world.n_intersections
    inside = ((s[:, None] >= world.s_stop[None, :n]) & (s[:, None] <= (world.s_int + world.half_w)[None, :n])).any(1)
    return np.where(s > cut, ~inside, mk)


def _box(centre, fwd, left, half_len, half_w, z0, z1) -> np.ndarray:
    """An upright rectangle (quad) at `centre` spanning `left` x [z0, z1] (fwd unused: flat)."""
    a = centre - left * half_w
    b = centre + left * half_w
    return np.array([[*a[:2], a[2] + z0], [*b[:2], b[2] + z0], [*b[:2], b[2] + z1], [*a[:2], a[2] + z1]])


def _car(q: QuadList, wa, s_rear: float, d: float, color, braking: bool, facing_away: bool, cut: float) -> None:
    """A car as a box: rear (or front) face, sides, roof; brake lights or headlights."""
    X, Y, Z, th = route_view(wa, np.array([s_rear, s_rear + 4.6]), cut, d)
    if not facing_away:
        X, Y, Z, th = X[::-1], Y[::-1], Z[::-1], th[::-1] + np.pi
    P = np.stack([X, Y, Z], 1)
    left = np.stack([-np.sin(th), np.cos(th), np.zeros(2)], 1)
    fwd = np.array([np.cos(th[0]), np.sin(th[0]), 0.0])
    hw, lo, hi = 0.9, 0.3, 1.45
    c = np.asarray(color, float)
    near, far = P[0], P[1]

    def side(sign):
        a, b = near + sign * hw * left[0], far + sign * hw * left[1]
        return [[*a[:2], a[2] + lo], [*b[:2], b[2] + lo], [*b[:2], b[2] + hi], [*a[:2], a[2] + hi]]

    q.add([side(1), side(-1)], c * 0.75, 0.0)
    roof = [[*(near + hw * left[0])[:2], near[2] + hi], [*(near - hw * left[0])[:2], near[2] + hi],
            [*(far - hw * left[1])[:2], far[2] + hi], [*(far + hw * left[1])[:2], far[2] + hi]]
    q.add([roof], np.minimum(c * 1.1 + 10, 255), 0.0)
    q.add(_box(near, fwd, left[0], 0, hw, lo, hi), c, -0.5)
    q.add(_box(near, fwd, left[0], 0, hw, 0.0, lo), (25, 25, 28), -0.5)
    q.add(_box(near - 0.02 * fwd, fwd, left[0], 0, hw * 0.85, 0.95, 1.38), c * 0.35 + 15, -0.6)
    # brake lights (bright when braking) seen from behind, headlights from the front
    lit = ((255, 40, 35) if braking else (120, 25, 25)) if facing_away else (235, 235, 200)
    for sign in (1, -1):
        lamp_c = near + sign * 0.7 * left[0] - 0.03 * fwd
        q.add(_box(lamp_c, fwd, left[0], 0, 0.16, 0.75, 0.93), lit, -0.7)


def _traffic_light(q: QuadList, centre, t_a, n_a, z, state: int):
    """A Japanese horizontal light over the ego lanes, facing the approach; returns its housing quad."""
    housing = np.array([centre - n_a * 0.7, centre + n_a * 0.7])
    quad = np.array([[*housing[0][:2], z], [*housing[1][:2], z], [*housing[1][:2], z + 0.45], [*housing[0][:2], z + 0.45]])
    q.add(quad, (35, 38, 40), -0.3)
    for k, off in ((0, 0.45), (1, 0.0), (2, -0.45)):  # green left, yellow middle, red right
        c = centre + n_a * off - 0.05 * t_a
        lamp = np.array([[*(c - n_a * 0.15)[:2], z + 0.08], [*(c + n_a * 0.15)[:2], z + 0.08],
                         [*(c + n_a * 0.15)[:2], z + 0.37], [*(c - n_a * 0.15)[:2], z + 0.37]])
        q.add(lamp, LIGHT_RGB[k] if state == k else (70, 72, 75), -0.4)
    return quad


def frame_camera(world: World, wa: dict, pose: dict, spec_camera, width: int, height: int) -> Camera:
    """The dash camera at a pose (``X, Y, psi, s``): on the road, pitched with the grade."""
    zero1 = np.zeros(1, int)
    s_ego = float(pose["s"])
    z_road = float(route_at(wa["Z"], zero1, np.array([s_ego]))[0])
    grade = float(route_at(wa["grade"], zero1, np.array([s_ego + 1.35]))[0])
    return Camera.at(spec_camera.K, width, height, pose["X"], pose["Y"], z_road, pose["psi"],
                     np.arctan(grade) + world.look.pitch_offset, spec_camera.height_m)


def crossing_frame(world: World, wa: dict, j: int, cut: float) -> tuple[np.ndarray, float]:
    """Centre (world point) and approach heading of crossing j as the frames show it: a crossing
    beyond the next one sits on the road straight through (`route_view`), not on the route."""
    if world.s_int[j] <= cut:
        return world.centre[j], float(world.approach[j])
    X, Y, Z, th = route_view(wa, np.array([world.s_int[j]]), cut)
    return np.array([X[0], Y[0], Z[0]]), float(th[0])


def light_centre(world: World, j: int, c: np.ndarray | None = None, th: float | None = None) -> np.ndarray:
    """World point at the foot of crossing j's light head (over the ego lanes, past the crossing),
    for the crossing's centre c and approach heading th (default: the world's)."""
    c = world.centre[j] if c is None else c
    th = world.approach[j] if th is None else th
    t_a, n_a = np.array([np.cos(th), np.sin(th), 0.0]), np.array([-np.sin(th), np.cos(th), 0.0])
    return c + t_a * (world.half_w[j] + 3.0) + n_a * (world.n_lanes * LANE_W / 2)


def light_in_view(world: World, cam: Camera, j: int) -> bool:
    """Whether intersection j's light head lies inside the frame (in front, within the image)."""
    c = light_centre(world, j)
    head = np.array([[c[0], c[1], world.centre[j][2] + 5.2]])
    u, v, z = cam.project(head)
    return bool(z[0] > 2.0 and 0 <= u[0] <= cam.width and 0 <= v[0] <= cam.height)


def brake_lights_on(l_a, l_v):
    """The lead's brake lights: lit while it brakes or stands."""
    return (np.asarray(l_a) < -0.4) | (np.asarray(l_v) < 0.2)


def render_frame(world: World, wa: dict, pose: dict, spec_camera, width: int, height: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
    """Render one frame and list its visible traffic lights.

    Parameters
    ----------
    world : the scene's world (geometry, look, cars).
    wa : the world in stacked one-row form (`scene.world_arrays`).
    pose : at the frame's step: ``X, Y, psi, s, t`` (time, s), ``lights`` (states per
        intersection), lead ``l_s, l_a, l_v, l_lane``, ``present``.
    spec_camera : the dataset's camera (K, height_m).
    rng : the scene's render generator (pixel noise).

    Returns
    -------
    (H, W, 3) uint8 image, and the lights as {"state", "bbox"} in pixels (before misses).
    """
    look = world.look
    s_ego = float(pose["s"])
    cam = frame_camera(world, wa, pose, spec_camera, width, height)
    img = np.empty((height, width, 3))
    # sky gradient above the horizon, flat ground below, skyline silhouettes in world azimuth
    vh = cam.horizon_row
    rows = np.arange(height)[:, None]
    frac = np.clip(rows / max(vh, 1.0), 0, 1)
    sky = look.sky_top * (1 - frac) + look.sky_horizon * frac
    img[:] = np.where((rows + 0.5 < vh)[..., None], sky[:, None, :], look.ground)
    cols = np.arange(width)
    az = pose["psi"] + np.arctan((spec_camera.K[0][2] - cols) / spec_camera.K[0][0])
    hgt = look.skyline[((az % (2 * np.pi)) / (2 * np.pi) * look.skyline.size).astype(int) % look.skyline.size]
    top = vh - spec_camera.K[1][1] * np.tan(hgt)
    sil = (rows + 0.5 >= top[None, :]) & (rows + 0.5 < vh)
    img[sil] = look.skyline_color

    s = np.floor(s_ego) + _AHEAD
    n_l, n_o = world.n_lanes, world.n_opp
    # terrain beside the road first, in its own pass: it lies under everything else
    ground = QuadList()
    cut = route_cut(world, s_ego)
    smp = _Samples(wa, s, cut)
    ground.add(smp.ribbon(60.0, -60.0, step=2), look.ground)
    ground.draw(img, cam)
    q = QuadList()
    road_l, road_r = n_l * LANE_W + 0.6, -n_o * LANE_W - 0.6
    q.add(smp.ribbon(road_l, road_r), look.road, 0.0)
    mk = _markings_shown(world, s, cut)
    dash = mk & ((s // 4) % 3 == 0)
    hw = 0.08
    q.add(smp.ribbon(hw, -hw, mk), look.centre_line, -0.2)
    for i in range(1, n_l):
        q.add(smp.ribbon(i * LANE_W + hw, i * LANE_W - hw, dash), look.marking, -0.2)
    for i in range(1, n_o):
        q.add(smp.ribbon(-i * LANE_W + hw, -i * LANE_W - hw, dash), look.marking, -0.2)
    q.add(smp.ribbon(n_l * LANE_W + hw, n_l * LANE_W - hw, mk), look.marking, -0.2)
    q.add(smp.ribbon(-n_o * LANE_W + hw, -n_o * LANE_W - hw, mk), look.marking, -0.2)

    lights = []
    for j in range(world.n_intersections):
        if not -15 < world.s_int[j] - s_ego < 170:
            continue
        c, th = crossing_frame(world, wa, j, cut)
        t_a, n_a = np.array([np.cos(th), np.sin(th), 0.0]), np.array([-np.sin(th), np.cos(th), 0.0])
        hwc = world.half_w[j] + 0.6
        seg = np.linspace(-70, 70, 15)
        a, b = seg[:-1], seg[1:]
        strip = np.stack([c + n_a * a[:, None] - t_a * hwc, c + n_a * a[:, None] + t_a * hwc,
                          c + n_a * b[:, None] + t_a * hwc, c + n_a * b[:, None] - t_a * hwc], 1)
        q.add(strip, look.road, 0.0)
        # the crossing road's centre line, on both branches alike
        for lo, hi in ((road_l, 70.0), (-70.0, road_r)):
            seg = np.linspace(lo, hi, 8)
            a, b = seg[:-1], seg[1:]
            line = np.stack([c + n_a * a[:, None] - t_a * hw, c + n_a * a[:, None] + t_a * hw,
                             c + n_a * b[:, None] + t_a * hw, c + n_a * b[:, None] - t_a * hw], 1)
            q.add(line, look.centre_line, -0.2)
        st = np.array([world.s_stop[j], world.s_stop[j] + 0.45])
        q.add(_Samples(wa, st, cut).ribbon(n_l * LANE_W, 0.0), look.marking, -0.3)
        if world.has_light[j]:
            centre = light_centre(world, j, c, th)
            housing = _traffic_light(q, centre, t_a, n_a, c[2] + 5.0, int(pose["lights"][j]))
            pole = c + t_a * (world.half_w[j] + 3.0) + n_a * (n_l * LANE_W + 1.2)
            q.add(_box(pole, t_a, n_a, 0, 0.12, 0.0, 5.45), (95, 95, 100), -0.2)
            arm = np.array([[*pole[:2], c[2] + 5.25], [*centre[:2], c[2] + 5.25], [*centre[:2], c[2] + 5.35], [*pole[:2], c[2] + 5.35]])
            q.add(arm, (95, 95, 100), -0.2)
            lights.append((housing, int(pose["lights"][j])))

    gap = pose["l_s"] - s_ego
    if pose["present"] and 3.0 < gap < 160:
        d = world.n_lanes * LANE_W + 1.0 if world.kind == "parked" else float(lane_offset(pose["l_lane"]))
        braking = bool(brake_lights_on(pose["l_a"], pose["l_v"]))
        _car(q, wa, pose["l_s"] - 1.0, d, world.lead_color, braking, facing_away=True, cut=cut)
    for s0, v_o, ci in world.oncoming:
        so = s0 - v_o * pose["t"]
        if 4.0 < so - s_ego < 150:
            _car(q, wa, so - 3.6, -lane_offset(0), world.car_colors[int(ci)], False, facing_away=False, cut=cut)
    q.draw(img, cam)

    boxes = []
    for housing, state in lights:
        u, v, z = cam.project(housing)
        if (z < 2.0).any():
            continue
        x1, x2, y1, y2 = u.min(), u.max(), v.min(), v.max()
        if x2 < 0 or y2 < 0 or x1 > width or y1 > height or x2 - x1 < 1.0:
            continue
        box = [float(np.clip(x1, 0, width)), float(np.clip(y1, 0, height)),
               float(np.clip(x2, 0, width)), float(np.clip(y2, 0, height))]
        boxes.append({"state": state, "bbox": [round(b, 1) for b in box], "depth": float(z.mean())})
    return _finish(img, look, rng), boxes


def _finish(img: np.ndarray, look, rng: np.random.Generator) -> np.ndarray:
    """The drive's exposure, blur and sensor noise."""
    img = img * (look.brightness * rng.uniform(0.95, 1.05))
    if look.blur > 0.05:
        p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="edge")
        box = (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] + p[1:-1, 1:-1]) / 5.0
        img = img * (1 - look.blur) + box * look.blur
    img = img + rng.normal(0.0, look.noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)
