"""Kinematic bicycle model, route look-ups and the ego-frame transform (all batched numpy).

Positions refer to the rear axle, which is also where the camera and the targets sit. Angles
are counter-clockwise (left) positive; the steering wheel angle is WHEEL_RATIO x wheel angle.
"""

from __future__ import annotations

import numpy as np

from drivesim.road import DS

WHEELBASE = 2.7  # a typical car; each simulated car draws its own (road.World.wheelbase)
STEER_RATIO = 15.0
GRAVITY = 9.81
MAX_WHEEL = 0.6  # rad, about 34 degrees at the road wheel
STEER_TAU = 0.2  # steering actuator lag (s)
FRONT_OVERHANG = 3.7  # rear axle to front bumper (m)
CAR_LENGTH = 4.6


def route_at(arr: np.ndarray, sc: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Linear interpolation of per-scene route arrays.

    Parameters
    ----------
    arr : (n_scenes, n_samples) values sampled every DS metres.
    sc : (...) scene index of each query.
    s : (...) arc-length positions (m); clipped to the route.

    Returns
    -------
    (...) interpolated values.
    """
    n = arr.shape[1]
    x = np.clip(s / DS, 0.0, n - 1.001)
    i = x.astype(np.int64)
    f = x - i
    return arr[sc, i] * (1.0 - f) + arr[sc, i + 1] * f


def route_point(route: dict, sc: np.ndarray, s: np.ndarray, d: np.ndarray | float = 0.0):
    """World (X, Y, Z, heading) of the point at arc length s, offset d to the left."""
    th = route_at(route["theta"], sc, s)
    X = route_at(route["X"], sc, s) - np.sin(th) * d
    Y = route_at(route["Y"], sc, s) + np.cos(th) * d
    return X, Y, route_at(route["Z"], sc, s), th


def bicycle_step(X, Y, psi, v, a, delta, dt, wheelbase=WHEELBASE):
    """Advance the kinematic bicycle one step with constant acceleration and steering.

    Returns
    -------
    X, Y, psi, v_new, a_applied (a, except where the car came to rest within the step).
    """
    v_new = np.maximum(v + a * dt, 0.0)
    a_applied = (v_new - v) / dt
    dist = 0.5 * (v + v_new) * dt
    dpsi = dist * np.tan(delta) / wheelbase
    mid = psi + 0.5 * dpsi
    return X + dist * np.cos(mid), Y + dist * np.sin(mid), psi + dpsi, v_new, a_applied


def pure_pursuit(X, Y, psi, tx, ty, lookahead, wheelbase=WHEELBASE):
    """Road-wheel angle that steers the rear axle onto the target point (tx, ty)."""
    dx, dy = tx - X, ty - Y
    ly = -np.sin(psi) * dx + np.cos(psi) * dy
    lx = np.cos(psi) * dx + np.sin(psi) * dy
    alpha = np.arctan2(ly, np.maximum(lx, 0.1))
    return np.clip(np.arctan(2.0 * wheelbase * np.sin(alpha) / lookahead), -MAX_WHEEL, MAX_WHEEL)


def project_to_route(route: dict, sc, s, X, Y):
    """One Newton step of projecting (X, Y) onto the route near s: (new s, lateral offset)."""
    for _ in range(2):
        th = route_at(route["theta"], sc, s)
        ex = X - route_at(route["X"], sc, s)
        ey = Y - route_at(route["Y"], sc, s)
        s = s + ex * np.cos(th) + ey * np.sin(th)
    th = route_at(route["theta"], sc, s)
    ex = X - route_at(route["X"], sc, s)
    ey = Y - route_at(route["Y"], sc, s)
    return s, -ex * np.sin(th) + ey * np.cos(th)


def to_ego_frame(X0, Y0, Z0, psi0, X, Y, Z):
    """World points -> ego frame at (X0, Y0, Z0, psi0): x forward, y left, z up (yaw only)."""
    dx, dy = X - X0, Y - Y0
    c, s = np.cos(psi0), np.sin(psi0)
    return c * dx + s * dy, -s * dx + c * dy, Z - Z0
