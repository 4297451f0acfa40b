"""`physics` feature builder: the kinematic forecasts of `trajstack.physics` as features.

The forward and left axes of each configured model (a straight-line model's left axis is
always 0 and left out), plus the curvature and yaw rate the turn-rate model drives on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.base import BuildContext, id_frame, per_split, register_builder
from trajstack.physics import curvature_of, physics_forecasts, telemetry_column

SHORT = {"constant_velocity": "cv", "constant_acceleration": "ca", "constant_turn_rate": "ctr"}


def physics_features(table: pd.DataFrame, ctx: BuildContext) -> pd.DataFrame:
    """The configured models' forecasts on the forward and left axes, plus curvature terms."""
    spec, cfg = ctx.spec, ctx.cfg.features.physics
    forecasts = physics_forecasts(table, spec, cfg)
    out = id_frame(table, spec)
    planar = {cfg.forward_axis, cfg.left_axis}
    columns: dict[str, np.ndarray] = {}
    for model in cfg.models:
        for j, target in enumerate(spec.target_columns):
            axis = spec.axes[j % len(spec.axes)]
            # Straight-line models have 0 on the left axis: a constant column teaches nothing.
            if axis in planar and not (axis == cfg.left_axis and model != "constant_turn_rate"):
                columns[f"phys_{SHORT[model]}_{target}"] = forecasts[model][:, j]
    if cfg.steering_column is not None:
        curvature = curvature_of(telemetry_column(table, cfg.steering_column, "steering_column", spec), cfg)
        columns["phys_curvature"] = curvature
        columns["phys_yaw_rate"] = curvature * telemetry_column(table, cfg.speed_column, "speed_column", spec)
    return pd.concat([out, pd.DataFrame(columns)], axis=1)


register_builder(
    "physics",
    config_of=lambda cfg: cfg.features.physics.model_dump(
        mode="json", exclude={"residual_baseline"}),
)(per_split(physics_features))
