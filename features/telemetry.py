"""The telemetry columns themselves: floats, booleans as 0/1 (NaN kept), categories as categories."""

from __future__ import annotations

import pandas as pd

from features.base import BuildContext, id_frame, per_split, register_builder


def telemetry_features(table: pd.DataFrame, ctx: BuildContext) -> pd.DataFrame:
    """Every telemetry column of the spec plus the count of missing values in the row.

    Parameters
    ----------
    table : typed table (`trajstack.tables.read_table`): bools are already float 0/1/NaN and
        categories pandas Categoricals, which the GBDTs take natively.
    ctx : build context (for the dataset spec).
    """
    spec = ctx.spec
    out = id_frame(table, spec)
    columns = spec.telemetry_columns
    for col in columns:
        out[col] = table[col].to_numpy() if spec.telemetry[col] != "category" else table[col].values
    # A whole column missing in a real drive log shows up here rather than crashing anything.
    out["telemetry_n_missing"] = table[columns].isna().sum(axis=1).to_numpy(float)
    return out


register_builder("telemetry")(per_split(telemetry_features))
