"""Stage-1 features: the network's OOF predictions for train, its fold-mean predictions for test.

Read from finished runs in `outputs/<exp>/stage1/<run>/` through the artifact store, refusing
runs built on other folds (FoldMismatchError). Per run: the 18 target predictions, optionally
the 27 auxiliary ones, and velocities / accelerations derived from the 18 by finite differences.

No embedding features, on purpose. Each fold's network has its own embedding basis: a train
row's OOF embedding comes from the network that held its fold out, a test row has one embedding
per network. Any projection of them (PCA per network, oriented by sign or not) gives a column
whose meaning differs from row to row in train (K networks' unrelated components side by
side, which stage 2's fold models then mix) and whose test value is an average of K
different quantities: train and test never mean the same thing. The option
(`features.stage1.pca_components`) was removed for that reason; the predictions carry the
networks' knowledge in a shared, physical basis, and `oof_emb.npy` / `fold<k>/test_emb.npy`
stay available for analysis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from features.base import BuildContext, register_builder
from trajstack.artifacts import (
    ArtifactError,
    ArtifactStore,
    RunResult,
)
from trajstack.spec import DatasetSpec


class Stage1MissingError(ArtifactError):
    """features.stage1 is on but no finished stage-1 run exists."""


def stage1_runs(ctx: BuildContext) -> list[RunResult]:
    """The stage-1 runs to read, each checked to be finished and built on the current folds."""
    cfg = ctx.cfg
    if ctx.folds is None:
        raise ArtifactError("stage-1 features need the experiment's folds (ensure_folds)")
    store = ArtifactStore(cfg.experiment_dir)
    root = store.root / "stage1"
    wanted = cfg.features.stage1.runs
    if wanted is None:
        dirs = [run.dir for run in store.finished_runs("stage1")] if root.is_dir() else []
    else:
        dirs = [root / name for name in wanted]
    hint = ("run `make stage1` (trajstack stage1) first, or set features.stage1=false "
            "for a stage 2 from telemetry alone")
    if not dirs:
        raise Stage1MissingError(f"features.stage1 is on but {root} holds no finished stage-1 "
                                 f"run: {hint}")
    for d in dirs:
        if not (d / "meta.json").exists():
            raise Stage1MissingError(f"stage-1 run {d} does not exist: {hint}")
    return [store.load(d, expect_fold_hash=ctx.folds.hash) for d in dirs]


def stage1_inputs(ctx: BuildContext) -> dict[str, str]:
    """The stage-1 runs read, keyed `run:stage1/<name>`, by the digest of their outputs' contents
    (not their config): a rerun that writes the same bytes keeps the cache key."""
    runs = stage1_runs(ctx)
    return {r.input_key: r.output_digest for r in runs} | {
        "folds": ctx.folds.hash if ctx.folds else ""}


def _aligned(frame: pd.DataFrame, ids: pd.Series, id_col: str, what: str) -> pd.DataFrame:
    """Rows of `frame` in the order of `ids`; every ID must be there exactly once."""
    if frame[id_col].duplicated().any():
        raise ArtifactError(f"{what} lists some IDs more than once")
    missing = ids[~ids.isin(frame[id_col])]
    if len(missing):
        raise ArtifactError(f"{what} lacks {len(missing)} IDs of the table (e.g. "
                            f"{missing.iloc[0]!r}): stage 2 needs a stage-1 run over every fold "
                            "of this dataset (not a quick `folds=[0]` run); rerun stage 1, or "
                            "pick complete runs with features.stage1.runs=[...]")
    return frame.set_index(id_col).reindex(ids.to_numpy()).reset_index(drop=True)


def derived_motion(pred: np.ndarray, spec: DatasetSpec) -> dict[str, np.ndarray]:
    """Per-axis velocities (from the origin, then between horizons) and accelerations."""
    horizons = np.asarray(spec.horizons_s)
    pos = pred.reshape(len(pred), spec.n_horizons, len(spec.axes))  # horizon-major targets
    start = np.concatenate([[0.0], horizons[:-1]])
    vel = (pos - np.concatenate([np.zeros_like(pos[:, :1]), pos[:, :-1]], axis=1)) / (
        horizons - start)[None, :, None]
    mid = (horizons + start) / 2
    acc = np.diff(vel, axis=1) / np.diff(mid)[None, :, None]
    out = {}
    for i, axis in enumerate(spec.axes):
        out |= {f"dv{axis}_{k}": vel[:, k, i] for k in range(vel.shape[1])}
        out |= {f"da{axis}_{k}": acc[:, k, i] for k in range(acc.shape[1])}
    return out


def run_predictions(run: RunResult, ctx: BuildContext
                    ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A run's oof/test tables as written, and aligned to the tables' rows (checked: every ID
    once, the targets present, the folds of folds.csv)."""
    spec = ctx.spec
    id_col = spec.id_column
    oof, test = run.oof(), run.test()
    missing = [c for c in spec.target_columns if c not in oof.columns or c not in test.columns]
    if missing:
        raise ArtifactError(f"{run.dir}: oof/test.parquet lack the prediction columns {missing}")
    train_ids = ctx.train[id_col]
    oof_rows = _aligned(oof, train_ids, id_col, f"{run.dir}/oof.parquet")
    if ctx.folds is not None and not np.array_equal(
            oof_rows["fold"].to_numpy(int), ctx.folds.fold_of(train_ids)):
        raise ArtifactError(f"{run.dir}/oof.parquet assigns folds that differ from folds.csv")
    test_rows = _aligned(test, ctx.test[id_col], id_col, f"{run.dir}/test.parquet")
    return oof, test, oof_rows, test_rows


def run_features(run: RunResult, ctx: BuildContext, prefix: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features of one stage-1 run for (train, test), rows in the tables' order."""
    spec, cfg = ctx.spec, ctx.cfg.features.stage1
    id_col = spec.id_column
    oof, test, oof_rows, test_rows = run_predictions(run, ctx)
    train_ids, test_ids = ctx.train[id_col], ctx.test[id_col]
    columns = [c for c in oof.columns if c not in (id_col, "fold") and c in test.columns]
    if not cfg.aux:
        columns = list(spec.target_columns)
    parts = []
    for rows, ids in ((oof_rows, train_ids), (test_rows, test_ids)):
        values = {c: rows[c].to_numpy(float) for c in columns}
        if cfg.derived:
            values |= derived_motion(rows[spec.target_columns].to_numpy(float), spec)
        frame = pd.DataFrame({f"{prefix}{k}": v for k, v in values.items()})
        parts.append(pd.concat([pd.DataFrame({id_col: ids.to_numpy()}), frame], axis=1))
    return parts[0], parts[1]


def stage1_baseline(ctx: BuildContext) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) mean over the selected stage-1 runs of their target predictions, rows in the
    tables' order: OOF for train rows, fold-mean for test (`stage2.target_baseline: stage1`)."""
    spec = ctx.spec
    sums = [np.zeros((len(ctx.train), len(spec.target_columns))),
            np.zeros((len(ctx.test), len(spec.target_columns)))]
    runs = stage1_runs(ctx)
    for run in runs:
        # Only the aligned predictions: no derived features or embedding PCA to rebuild.
        *_, train, test = run_predictions(run, ctx)
        for total, frame in zip(sums, (train, test), strict=True):
            total += frame[spec.target_columns].to_numpy(float)
    return sums[0] / len(runs), sums[1] / len(runs)


def stage1_features(ctx: BuildContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features of every selected stage-1 run, side by side (prefix s1_, or s1_<run>_ for several)."""
    runs = stage1_runs(ctx)
    id_col = ctx.spec.id_column
    train, test = ctx.train[[id_col]].copy(), ctx.test[[id_col]].copy()
    for run in runs:
        prefix = "s1_" if len(runs) == 1 else f"s1_{Path(run.dir).name}_"
        tr, te = run_features(run, ctx, prefix)
        train = pd.concat([train, tr.drop(columns=id_col)], axis=1)
        test = pd.concat([test, te.drop(columns=id_col)], axis=1)
    return train, test


register_builder(
    "stage1",
    config_of=lambda cfg: cfg.features.stage1.model_dump(mode="json"),
    extra_inputs=stage1_inputs,
    reads_frames=True,
)(stage1_features)
