"""Scene-lag features: the other rows of the same scene (10 s apart in atmaCup) as context.

Scene and time come from the ID (`dataset.id_pattern`). Within each scene, sorted by time:
values of the rows at the configured offsets, differences to them, time gaps, scene size,
position in the scene, whole-scene statistics. Windows are `over(scene)` on one split's table
at a time, so nothing crosses a scene or a split; targets are never read.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl

from features.base import BuildContext, id_frame, per_split, register_builder
from trajstack.spec import DatasetSpec
from trajstack.tables import scene_and_time

SCENE, TIME, ROW = "__scene", "__time_s", "__row"


def lag_columns(ctx: BuildContext) -> list[str]:
    """The configured columns, or every float and bool telemetry column of the spec."""
    spec = ctx.spec
    default = [c for c, k in spec.telemetry.items() if k in ("float", "bool")]
    columns = ctx.cfg.features.scene_lags.columns
    if columns is None:
        return default
    unknown = [c for c in columns if c not in default]
    if unknown:
        raise ValueError(f"features.scene_lags.columns names {unknown}, which are not float/bool "
                         f"telemetry columns of dataset.telemetry; valid: {default}")
    return list(columns)


def _offset_name(offset: int) -> str:
    return f"prev{-offset}" if offset < 0 else f"next{offset}"


def scene_lag_features(table: pd.DataFrame, ctx: BuildContext) -> pd.DataFrame:
    """Lag, difference, gap and scene-statistic features of one split's table.

    Parameters
    ----------
    table : one split's typed table (never both: that is what keeps splits apart).
    ctx : build context (dataset spec and `features.scene_lags`).

    Returns
    -------
    Frame keyed by ID, in the table's row order; NaN where a scene has no row at an offset.
    """
    spec, cfg = ctx.spec, ctx.cfg.features.scene_lags
    columns = lag_columns(ctx)
    scenes, times = scene_and_time(table[spec.id_column], spec)
    frame = pl.DataFrame({
        ROW: np.arange(len(table)),
        SCENE: scenes,
        TIME: times * spec.time_unit_s,
        **{c: table[c].to_numpy(dtype=float, na_value=np.nan) for c in columns},
    }).fill_nan(None)  # null, so that scene statistics skip missing values
    frame = frame.sort([SCENE, TIME])

    def over(expr: pl.Expr) -> pl.Expr:
        return expr.over(SCENE)

    time = pl.col(TIME)
    exprs = [
        over(pl.len()).cast(pl.Float64).alias("lag_scene_size"),
        over(pl.int_range(pl.len())).cast(pl.Float64).alias("lag_scene_position"),
        time.alias("lag_time_s"),
        (time - over(time.min())).alias("lag_time_since_scene_start"),
        (time - over(time.shift(1))).alias("lag_gap_prev_s"),
        (over(time.shift(-1)) - time).alias("lag_gap_next_s"),
    ]
    for col in columns:
        value = pl.col(col)
        for offset in cfg.offsets:
            # offset -1 is the previous row: the value shifted down by one.
            lagged = over(value.shift(-offset))
            exprs.append(lagged.alias(f"lag_{col}_{_offset_name(offset)}"))
            if cfg.diffs:
                exprs.append((value - lagged).alias(f"lag_{col}_diff_{_offset_name(offset)}"))
        for stat in cfg.stats:
            exprs.append(over(getattr(value, stat)()).alias(f"lag_{col}_scene_{stat}"))
        if "mean" in cfg.stats:
            exprs.append((value - over(value.mean())).alias(f"lag_{col}_minus_scene_mean"))
    result = frame.select(pl.col(ROW), *exprs).sort(ROW).drop(ROW)
    out = id_frame(table, spec)
    features = result.to_pandas().astype("float64")
    return pd.concat([out, features], axis=1)


def minus_scene_mean(frame: pd.DataFrame, columns: list[str], spec: DatasetSpec) -> pd.DataFrame:
    """Each of `columns` minus its mean over the row's scene (missing values skipped), as
    `<column>_minus_scene_mean`, for any builder's columns (what `lag_<col>_minus_scene_mean`
    is for telemetry).

    Parameters
    ----------
    frame : one split's rows: the ID column (`spec.id_column`) and `columns`.
    columns : numeric columns of `frame`.
    spec : dataset spec (ID column and `id_pattern`, which names the scene).

    Returns
    -------
    float32 frame with one column per input column, in `frame`'s row order and index.
    """
    scenes, _ = scene_and_time(frame[spec.id_column], spec)
    values = frame[columns].astype("float32")
    deviation = values - values.groupby(scenes).transform("mean")
    return deviation.rename(columns=lambda c: f"{c}_minus_scene_mean")


def scene_neighbours(frame: pd.DataFrame, columns: list[str], spec: DatasetSpec,
                     offsets: list[int]) -> pd.DataFrame:
    """Each of `columns` at the row `offset` rows away in the row's scene (sorted by time; -1:
    the previous row), and the row's own value minus it, for any builder's columns (what
    `lag_<col>_<prev1>` and `lag_<col>_diff_<prev1>` are for telemetry).

    Parameters
    ----------
    frame : one split's rows: the ID column (`spec.id_column`) and `columns`.
    columns : numeric columns of `frame`.
    spec : dataset spec (ID column and `id_pattern`, which names the scene and the time).
    offsets : non-zero row offsets within the scene.

    Returns
    -------
    float32 frame, `<column>_<prev1|next1...>` then `<column>_diff_<...>` per offset, in
    `frame`'s row order and index; NaN where the scene has no row at that offset.
    """
    scenes, times = scene_and_time(frame[spec.id_column], spec)
    order = np.lexsort((times, scenes))
    values = frame[columns].astype("float32")
    by_scene = values.iloc[order].groupby(scenes[order], sort=False)
    parts = []
    for offset in offsets:
        name = _offset_name(offset)
        neighbour = by_scene.shift(-offset).reindex(frame.index)  # back to the frame's row order
        parts.append(neighbour.rename(columns=lambda c, n=name: f"{c}_{n}"))
        parts.append((values - neighbour).rename(columns=lambda c, n=name: f"{c}_diff_{n}"))
    return pd.concat(parts, axis=1)


register_builder(
    "scene_lags", config_of=lambda cfg: cfg.features.scene_lags.model_dump(mode="json")
)(per_split(scene_lag_features))
