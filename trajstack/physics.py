"""Kinematic forecasts from telemetry alone at each horizon, in the ego frame at t.

- constant_velocity: straight ahead at the current speed;
- constant_acceleration: straight ahead, speed changing at the current acceleration until it
  reaches zero (a braking car stops, it does not reverse);
- constant_turn_rate: the constant-acceleration distance driven along an arc of the current
  curvature, from the steering-wheel angle through a kinematic bicycle model:
  road-wheel angle = steering / steering_ratio, curvature = tan(road-wheel angle) / wheelbase.
  Left steering (positive) curves towards the left axis.
The forward/left axes and the column names come from `features.physics`; every other axis
(z: up) is forecast 0.

Every model drives a car in a forward gear, which never backs up: a negative speed reading
(the real logs go down to -0.16 m/s) is taken as standstill, and a standing or braking car
stops at speed 0 and stays there. The forecasts read no gear column: the rare rows in reverse
(with park and neutral, 0.3% of the real rows) follow the same rule, so any backwards motion is
left to the learners, which see the gear as a feature. The `residual_baseline` model is the
baseline that stage 1 (`stage1.baseline: physics`) and stage 2 (`stage2.target_baseline:
physics`) can learn the residual to: it lives in the core package because both stages use it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from features.config import PhysicsConfig
from trajstack.config import check_axes
from trajstack.spec import DatasetSpec

# Fallback order when the chosen baseline is NaN (e.g. no steering column): simpler models.
FALLBACK = ["constant_turn_rate", "constant_acceleration", "constant_velocity"]


def telemetry_column(table: pd.DataFrame, name: str | None, key: str, spec: DatasetSpec) -> np.ndarray:
    """Column `name` (set as `features.physics.<key>`) as float64; all NaN when the table lacks it."""
    if name is None:
        raise ValueError(f"features.physics.{key} is not set; set it to one of the telemetry "
                         f"columns {spec.telemetry_columns} (configs/atmacup18.yaml sets the "
                         "atmaCup names)")
    if name not in table.columns:
        # A telemetry-only export may lack a whole column: the forecasts using it become NaN.
        warnings.warn(f"features.physics.{key}={name!r} is not in the table; its forecasts are NaN",
                      stacklevel=3)
        return np.full(len(table), np.nan)
    return table[name].to_numpy(dtype=float, na_value=np.nan)


def forward_speed(speed: np.ndarray) -> np.ndarray:
    """Speed of a car in a forward gear: a negative reading is standstill (NaN stays NaN)."""
    return np.where(speed < 0, 0.0, speed)


def travelled_distance(speed: np.ndarray, accel: np.ndarray, t: float) -> np.ndarray:
    """Distance (>= 0) after `t` s at constant acceleration in a forward gear: a braking car
    stops at speed 0 and stays there, and a standing car with negative acceleration stays put."""
    speed = forward_speed(speed)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_stop = np.where(accel < 0, speed / -accel, np.inf)
    tau = np.minimum(t, t_stop)
    return speed * tau + 0.5 * accel * tau**2


def arc_position(distance: np.ndarray, curvature: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(forward, left) after driving `distance` along a circle of signed `curvature`."""
    angle = curvature * distance
    small = np.abs(angle) < 1e-6
    safe = np.where(small, 1.0, curvature)
    forward = np.where(small, distance - curvature**2 * distance**3 / 6, np.sin(angle) / safe)
    left = np.where(small, curvature * distance**2 / 2, (1 - np.cos(angle)) / safe)
    return forward, left


def curvature_of(steering: np.ndarray, cfg: PhysicsConfig) -> np.ndarray:
    wheel = steering if cfg.steering_unit == "rad" else np.deg2rad(steering)
    return np.tan(wheel / cfg.steering_ratio) / cfg.wheelbase_m


def physics_forecasts(table: pd.DataFrame, spec: DatasetSpec, cfg: PhysicsConfig
                      ) -> dict[str, np.ndarray]:
    """Forecast of each physics model: model name -> (n, n_targets) in spec target order.

    Parameters
    ----------
    table : typed table holding the configured speed / acceleration / steering columns.
    spec : dataset spec (axes, horizons, target order).
    cfg : `features.physics`.
    """
    for axis_key in ("forward_axis", "left_axis"):
        if getattr(cfg, axis_key) not in spec.axes:
            raise ValueError(f"features.physics.{axis_key}={getattr(cfg, axis_key)!r} is not one "
                             f"of dataset.axes {spec.axes}")
    speed = telemetry_column(table, cfg.speed_column, "speed_column", spec)
    accel = telemetry_column(table, cfg.accel_column, "accel_column", spec)
    curvature = curvature_of(telemetry_column(table, cfg.steering_column, "steering_column", spec), cfg)
    n, n_axes = len(table), len(spec.axes)
    fwd, left = spec.axes.index(cfg.forward_axis), spec.axes.index(cfg.left_axis)
    out = {m: np.zeros((n, len(spec.target_columns))) for m in FALLBACK}
    for k, t in enumerate(spec.horizons_s):
        straight = forward_speed(speed) * t
        along = travelled_distance(speed, accel, t)
        arc_fwd, arc_left = arc_position(along, curvature)
        for model, (ahead, aside) in {
            "constant_velocity": (straight, np.zeros(n)),
            "constant_acceleration": (along, np.zeros(n)),
            "constant_turn_rate": (arc_fwd, arc_left),
        }.items():
            out[model][:, k * n_axes + fwd] = ahead  # targets are horizon-major
            out[model][:, k * n_axes + left] = aside
            # NaN inputs give NaN on every axis of that model, not a silent 0 on the others.
            out[model][np.isnan(ahead) | np.isnan(aside), k * n_axes:(k + 1) * n_axes] = np.nan
    return out


def physics_baseline(table: pd.DataFrame, spec: DatasetSpec, cfg: PhysicsConfig) -> np.ndarray:
    """(n, n_targets) baseline to learn the residual to: the chosen model, with NaN rows
    filled from simpler models and finally 0 (the residual is then the target itself)."""
    forecasts = physics_forecasts(table, spec, cfg)
    chain = FALLBACK[FALLBACK.index(cfg.residual_baseline):]
    base = forecasts[chain[0]].copy()
    for model in chain[1:]:
        base = np.where(np.isnan(base), forecasts[model], base)
    return np.nan_to_num(base, nan=0.0)


def per_metre_scale(table: pd.DataFrame, spec: DatasetSpec, cfg: PhysicsConfig, axes: list[str],
                    floor_m: float = 1.0, option: str = "stage2.per_metre_axes") -> np.ndarray:
    """(n, n_targets) divisor that turns a target into a change per metre travelled.

    On the targets of `axes`: the constant-acceleration distance to the target's horizon
    (`travelled_distance`; a missing acceleration counts as 0, a missing speed as standstill),
    at least `floor_m`, so that a standing car's target is not blown up; 1 on every other target.

    Parameters
    ----------
    table : typed table holding `cfg.speed_column` and `cfg.accel_column`.
    spec : dataset spec (axes, horizons, target order).
    cfg : `features.physics` (column names).
    axes : axes to scale (each one of `spec.axes`, else a ConfigError).
    floor_m : smallest divisor, metres.
    option : the config option that named `axes`, for the error message.
    """
    check_axes(axes, spec, option)
    scale = np.ones((len(table), len(spec.target_columns)))
    if not axes:
        return scale
    speed = np.nan_to_num(telemetry_column(table, cfg.speed_column, "speed_column", spec), nan=0.0)
    accel = np.nan_to_num(telemetry_column(table, cfg.accel_column, "accel_column", spec), nan=0.0)
    n_axes = len(spec.axes)
    for k, t in enumerate(spec.horizons_s):
        distance = np.maximum(travelled_distance(speed, accel, t), floor_m)
        for axis in axes:
            scale[:, k * n_axes + spec.axes.index(axis)] = distance  # targets are horizon-major
    return scale
