"""The one fold assignment of an experiment: `folds.csv` (ID, scene, fold).

Scenes are kept whole (GroupKFold on scene, or StratifiedGroupKFold on a configured column).
The file is made once per experiment and its hash is recorded by every artifact built on it;
a later stage refuses inputs whose fold hash differs.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, GroupShuffleSplit, StratifiedGroupKFold

from trajstack.artifacts import ArtifactError
from trajstack.config import Config, FoldsConfig
from trajstack.io import file_hash, read_json, write_csv_atomic, write_json_atomic
from trajstack.logs import get_logger
from trajstack.spec import DatasetSpec
from trajstack.tables import existing_table_path, read_table, scene_and_time

logger = get_logger(__name__)

FOLDS_FILE = "folds.csv"


@dataclass(frozen=True)
class Folds:
    """A loaded fold assignment: the table (ID, scene, fold) and its file hash."""

    table: pd.DataFrame
    hash: str
    path: Path

    @property
    def n_splits(self) -> int:
        return int(self.table["fold"].max()) + 1

    def fold_of(self, ids: pd.Series | np.ndarray) -> np.ndarray:
        """Fold of each ID; an ID absent from folds.csv is an error naming it."""
        return self._lookup("fold", ids).to_numpy(int)

    def scene_of(self, ids: pd.Series | np.ndarray) -> np.ndarray:
        """Scene of each ID (the group that inner splits keep whole); unknown IDs as in `fold_of`."""
        return self._lookup("scene", ids).to_numpy(str)

    def _lookup(self, column: str, ids: pd.Series | np.ndarray) -> pd.Series:
        lookup = pd.Series(self.table[column].to_numpy(), index=self.table["ID"].to_numpy())
        values = lookup.reindex(np.asarray(ids))
        if values.isna().any():
            missing = values.index[values.isna()][0]
            raise ArtifactError(f"ID {missing!r} is not in {self.path}; the train table changed "
                                "since the folds were made: use a new experiment (EXP=...)")
        return values


def require_shuffled_group_kfold() -> None:
    """Refuse a scikit-learn whose GroupKFold cannot shuffle (before 1.6), naming the fix."""
    if "shuffle" not in inspect.signature(GroupKFold).parameters:
        import sklearn

        raise ImportError(f"trajstack's folds need GroupKFold(shuffle=...), from scikit-learn 1.6; "
                          f"this environment has scikit-learn {sklearn.__version__}: "
                          "pip install 'scikit-learn>=1.6'")


def assign_folds(train: pd.DataFrame, spec: DatasetSpec, cfg: FoldsConfig) -> pd.DataFrame:
    """(ID, scene, fold) for every train row; scenes never straddle folds.

    Parameters
    ----------
    train : the typed train table (`trajstack.tables.read_table`).
    spec : dataset spec (ID column, scene pattern).
    cfg : number of splits, seed, optional stratification column.
    """
    ids = train[spec.id_column].to_numpy(str)
    scenes, _ = scene_and_time(ids, spec)
    n_scenes = len(np.unique(scenes))
    if n_scenes < cfg.n_splits:
        raise ArtifactError(f"{n_scenes} scenes cannot fill folds.n_splits={cfg.n_splits} folds")
    placeholder = np.zeros(len(ids))
    if cfg.stratify_column is None:
        require_shuffled_group_kfold()
        splitter = GroupKFold(n_splits=cfg.n_splits, shuffle=True, random_state=cfg.seed)
        splits = splitter.split(placeholder, groups=scenes)
    else:
        labels = _stratify_labels(train, cfg)
        splitter = StratifiedGroupKFold(n_splits=cfg.n_splits, shuffle=True, random_state=cfg.seed)
        splits = splitter.split(placeholder, labels, groups=scenes)
    fold = np.full(len(ids), -1, dtype=int)
    for k, (_, valid_idx) in enumerate(splits):
        fold[valid_idx] = k
    return pd.DataFrame({"ID": ids, "scene": scenes, "fold": fold})


def inner_holdout(rows: np.ndarray, groups: np.ndarray, fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(fit_rows, held_rows): `rows` split by group (scene), about `fraction` of their groups held out.

    The inner split used to choose a model (GBDT rounds, a network's epoch) without touching the
    fold it will be scored on: pass a fold's *training* rows. Groups never straddle the split.

    Parameters
    ----------
    rows : row positions to split (e.g. every row outside the scored fold).
    groups : group (scene) of every row of the table, indexed by position.
    fraction : share of the groups held out (at least one, and at least one left to fit on).
    seed : seed of the draw.
    """
    rows = np.asarray(rows)
    n_groups = len(np.unique(groups[rows]))
    if n_groups < 2:
        raise ArtifactError(f"an inner holdout needs >= 2 training scenes, got {n_groups}: "
                            "use more scenes or turn model selection off")
    n_held = min(max(1, int(round(fraction * n_groups))), n_groups - 1)
    splitter = GroupShuffleSplit(n_splits=1, test_size=n_held, random_state=seed)
    fit_idx, held_idx = next(splitter.split(rows, groups=groups[rows]))
    return rows[np.sort(fit_idx)], rows[np.sort(held_idx)]


def _stratify_labels(train: pd.DataFrame, cfg: FoldsConfig) -> np.ndarray:
    column = cfg.stratify_column
    if column not in train.columns:
        raise ArtifactError(f"folds.stratify_column={column!r} is not a train column; "
                            f"choose one of {list(train.columns)}")
    values = train[column]
    if isinstance(values.dtype, pd.CategoricalDtype) or values.nunique() <= cfg.stratify_bins:
        return values.astype(str).to_numpy()
    return pd.qcut(values.rank(method="first"), cfg.stratify_bins, labels=False).to_numpy()


def ensure_folds(cfg: Config) -> Folds:
    """Load the experiment's folds.csv, making it on first use.

    It is remade never: a folds.csv made from another train file or fold config is an error,
    since artifacts already built on it would silently mix with new ones.
    """
    spec = cfg.dataset
    path = cfg.experiment_dir / FOLDS_FILE
    meta_path = path.with_suffix(".meta.json")
    wanted = {
        "train_hash": file_hash(existing_table_path(cfg.data_dir, spec, "train")),
        "folds_config": cfg.folds.model_dump(mode="json"),
    }
    if path.exists() and meta_path.exists():
        meta = read_json(meta_path)
        recorded = {k: meta.get(k) for k in wanted}
        if recorded != wanted:
            raise ArtifactError(
                f"{path} was made from {recorded} but this run asks for {wanted}. Folds are made "
                "once per experiment: use another experiment (EXP=...) or delete that folder."
            )
        if meta.get("folds_hash") != file_hash(path):
            raise ArtifactError(f"{path} was edited after it was made (hash differs from "
                                f"{meta_path}); delete both to remake them")
        return load_folds(path)
    table = assign_folds(read_table(cfg.data_dir, spec, "train"), spec, cfg.folds)
    write_csv_atomic(path, table)
    write_json_atomic(meta_path, {**wanted, "folds_hash": file_hash(path)})
    return load_folds(path)


def load_folds(path: str | Path) -> Folds:
    path = Path(path)
    table = pd.read_csv(path, dtype={"ID": str, "scene": str, "fold": int})
    return Folds(table=table, hash=file_hash(path), path=path)


def main(argv: list[str] | None = None) -> int:
    """`trajstack folds`: make (or check) the experiment's folds.csv and print its summary."""
    from trajstack.cli import common_parser, config_from_args

    args = common_parser("folds", "write folds.csv (ID, scene, fold) for the experiment").parse_args(argv)
    folds = ensure_folds(config_from_args(args))
    sizes = folds.table.groupby("fold").agg(rows=("ID", "size"), scenes=("scene", "nunique"))
    logger.info(f"{folds.path} (hash {folds.hash})\n{sizes.to_string()}")
    return 0
