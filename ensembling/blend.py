"""`trajstack blend`: optimise blend weights on every run's OOF and write the submission.

Reads top to bottom: config -> folds -> input runs -> fit (final + nested) -> artifacts ->
submission -> report -> tracking -> summary. A finished blend with the same config and inputs
is not refit; its submission, report and summary are simply refreshed from its artifacts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ensembling.config import BlendConfig
from ensembling.fitting import BlendFit, fit_blend
from ensembling.inputs import BLEND, BlendInputs, load_inputs
from ensembling.optimizers import OPTIMIZERS
from ensembling.segments import SEGMENTERS, segment_labels
from ensembling.submission import check_submission, write_submission
from trajstack.artifacts import OOF_FILE, TEST_FILE, ArtifactStore, Run
from trajstack.config import Config, ConfigError
from trajstack.folds import ensure_folds
from trajstack.io import file_hash
from trajstack.logs import get_logger
from trajstack.metrics import mae_report
from trajstack.tables import table_path

logger = get_logger(__name__)


def optimizer_params(blend: BlendConfig) -> dict[str, Any]:
    """Parameters of the chosen optimiser: the `blend.<optimizer>` section when there is one."""
    section = getattr(blend, blend.optimizer, None)
    return section.model_dump() if hasattr(section, "model_dump") else {}


def blend_run(cfg: Config, inputs: BlendInputs, fold_hash: str) -> Run:
    """The artifact-store run of this blend (outputs/<exp>/blend/<name>/)."""
    spec = cfg.dataset
    # Each input run by the digest of its outputs: a rerun writing the same bytes changes nothing.
    signature_inputs = {r.input_key: r.output_digest for r in inputs.runs}
    signature_inputs["train"] = file_hash(table_path(cfg.data_dir, spec, "train"))
    signature_inputs["test"] = file_hash(table_path(cfg.data_dir, spec, "test"))
    config = BLEND.run_config(cfg.to_dict())
    return ArtifactStore(cfg.experiment_dir).run(BLEND, cfg.blend.run_name, config,
                                                 signature_inputs, fold_hash)


def run_blend(cfg: Config, force: bool = False) -> tuple[Run, BlendInputs]:
    """Fit and write the blend unless an identical one is finished; return its run and inputs."""
    if cfg.blend.optimizer not in OPTIMIZERS:
        raise ConfigError(f"blend.optimizer={cfg.blend.optimizer!r} is not a blend optimiser; "
                          f"choose one of {sorted(OPTIMIZERS)}")
    folds = ensure_folds(cfg)
    inputs = load_inputs(cfg, ArtifactStore(cfg.experiment_dir), folds)
    run = blend_run(cfg, inputs, folds.hash)
    if run.is_done() and not force:
        logger.info(f"blend: {run.dir} is up to date ({len(inputs.names)} runs); not refit")
        return run, inputs
    previous = run.read_meta()
    if previous is not None and previous.get("status") == "done":
        # A blend is cheap and derived only from its inputs: when they change (a learner
        # added, a stage rerun) refit at once; the old blend is moved aside, never deleted.
        logger.info(f"blend: inputs or config changed since {run.dir} was made; moving it aside "
              "and refitting")
    run.begin(force=True)
    logger.info(f"blend: fitting '{cfg.blend.optimizer}' weights on {len(inputs.names)} runs: "
                f"{', '.join(inputs.names)}")
    segment, segment_test = blend_segments(cfg, inputs)
    fit = fit_blend(inputs.oof, inputs.y, inputs.fold, inputs.test, cfg.blend.optimizer,
                    optimizer_params(cfg.blend), nested=cfg.blend.nested, segment=segment,
                    segment_test=segment_test, min_segment_rows=cfg.blend.segments.min_rows)
    scores = write_blend_artifacts(run, cfg, inputs, fit)
    run.finish(scores=scores)
    return run, inputs


def blend_segments(cfg: Config, inputs: BlendInputs) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Segment label of every train and test row by `blend.segments` (None, None when off)."""
    seg = cfg.blend.segments
    if seg.by is None:
        return None, None
    if seg.by not in SEGMENTERS:
        raise ConfigError(f"blend.segments.by={seg.by!r} is not a segmentation; choose one of "
                          f"{SEGMENTERS.keys()} or null")
    return (segment_labels(seg.by, inputs.train_ids, cfg.dataset, seg.edges),
            segment_labels(seg.by, inputs.test_ids, cfg.dataset, seg.edges))


def write_blend_artifacts(run: Run, cfg: Config, inputs: BlendInputs, fit: BlendFit) -> dict[str, Any]:
    """Weights (JSON + heat-map), scores, OOF and test tables of the blend; returns the scores."""
    from ensembling.plots import plot_weight_heatmap

    spec = cfg.dataset
    targets = spec.target_columns
    honest = fit.oof_nested if fit.oof_nested is not None else fit.oof_in_sample
    scores = {
        "mae_report": mae_report(inputs.y, honest, spec),
        "nested": fit.oof_nested is not None,
        "in_sample_mae_report": mae_report(inputs.y, fit.oof_in_sample, spec),
        "runs": {name: mae_report(inputs.y, inputs.oof[i], spec)
                 for i, name in enumerate(inputs.names)},
    }
    if fit.segments is not None:
        choice = fit.segments
        scores["segments"] = {
            "by": cfg.blend.segments.by, "kept": sorted(k for k, v in choice.keep.items() if v),
            "nested_mae_global": choice.mae_global, "nested_mae_segment": choice.mae_segment,
            "kept_per_fold": {str(k): v for k, v in fit.fold_segments.items()}}
    run.write_json("weights.json", {
        "optimizer": cfg.blend.optimizer, "params": optimizer_params(cfg.blend),
        "models": inputs.names, "targets": targets,
        "weights": _weight_table(fit.weights, inputs.names, targets),
        "fold_weights": {str(k): _weight_table(w, inputs.names, targets)
                         for k, w in fit.fold_weights.items()},
        "segment_weights": {label: _weight_table(w, inputs.names, targets)
                            for label, w in fit.segment_weights.items()},
    })
    run.write_json("scores.json", scores)
    plot_weight_heatmap(fit.weights, inputs.names, targets, run.path("weights.png"),
                        title=f"blend weights ({cfg.blend.optimizer}, fit on all OOF)")
    oof = pd.DataFrame(honest, columns=targets)
    oof.insert(0, "fold", inputs.fold)
    oof.insert(0, spec.id_column, inputs.train_ids)
    run.write_parquet(OOF_FILE, oof)
    in_sample = pd.DataFrame(fit.oof_in_sample, columns=targets)
    in_sample.insert(0, spec.id_column, inputs.train_ids)
    run.write_parquet("oof_in_sample.parquet", in_sample)
    test = pd.DataFrame(fit.test, columns=targets)
    test.insert(0, spec.id_column, inputs.test_ids)
    run.write_parquet(TEST_FILE, test)
    return scores


def _weight_table(weights: np.ndarray, names: list[str], targets: list[str]) -> dict[str, dict[str, float]]:
    return {name: {t: round(float(w), 6) for t, w in zip(targets, row, strict=True)}
            for name, row in zip(names, weights, strict=True)}


def write_blend_submission(cfg: Config, run: Run, inputs: BlendInputs) -> tuple[Any, np.ndarray]:
    """outputs/<exp>/<submission_file> from the blend's test table, checked before returning."""
    spec = cfg.dataset
    test = pd.read_parquet(run.path(TEST_FILE)).set_index(spec.id_column)
    predictions = test.loc[inputs.test_ids, spec.target_columns].to_numpy(float)
    path = write_submission(cfg.experiment_dir / cfg.blend.submission_file, predictions, spec)
    check_submission(path, cfg.data_dir, spec)
    return path, predictions


def print_summary(cfg: Config, run: Run, inputs: BlendInputs, submission: Any,
                  test_score: dict[str, Any] | None) -> None:
    """CV MAE of every run by stage and of the blend, the submission path, the oracle score."""
    scores = run.read_meta()["scores"]
    n_folds = len(np.unique(inputs.fold))
    logger.info(f"\nCV MAE (out-of-fold, {len(inputs.y)} train rows, {n_folds} folds)")
    for name in sorted(scores["runs"]):
        logger.info(f"  {name:<28} {scores['runs'][name]['mae']:.4f}")
    honest = scores["mae_report"]["mae"]
    in_sample = scores["in_sample_mae_report"]["mae"]
    label = "nested" if scores.get("nested") else "in-sample (nesting off)"
    logger.info(f"  {run.stage + '/' + run.name:<28} {honest:.4f} {label}; {in_sample:.4f} in-sample")
    logger.info(f"submission: {submission}")
    if test_score is not None:
        floor = test_score["floor_mae"]
        ratio = f" = {test_score['ratio_to_floor']:.3f} x floor {floor:.4f}" if floor else ""
        logger.info(f"test MAE (oracle): {test_score['mae']:.4f}{ratio}")


def main(argv: list[str] | None = None) -> int:
    """`trajstack blend [--config C] [--data D] [--exp E] [--force] [key=value ...]`."""
    from ensembling.oracle import test_score as oracle_test_score
    from ensembling.report import build_report
    from ensembling.tracking import log_experiment
    from trajstack.cli import common_parser, config_from_args

    parser = common_parser("blend", "optimise blend weights on OOF and write the submission")
    parser.add_argument("--force", action="store_true", help="refit even when up to date")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    run, inputs = run_blend(cfg, force=args.force)
    submission, predictions = write_blend_submission(cfg, run, inputs)
    # Read only now, after everything is fixed: the oracle is for quoting, never for choosing.
    score = oracle_test_score(cfg.data_dir, inputs.test_ids, predictions, cfg.dataset)
    if cfg.report.enabled:
        build_report(cfg, test_score=score)
    if cfg.tracking.backend != "none":
        log_experiment(cfg)
    print_summary(cfg, run, inputs, submission, score)
    return 0
