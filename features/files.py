"""Bring-your-own features: per-ID columns from files the user names in `features.files`.

Each entry is one parquet or CSV file holding both splits' IDs (`path`), or a `train` + `test`
pair; its columns (all but the ID, or those listed in `columns`) are joined to the feature
table under `prefix`. Depth statistics, embeddings or detector outputs computed elsewhere come
in this way. Every problem is an error naming the file: unknown extension, unreadable file, no
ID column, duplicate IDs, IDs of the table missing from the file, non-numeric columns, a
column name taken twice. The files' content hashes are inputs of the builder, so a changed file
gives a new cache key, a new feature hash and so a new stage-2 signature.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from features.base import BuildContext, SplitFrames, register_builder
from features.config import FeatureFileConfig
from trajstack.config import ConfigError
from trajstack.io import file_hash
from trajstack.tables import DataError, parse_bool

READERS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv"}
SHOWN_IDS = 3  # how many offending IDs a message lists


class FeatureFileError(ConfigError, DataError):
    """A file named in `features.files` that cannot be used; the message names file and problem.

    A ConfigError (the CLI reports it cleanly and stops) and a DataError (it is bad input data).
    """


def _where(index: int, entry: FeatureFileConfig, split: str) -> str:
    return f"features.files[{index}] {split} file {entry.files()[split]}"


def _reader(path: Path) -> str:
    name = path.name.lower()
    for suffix, reader in sorted(READERS.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return reader
    raise FeatureFileError(f"{path}: unknown file type; features.files takes "
                           f"{', '.join(READERS)} files")


def read_feature_file(path: str | Path, id_column: str) -> pd.DataFrame:
    """The file as a frame with the ID column as strings; FeatureFileError when it cannot be read."""
    path = Path(path)
    reader = _reader(path)
    if not path.is_file():
        raise FeatureFileError(f"{path}: file not found (paths in features.files are relative "
                               "to the working directory)")
    try:
        if reader == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={id_column: str})
    except Exception as err:  # any parser's failure is the same problem for the user
        raise FeatureFileError(f"{path}: cannot be read as {reader} ({type(err).__name__}: "
                               f"{err})") from None
    if id_column not in frame.columns:
        raise FeatureFileError(f"{path}: no ID column {id_column!r}; its columns: "
                               f"{list(frame.columns)[:10]}")
    frame[id_column] = frame[id_column].astype(str)
    return frame


def _numeric(frame: pd.DataFrame, columns: list[str], ctx: BuildContext, path: str) -> pd.DataFrame:
    """The columns as float64 (booleans, also written True/False, as 0/1); others named in an error."""
    out, bad = {}, []
    for col in columns:
        values = frame[col]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            out[col] = values.astype("float64").to_numpy()
            continue
        # CSV booleans with a missing value come as text: read them the way the tables do.
        parsed, unparsable = parse_bool(values, ctx.spec)
        if values.notna().any() and not unparsable.any():
            out[col] = parsed
        else:
            bad.append(f"{col} ({values.dtype}, e.g. {values.dropna().iloc[0]!r})"
                       if values.notna().any() else f"{col} (empty)")
    if bad:
        raise FeatureFileError(f"{path}: non-numeric columns: {', '.join(bad)}; encode them as "
                               "numbers, or list the columns to join in features.files[...].columns")
    return pd.DataFrame(out, index=frame.index)


def _rows_for(frame: pd.DataFrame, ids: pd.Series, id_column: str, where: str,
              split: str) -> pd.DataFrame:
    """Rows of `frame` in the order of `ids` (the table's); every ID must be there exactly once."""
    dupes = frame[id_column][frame[id_column].duplicated()].unique()
    if len(dupes):
        raise FeatureFileError(f"{where}: {len(dupes)} IDs appear more than once (e.g. "
                               f"{list(dupes[:SHOWN_IDS])}); keep one row per ID")
    wanted = ids.astype(str).to_numpy()
    # A hash lookup: np.isin on object arrays compares every pair (minutes at 44,000 rows).
    missing = wanted[~pd.Series(wanted).isin(frame[id_column]).to_numpy()]
    if len(missing):
        raise FeatureFileError(f"{where}: lacks {len(missing)} of the {len(wanted)} {split} IDs "
                               f"(e.g. {list(missing[:SHOWN_IDS])}); it needs a row for every "
                               f"{split} row (NaN values are fine)")
    return frame.set_index(id_column).loc[wanted].reset_index(drop=True)


def _selected_columns(frame: pd.DataFrame, entry: FeatureFileConfig, id_column: str,
                      where: str) -> list[str]:
    if entry.columns is None:
        return [c for c in frame.columns if c != id_column]
    missing = [c for c in entry.columns if c not in frame.columns]
    if missing:
        raise FeatureFileError(f"{where}: no columns {missing} (named in columns:); it has "
                               f"{[c for c in frame.columns if c != id_column][:20]}")
    return list(entry.columns)


def entry_features(ctx: BuildContext, index: int, entry: FeatureFileConfig) -> SplitFrames:
    """(train, test) columns of one `features.files` entry, rows in the tables' order."""
    id_col = ctx.spec.id_column
    sources = entry.files()
    frames = {path: read_feature_file(path, id_col) for path in dict.fromkeys(sources.values())}
    parts, columns_of = {}, {}
    for split in ("train", "test"):
        key = "both" if "both" in sources else split
        frame, where = frames[sources[key]], _where(index, entry, key)
        columns = _selected_columns(frame, entry, id_col, where)
        columns_of[split] = columns
        rows = _rows_for(frame, ctx.split(split)[id_col], id_col, where, split)
        values = _numeric(rows, columns, ctx, sources[key])
        values.columns = [f"{entry.prefix}{c}" for c in columns]
        parts[split] = pd.concat([ctx.split(split)[[id_col]].reset_index(drop=True), values], axis=1)
    if columns_of["train"] != columns_of["test"]:
        only = sorted(set(columns_of["train"]) ^ set(columns_of["test"]))
        raise FeatureFileError(f"features.files[{index}]: train file {sources.get('train')} and "
                               f"test file {sources.get('test')} differ in columns {only}; give "
                               "both the same columns (or list them in columns:)")
    return parts["train"], parts["test"]


def files_features(ctx: BuildContext) -> SplitFrames:
    """Every `features.files` entry's columns side by side; a name taken twice is an error."""
    id_col = ctx.spec.id_column
    train, test = ctx.train[[id_col]].reset_index(drop=True), ctx.test[[id_col]].reset_index(drop=True)
    owner: dict[str, str] = {id_col: "the ID column"}
    for index, entry in enumerate(ctx.cfg.features.files):
        part_train, part_test = entry_features(ctx, index, entry)
        source = " + ".join(dict.fromkeys(entry.files().values()))
        for col in part_train.columns.drop(id_col):
            if col in owner:
                raise FeatureFileError(f"features.files[{index}] ({source}): column {col!r} is "
                                       f"already taken by {owner[col]}; set a distinct prefix")
            owner[col] = f"features.files[{index}] ({source})"
        train = pd.concat([train, part_train.drop(columns=id_col)], axis=1)
        test = pd.concat([test, part_test.drop(columns=id_col)], axis=1)
    return train, test


def files_inputs(ctx: BuildContext) -> dict[str, str]:
    """Content hash of every file named in features.files (a changed byte gives a new key)."""
    hashes = {}
    for index, entry in enumerate(ctx.cfg.features.files):
        for split, path in entry.files().items():
            _reader(Path(path))
            if not Path(path).is_file():
                raise FeatureFileError(f"{_where(index, entry, split)}: file not found (paths in "
                                       "features.files are relative to the working directory)")
            hashes[f"files[{index}].{split}"] = file_hash(path)
    return hashes


def files_clash_hint(ctx: BuildContext, columns: list[str]) -> str:
    """Which features.files entry each clashing column comes from, and what to do about it."""
    id_col = ctx.spec.id_column
    found = []
    for index, entry in enumerate(ctx.cfg.features.files):
        for path in dict.fromkeys(entry.files().values()):
            header = read_feature_file(path, id_col).columns
            names = [c for c in columns if c.removeprefix(entry.prefix) in header
                     and c.startswith(entry.prefix)]
            if names:
                found.append(f"{names} from features.files[{index}] ({path})")
    where = "; ".join(found) or "from features.files"
    return f"{where}: set a prefix in features.files (e.g. prefix: my_) to keep the names apart"


register_builder(
    "files",
    config_of=lambda cfg: [entry.model_dump(mode="json") for entry in cfg.features.files],
    extra_inputs=files_inputs,
    clash_hint=files_clash_hint,
)(files_features)
