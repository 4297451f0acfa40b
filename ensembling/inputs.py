"""The blend's inputs: finished runs of the experiment, checked and stacked into arrays.

Runs are read through the artifact store only. They must share one fold hash (the
experiment's folds.csv) and predict the same train IDs; test predictions are aligned to the
row order of the test file. A run whose own inputs went stale (an upstream run rewrote its
outputs since) is left out with a one-line note naming the command that rebuilds it.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from stage2_gbdt.without_stage1 import WITHOUT_KEY
from trajstack.artifacts import (
    OOF_FILE,
    PREDICTION_FILES,
    TEST_FILE,
    ArtifactError,
    ArtifactStore,
    FoldMismatchError,
    RunResult,
    Stage,
)
from trajstack.config import Config
from trajstack.folds import Folds
from trajstack.logs import get_logger
from trajstack.metrics import as_target_matrix
from trajstack.spec import DatasetSpec
from trajstack.tables import read_table

logger = get_logger(__name__)

# The blend's config sections; upstream sections (stage1, features, stage2, ...) reach it
# through its inputs' output digests, and report/tracking change no number.
BLEND = Stage("blend", sections=("seed", "dataset", "folds", "blend"), version=1,
              rebuild="trajstack blend")
BLEND_STAGE = BLEND.name


@dataclass
class BlendInputs:
    """Stacked predictions of the input runs, aligned to the train and test row orders.

    Attributes
    ----------
    names : run names ("stage/run"), one per model.
    oof : (n_models, n_train, n_targets) out-of-fold predictions, train-table row order.
    test : (n_models, n_test, n_targets) test predictions, test-file row order.
    y : (n_train, n_targets) labels.
    fold : (n_train,) fold of each train row (from folds.csv).
    train_ids, test_ids : row IDs.
    runs : the loaded runs.
    """

    names: list[str]
    oof: np.ndarray
    test: np.ndarray
    y: np.ndarray
    fold: np.ndarray
    train_ids: np.ndarray
    test_ids: np.ndarray
    runs: list[RunResult]


def select_runs(store: ArtifactStore, wanted: list[str] | None,
                without_stage1: Collection[str] = ()) -> list[RunResult]:
    """The finished runs to blend: `wanted` ("stage/run" names) or all outside the blend stage.

    A stage-2 run fitted without a stage-1 run is left out (it is there for the report) unless
    `wanted` names it or, with `wanted` None, its learner is in `without_stage1`
    (`stage2.without_stage1`: fitted as a blend input).
    """
    # Only model runs: other stages (e.g. a feature cache) keep no prediction tables.
    def blended(run: RunResult) -> bool:
        if WITHOUT_KEY not in run.meta:
            return True
        if wanted is None:
            return run.meta.get("learner") in without_stage1
        return run.name in wanted

    available = {r.name: r for r in store.finished_runs()
                 if r.meta.get("stage") != BLEND_STAGE and _has_predictions(r) and blended(r)}
    left_out = set()
    for name, run in list(available.items()):
        if wanted is not None and name not in wanted:
            continue
        stale = store.stale_inputs(run)
        if stale:
            left_out.add(name)
            rebuild = run.meta.get("rebuild") or f"trajstack {run.meta.get('stage')}"
            logger.warning(f"blend: leaving out {name}: {', '.join(stale)} changed since it was made; "
                           f"rebuild it with `{rebuild}`")
            del available[name]
    if wanted is None:
        runs = list(available.values())
    else:
        missing = [w for w in wanted if w not in available and w not in left_out]
        if missing:
            raise ArtifactError(f"blend.runs names {missing}, which are not finished runs with "
                                f"{' and '.join(PREDICTION_FILES)} under {store.root}; "
                                f"finished: {sorted(available) or 'none'}")
        runs = [available[w] for w in wanted if w in available]
    if not runs:
        raise ArtifactError(f"no finished stage runs under {store.root} to blend; run "
                            "`trajstack stage1` / `trajstack stage2` first")
    return runs


def _has_predictions(run: RunResult) -> bool:
    return all((run.dir / name).exists() for name in PREDICTION_FILES)


def check_fold_hashes(runs: list[RunResult], folds_hash: str) -> None:
    """Refuse runs built on different fold assignments, listing each run's fold hash."""
    hashes = {r.name: r.fold_hash for r in runs}
    if len(set(hashes.values())) > 1:
        listing = ", ".join(f"{name}: {h}" for name, h in hashes.items())
        raise FoldMismatchError(
            f"the runs to blend were built on different folds ({listing}); a blend of OOF "
            "predictions from different folds leaks labels. Rerun the odd ones out on the "
            "experiment's folds.csv or list only matching runs in blend.runs.")
    only = next(iter(hashes.values()))
    if only != folds_hash:
        raise FoldMismatchError(
            f"the runs to blend were built on folds {only}, but the experiment's folds.csv has "
            f"hash {folds_hash}; rerun the stages on the current folds.")


def load_inputs(cfg: Config, store: ArtifactStore, folds: Folds) -> BlendInputs:
    """Load, check and stack the experiment's runs (see `BlendInputs`)."""
    spec = cfg.dataset
    runs = select_runs(store, cfg.blend.runs, cfg.stage2.without_stage1)
    check_fold_hashes(runs, folds.hash)
    train = read_table(cfg.data_dir, spec, "train")
    test_ids = read_table(cfg.data_dir, spec, "test")[spec.id_column].to_numpy(str)
    train_ids = train[spec.id_column].to_numpy(str)
    oof = np.stack([_aligned(r, r.oof(), train_ids, OOF_FILE, spec) for r in runs])
    test = np.stack([_aligned(r, r.test(), test_ids, TEST_FILE, spec) for r in runs])
    y = as_target_matrix(train, spec)
    # Rows without every label can be neither fit nor scored; the stages skip them too.
    labelled = np.isfinite(y).all(axis=1)
    if not labelled.all():
        logger.warning(f"blend: {int((~labelled).sum())} train rows lack a label; left out of fit and scores")
    return BlendInputs(
        names=[r.name for r in runs], oof=oof[:, labelled], test=test, y=y[labelled],
        fold=folds.fold_of(train_ids[labelled]), train_ids=train_ids[labelled],
        test_ids=test_ids, runs=runs,
    )


def _aligned(run: RunResult, table: pd.DataFrame, ids: np.ndarray, what: str,
             spec: DatasetSpec) -> np.ndarray:
    """(n, n_targets) predictions of `run` in the order of `ids`; every ID exactly once."""
    id_col = spec.id_column
    got = table[id_col].astype(str)
    if got.duplicated().any():
        raise ArtifactError(f"{run.dir / what}: ID {got[got.duplicated()].iloc[0]!r} appears twice")
    expected = set(ids)
    extra = set(got) - expected
    missing = expected - set(got)
    if extra or missing:
        example = next(iter(missing or extra))
        raise ArtifactError(
            f"{run.dir / what} does not cover the same IDs as the data ({len(missing)} missing, "
            f"{len(extra)} unknown, e.g. {example!r}); all runs must predict every train and "
            "test row of the same dataset")
    values = as_target_matrix(table.set_index(got).loc[ids].reset_index(drop=True), spec)
    if not np.isfinite(values).all():
        raise ArtifactError(f"{run.dir / what} holds NaN or infinite predictions")
    return values
