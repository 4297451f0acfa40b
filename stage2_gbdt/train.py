"""`trajstack stage2`: one GBDT per target per fold on the feature table, for each learner.

Reads top to bottom: config -> folds -> tables and features (stage-1 artifacts included) ->
per learner: params, cross-validation, artifacts. Each learner writes its own run folder
`outputs/<exp>/stage2/<learner>/` (config.yaml, meta.json, oof.parquet, test.parquet,
importance.csv, importance.png, log.txt), skipped on rerun when config and inputs match.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from features.base import BuildContext
from features.build import FeatureTable, build_features, table_hash
from features.stage1 import stage1_baseline
from stage2_gbdt.cv import CVResult, cross_validate
from stage2_gbdt.importance import importance_table, write_importance
from stage2_gbdt.learners import LEARNERS
from stage2_gbdt.params import STAGE, learner_params, run_config, target_columns, target_params
from stage2_gbdt.resume import FitStore
from stage2_gbdt.without_stage1 import (
    WITHOUT_KEY,
    config_without,
    resolve_left_out,
    stage1_run_names,
    without_run_name,
)
from trajstack.artifacts import OOF_FILE, TEST_FILE, ArtifactStore
from trajstack.config import Config, ConfigError, validate_config
from trajstack.folds import Folds, ensure_folds
from trajstack.logs import get_logger
from trajstack.metrics import mae_report
from trajstack.physics import per_metre_scale, physics_baseline
from trajstack.resources import ProcessTreeMonitor
from trajstack.tables import read_table

Log = Callable[[str], None]
logger = get_logger(__name__)


@dataclass
class Stage2Data:
    """Everything the learners share: folds, features, labels, optional residual baselines."""

    cfg: Config
    folds: Folds
    features: FeatureTable
    labels: pd.DataFrame  # ID + target columns, train-table order
    baseline_train: np.ndarray | None = None
    baseline_test: np.ndarray | None = None
    scale_train: np.ndarray | None = None  # `stage2.per_metre_axes` divisors (None: unscaled)
    scale_test: np.ndarray | None = None


def parse_learners(values: list[str] | None, cfg: Config) -> list[str]:
    """Learner keys from `--learner` (repeatable, or comma lists), else `stage2.learners`."""
    raw = [k for v in values for k in v.split(",")] if values else list(cfg.stage2.learners)
    keys = list(dict.fromkeys(k.strip() for k in raw if k.strip()))
    LEARNERS.check(keys)
    return keys


def prepare(cfg: Config, log: Log = logger.info) -> Stage2Data:
    """Folds, typed tables, feature table and the baselines of `stage2.target_baseline`."""
    spec = cfg.dataset
    folds = ensure_folds(cfg)
    train = read_table(cfg.data_dir, spec, "train")
    test = read_table(cfg.data_dir, spec, "test")
    features = build_features(cfg, folds, train, test, log=log)
    labels = train[[spec.id_column, *spec.target_columns]]
    data = Stage2Data(cfg, folds, features, labels)
    baseline = target_baseline(cfg)
    if baseline == "physics":
        data.baseline_train = physics_baseline(train, spec, cfg.features.physics)
        data.baseline_test = physics_baseline(test, spec, cfg.features.physics)
    elif baseline == "stage1":
        if not cfg.features.uses_stage1:
            raise ConfigError("stage2.target_baseline=stage1 needs the stage-1 predictions, but "
                              "features.stage1 is off: set stage2.target_baseline=physics (or none) "
                              "for a stage 2 without stage 1")
        # The same runs, folds and checks as the stage-1 features (so the feature hash covers them).
        data.baseline_train, data.baseline_test = stage1_baseline(BuildContext(cfg, train, test, folds=folds))
    if cfg.stage2.per_metre_axes:
        data.scale_train, data.scale_test = (
            per_metre_scale(table, spec, cfg.features.physics, cfg.stage2.per_metre_axes)
            for table in (train, test))
    return data


def target_baseline(cfg: Config) -> str:
    """`stage2.target_baseline` with `auto` resolved: stage1 when its features are on, else physics."""
    if cfg.stage2.target_baseline == "auto":
        return "stage1" if cfg.features.uses_stage1 else "physics"
    return cfg.stage2.target_baseline


def fit_learner(data: Stage2Data, key: str, params: dict, resume: FitStore | None = None,
                targets: list[str] | None = None) -> CVResult:
    """Cross-validate learner `key` with `params` on the prepared data (resuming from `resume`).

    `targets` fits only those target columns (the result's columns, in that order), as a
    benchmark does to time a slow learner on part of the work; None: every target.
    """
    cfg, s2 = data.cfg, data.cfg.stage2
    ft = data.features
    names = list(cfg.dataset.target_columns)
    chosen = names if targets is None else list(targets)
    unknown = [t for t in chosen if t not in names]
    if unknown or not chosen:
        raise ConfigError(f"stage 2 targets {unknown or chosen} are not target columns of the "
                          f"dataset spec; valid: {', '.join(names)}")
    cols = [names.index(t) for t in chosen]

    def subset(baseline: np.ndarray | None) -> np.ndarray | None:
        return None if baseline is None else np.asarray(baseline)[:, cols]

    return cross_validate(
        key, params, ft.train[ft.feature_columns], data.labels[chosen].to_numpy(float),
        ft.test[ft.feature_columns], data.folds.fold_of(ft.train[ft.id_column]),
        target_names=chosen, baseline_train=subset(data.baseline_train),
        baseline_test=subset(data.baseline_test), scale_train=subset(data.scale_train),
        scale_test=subset(data.scale_test),
        groups=data.folds.scene_of(ft.train[ft.id_column]),
        early_stopping_rounds=s2.early_stopping_rounds, stop_fraction=s2.stop_fraction,
        refit=s2.refit, seed=cfg.seed, seeds=s2.seeds, n_jobs=s2.n_jobs, threads_per_fit=s2.threads_per_fit, device=s2.device,
        executor=s2.executor, ray_address=s2.ray_address, resume=resume,
        target_params=target_params(cfg, key, chosen),
        target_columns=target_columns(cfg, key, chosen, ft.feature_columns),
    )


def prediction_frames(data: Stage2Data, result: CVResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(oof, test) frames as the blend reads them: ID[, fold], targets; sorted by ID."""
    spec, ft = data.cfg.dataset, data.features
    id_col, targets = spec.id_column, spec.target_columns
    ids = ft.train[id_col]
    oof = pd.concat([pd.DataFrame({id_col: ids.to_numpy(), "fold": data.folds.fold_of(ids)}),
                     pd.DataFrame(result.oof, columns=targets)], axis=1)
    test = pd.concat([ft.test[[id_col]].reset_index(drop=True),
                      pd.DataFrame(result.test, columns=targets)], axis=1)
    return (oof.sort_values(id_col, ignore_index=True), test.sort_values(id_col, ignore_index=True))


def train_learner(data: Stage2Data, key: str, force: bool = False, log: Log = logger.info,
                  without_stage1: str | None = None, variant: str | None = None) -> Path:
    """Run (or skip, when done with the same config and inputs) learner `key`; its run folder.

    With `without_stage1` (a stage-1 run name, `data` prepared from `config_without`), the run
    is `<key>-without-<name>`, marked so that the blend leaves it out unless named. With
    `variant` (a key of `stage2.variants`, `data` prepared from `config_of_variant`), the run
    is `stage2/<variant>/`, with the variant's params on top of the learner's.
    """
    cfg = data.cfg
    spec = cfg.dataset
    params = learner_params(cfg, key)
    stage, name, extra = STAGE, key, {}
    if variant is not None:
        params = {**params, **cfg.stage2.variants[variant].params}
        name, extra = variant, {VARIANT_KEY: variant}
        stage = replace(STAGE, rebuild="trajstack stage2")
    if without_stage1 is not None:
        name = without_run_name(key, without_stage1)
        stage = replace(STAGE, rebuild=f"trajstack stage2 --learner {key} --without-stage1 {without_stage1}")
        extra = {WITHOUT_KEY: without_stage1}
    run = ArtifactStore(cfg.experiment_dir).run(
        stage, name, run_config(cfg, key, params, variant),
        inputs={"features": data.features.hash, "labels": table_hash(data.labels),
                **data.features.upstream},
        fold_hash=data.folds.hash)
    if run.is_done() and not force:
        log(f"stage2 {name}: done already ({run.dir}); --force to refit")
        return run.dir
    previous = run.read_meta()
    if (not force and previous and previous.get("status") == "done"
            and previous.get("config_hash") == run.config_hash):
        log(f"stage2 {name}: its inputs changed since {run.dir} was made; refitting")
    run.begin(force=force)
    ft = data.features
    run.log(f"{key}: {len(ft.feature_columns)} features, {len(ft.train)} train / {len(ft.test)} "
            f"test rows, {data.folds.n_splits} folds, target baseline "
            f"{target_baseline(cfg)} (stage2.target_baseline={cfg.stage2.target_baseline})")
    kept = target_columns(cfg, key, list(spec.target_columns), ft.feature_columns)
    if kept is not None:
        seen = {f"{a}: {len(ft.feature_columns) if k is None else len(k)}"
                for a, k in zip(spec.target_axes, kept, strict=True)}
        run.log(f"{key}: columns seen per axis (stage2.axis_drop_columns) {', '.join(sorted(seen))}")
    fits = FitStore(run.path("fits"), run.signature)  # an interrupted run keeps its finished fits
    if force:
        fits.clear()
    with ProcessTreeMonitor() as monitor:  # the fits run in worker processes
        result = fit_learner(data, key, params, resume=fits)
    oof, test = prediction_frames(data, result)
    run.write_parquet(OOF_FILE, oof)
    run.write_parquet(TEST_FILE, test)
    write_importance(importance_table(result.importance), run.dir, f"stage 2 {key}: top features",
                     top=cfg.stage2.importance_top)
    labelled = data.labels.set_index(spec.id_column).loc[oof[spec.id_column]]
    complete = labelled.notna().all(axis=1).to_numpy()
    scores = mae_report(labelled[complete], oof[complete], spec) | {
        "per_fold": result.scores["per_fold"],
        "best_iteration_mean": float(np.nanmean(result.best_iterations.to_numpy(float))),
        "n_features": len(ft.feature_columns)}
    run.log(f"{key}: CV MAE {scores['mae']:.5f}")
    # CPU-s of the fits (worker processes included; fits resumed from `fits` cost nothing): a
    # shared machine makes wall time noisy, CPU time is the steadier cost figure.
    cpu_s = None if monitor.cpu_s is None else round(monitor.cpu_s, 1)
    run.finish(scores=scores, learner=key, cpu_s=cpu_s, **extra)
    log(f"stage2 {name}: CV MAE {scores['mae']:.5f} -> {run.dir}")
    return run.dir


def main(argv: list[str] | None = None) -> int:
    """`trajstack stage2 [--learner KEY ...] [--force]`."""
    from trajstack.cli import common_parser, config_from_args

    parser = common_parser("stage2", "fit one GBDT per target per fold on the feature table")
    parser.add_argument("--learner", action="append", metavar="KEY",
                        help=f"learner key(s), repeatable or comma-separated: "
                             f"{', '.join(LEARNERS.keys())} (default: stage2.learners)")
    parser.add_argument("--force", action="store_true",
                        help="refit even when a finished run matches (older runs are moved aside)")
    parser.add_argument("--without-stage1", action="append", metavar="RUN",
                        help="instead, fit the learners without stage-1 run RUN's features "
                             "(repeatable; `all`: each stage-1 run in turn), into "
                             "stage2/<learner>-without-<RUN>/ for the report's stage-1 value table")
    # Overrides may come before and after options (the Makefile puts ARGS before --learner).
    args = parser.parse_intermixed_args(argv)
    cfg = config_from_args(args)
    keys = parse_learners(args.learner, cfg)
    if args.without_stage1:
        for left_out in resolve_left_out(args.without_stage1, cfg):
            data = prepare(config_without(cfg, left_out))
            for key in keys:
                train_learner(data, key, force=args.force, without_stage1=left_out)
        return 0
    data = prepare(cfg)
    for key in keys:
        train_learner(data, key, force=args.force)
    train_without_stage1(cfg, keys, force=args.force)
    train_variants(cfg, keys, force=args.force)
    return 0


# meta.json key of a `stage2.variants` run (its value: the variant's name).
VARIANT_KEY = "variant"


def config_of_variant(cfg: Config, name: str) -> Config:
    """`cfg` as variant `name` of `stage2.variants` fits: its per-metre axes, stage 1 off if
    it is fitted without stage 1."""
    variant = cfg.stage2.variants[name]
    raw = cfg.to_dict()
    if variant.per_metre_axes is not None:
        raw["stage2"]["per_metre_axes"] = list(variant.per_metre_axes)
    if variant.without_stage1:
        raw["features"]["stage1"].update(runs=None, enabled=False)
    return validate_config(raw)


def train_variants(cfg: Config, keys: list[str], force: bool = False) -> list[Path]:
    """Fit the `stage2.variants` whose learner is among `keys`; their run folders."""
    LEARNERS.check([v.learner for v in cfg.stage2.variants.values()])
    clash = [n for n in cfg.stage2.variants if n in LEARNERS]
    if clash:
        raise ConfigError(f"stage2.variants {clash} are named like learners, whose run folders "
                          "they would overwrite; give them other names")
    dirs = []
    for name, variant in cfg.stage2.variants.items():
        if variant.learner in keys:
            data = prepare(config_of_variant(cfg, name))
            dirs.append(train_learner(data, variant.learner, force=force, variant=name))
    return dirs


def train_without_stage1(cfg: Config, keys: list[str], force: bool = False) -> list[Path]:
    """Fit the learners of `keys` named in `stage2.without_stage1` without each stage-1 run in
    turn (blend inputs, see Stage2Config.without_stage1); their run folders."""
    LEARNERS.check(cfg.stage2.without_stage1)
    wanted = [k for k in keys if k in cfg.stage2.without_stage1]
    if not wanted or not stage1_run_names(cfg):
        return []
    dirs = []
    for left_out in resolve_left_out(["all"], cfg):
        data = prepare(config_without(cfg, left_out))
        dirs += [train_learner(data, key, force=force, without_stage1=left_out) for key in wanted]
    return dirs


if __name__ == "__main__":
    from trajstack.cli import main as cli_main

    sys.exit(cli_main(["stage2", *sys.argv[1:]]))
