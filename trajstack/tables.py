"""Read the train/test tables into typed frames, driven by the dataset spec.

Booleans become float 0/1 (NaN where missing: the pipeline imputes), categories become pandas
Categoricals with the spec's levels, floats stay float64. A value that cannot be parsed raises
`DataError` naming the file, row ID and column; `trajstack validate` lists every such problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from trajstack.errors import TrajstackError
from trajstack.spec import DatasetSpec

Split = Literal["train", "test"]


class DataError(TrajstackError, ValueError):
    """Input data the pipeline cannot use; the message names file, row and column."""


def table_path(data_dir: str | Path, spec: DatasetSpec, split: Split) -> Path:
    return Path(data_dir) / (spec.train_file if split == "train" else spec.test_file)


def existing_table_path(data_dir: str | Path, spec: DatasetSpec, split: Split) -> Path:
    """`table_path`, checked to exist (DataError naming the file otherwise)."""
    path = table_path(data_dir, spec, split)
    _require_file(path)
    return path


def _require_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found (is --data / DATA= the dataset folder?)")


def read_raw_table(path: Path, spec: DatasetSpec) -> pd.DataFrame:
    """The CSV as strings for non-float columns (nothing interpreted yet)."""
    _require_file(path)
    str_cols = [spec.id_column, *spec.columns_of_kind("bool"), *spec.columns_of_kind("category")]
    return pd.read_csv(path, dtype={c: str for c in str_cols}, keep_default_na=True)


def parse_bool(values: pd.Series, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """(float array of 1/0/NaN, mask of values that are neither true, false nor missing)."""
    text = values.astype("string").str.strip()
    out = np.full(len(values), np.nan)
    is_true = text.isin(spec.bool_true).fillna(False).to_numpy(bool)
    is_false = text.isin(spec.bool_false).fillna(False).to_numpy(bool)
    out[is_true] = 1.0
    out[is_false] = 0.0
    bad = ~(is_true | is_false | values.isna().to_numpy())
    return out, bad


def read_table(data_dir: str | Path, spec: DatasetSpec, split: Split) -> pd.DataFrame:
    """Typed train or test table, columns in spec order (train: ID, telemetry, targets)."""
    path = table_path(data_dir, spec, split)
    raw = read_raw_table(path, spec)
    wanted = spec.train_columns if split == "train" else spec.test_columns
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise DataError(f"{path}: missing columns {missing}; run `trajstack validate` for all problems")
    frame = raw[wanted].copy()
    ids = frame[spec.id_column]
    for col in spec.columns_of_kind("bool"):
        frame[col], bad = parse_bool(frame[col], spec)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: row {ids.iloc[i]} column {col}: cannot read {raw[col].iloc[i]!r} as a boolean "
                f"(expected one of {spec.bool_true + spec.bool_false}); {int(bad.sum())} such rows"
            )
    for col in spec.columns_of_kind("category"):
        levels = spec.categories[col]
        bad = ~frame[col].isin(levels) & frame[col].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(
                f"{path}: row {ids.iloc[i]} column {col}: unknown value {frame[col].iloc[i]!r} "
                f"(expected one of {levels}); {int(bad.sum())} such rows"
            )
        frame[col] = pd.Categorical(frame[col], categories=levels)
    for col in spec.columns_of_kind("float") + (spec.target_columns if split == "train" else []):
        frame[col] = pd.to_numeric(frame[col], errors="coerce").astype("float64")
    return frame.reset_index(drop=True)


def scene_and_time(ids: pd.Series | list[str], spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Scene key and time (in the ID's own unit) of each ID; DataError on a malformed ID."""
    parts = pd.Series(ids, dtype="string").str.extract(spec.id_pattern)
    bad = parts["scene"].isna()
    if bad.any():
        first = pd.Series(ids)[bad.to_numpy()].iloc[0]
        raise DataError(f"ID {first!r} does not match dataset.id_pattern {spec.id_pattern!r}")
    return parts["scene"].to_numpy(str), parts["time"].astype(int).to_numpy()
