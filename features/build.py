"""Assemble the feature table from the active builders (`features.builders`, plus `files` when
`features.files` names any), with a cache.

Each builder's output is cached under `outputs/<exp>/features/<builder>-<key>.<split>.parquet`,
where the key hashes the builder's name, its config section, the code version, the dataset spec
and its inputs (table contents, the content digest of the stage-1 runs' outputs, ...). Writes are atomic, so a cache file is complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

# Importing the builder modules registers them.
from features import (  # noqa: F401
    files,
    image_stats,
    physics,
    scene_lags,
    stage1,
    telemetry,
    traffic_lights,
)
from features.base import BUILDERS, BuildContext
from trajstack.config import Config, ConfigError
from trajstack.folds import Folds
from trajstack.io import data_hash, write_parquet_atomic
from trajstack.logs import get_logger
from trajstack.tables import read_table

logger = get_logger(__name__)

# Bump when a builder's code changes what it outputs: old cache files are then ignored.
FEATURES_VERSION = 1


@dataclass
class FeatureTable:
    """Train and test features keyed by ID, rows in the tables' order."""

    train: pd.DataFrame
    test: pd.DataFrame
    id_column: str
    hash: str
    builder_keys: dict[str, str] = field(default_factory=dict)
    # Upstream runs read by the builders (`run:<stage>/<name>` -> output digest): a stage built
    # on these features records them among its inputs, so the blend can tell when they went stale.
    upstream: dict[str, str] = field(default_factory=dict)

    @property
    def feature_columns(self) -> list[str]:
        return [c for c in self.train.columns if c != self.id_column]

    @property
    def categorical_columns(self) -> list[str]:
        return [c for c in self.feature_columns
                if isinstance(self.train[c].dtype, pd.CategoricalDtype)]


def table_hash(frame: pd.DataFrame) -> str:
    """Content hash of a table (values, column names and order)."""
    h = hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    h.update("|".join(map(str, frame.columns)).encode())
    return h.hexdigest()[:16]


def _check_rows(frame: pd.DataFrame, table: pd.DataFrame, id_col: str, what: str) -> None:
    if id_col not in frame.columns or not frame[id_col].astype(str).reset_index(drop=True).equals(
            table[id_col].astype(str).reset_index(drop=True)):
        raise RuntimeError(f"feature builder {what} returned rows not keyed by the table's IDs "
                           "in the table's order")


def build_features(
    cfg: Config,
    folds: Folds | None = None,
    train: pd.DataFrame | None = None,
    test: pd.DataFrame | None = None,
    log: Callable[[str], None] | None = None,
) -> FeatureTable:
    """Run (or read from cache) every active builder and join their columns.

    Parameters
    ----------
    cfg : resolved config (`features` section, dataset spec, experiment dir for the cache).
    folds : the experiment's folds; needed by the stage-1 builder (fold-hash check).
    train, test : typed tables; read from `cfg.data_dir` when not given.
    log : called with one line per builder (cache hit or built).
    """
    spec = cfg.dataset
    id_col = spec.id_column
    names = cfg.features.active_builders
    BUILDERS.check(names)
    train = read_table(cfg.data_dir, spec, "train") if train is None else train
    test = read_table(cfg.data_dir, spec, "test") if test is None else test
    # Targets never reach a builder: hash and pass the telemetry part only.
    train_inputs = train[spec.test_columns]
    ctx = BuildContext(cfg, train_inputs, test[spec.test_columns],
                       {"train": table_hash(train_inputs), "test": table_hash(test[spec.test_columns])},
                       folds)
    cache_dir = cfg.experiment_dir / "features"
    out_train, out_test = train[[id_col]].copy(), test[[id_col]].copy()
    keys: dict[str, str] = {}
    upstream: dict[str, str] = {}
    owner: dict[str, str] = {}  # column -> builder that made it
    for name in names:
        builder = BUILDERS.get(name)
        extra = builder.extra_inputs(ctx)
        upstream |= {k: v for k, v in extra.items() if k.startswith("run:")}
        key = data_hash({
            "builder": name, "version": FEATURES_VERSION, "config": builder.config_of(cfg),
            "dataset": spec.model_dump(mode="json"), "inputs": ctx.input_hashes | extra,
        })
        keys[name] = key
        paths = [cache_dir / f"{name}-{key}.{split}.parquet" for split in ("train", "test")]
        if cfg.features.cache and all(p.exists() for p in paths):
            part_train, part_test = (pd.read_parquet(p) for p in paths)
            status = "cached"
        else:
            part_train, part_test = builder.build(ctx)
            if cfg.features.cache:
                for path, part in zip(paths, (part_train, part_test), strict=True):
                    write_parquet_atomic(path, part)
            status = "built"
        for part, table in ((part_train, train), (part_test, test)):
            _check_rows(part, table, id_col, name)
        clash = sorted(set(out_train.columns) & set(part_train.columns) - {id_col})
        if clash:
            made_by = sorted({owner[c] for c in clash})
            # Either side may know where its columns come from (e.g. which user file).
            hints = [BUILDERS.get(b).clash_hint(ctx, clash) for b in dict.fromkeys([name, *made_by])
                     if BUILDERS.get(b).clash_hint]
            hint = "".join(f"; {h}" for h in hints)
            # Two sources of one name is a config problem (the CLI reports ConfigError cleanly).
            raise ConfigError(f"feature builder {name} repeats columns {clash} already made by "
                              f"{made_by}{hint}")
        owner |= dict.fromkeys(part_train.columns.drop(id_col), name)
        out_train = pd.concat([out_train, part_train.drop(columns=id_col)], axis=1)
        out_test = pd.concat([out_test, part_test.drop(columns=id_col)], axis=1)
        (log or logger.info)(f"features {name}: {part_train.shape[1] - 1} columns ({status}, key {key})")
    _same_columns(out_train, out_test)
    return FeatureTable(out_train, out_test, id_col, data_hash(keys), keys, upstream)


def _same_columns(train: pd.DataFrame, test: pd.DataFrame) -> None:
    if list(train.columns) != list(test.columns):
        diff = sorted(set(train.columns) ^ set(test.columns))
        raise RuntimeError(f"train and test feature columns differ: {diff}")


def cache_files(cfg: Config) -> list[Path]:
    """Every feature cache file of the experiment (for inspection and tests)."""
    return sorted((cfg.experiment_dir / "features").glob("*.parquet"))
