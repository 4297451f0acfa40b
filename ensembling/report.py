"""`trajstack report`: outputs/<exp>/report/index.html with the experiment's figures.

Gathers, through the artifact store only: every run's OOF (scored against the labels here,
so all models are compared on the same rows), the blend's weights and nested OOF, stage-1
learning curves (fold<k>/metrics.jsonl) and stage-2 importances (importance.csv). A test score
from a simulator's oracle is shown when the caller passes it (never computed from it here
except in `main`, after the blend is final).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ensembling import plots
from ensembling.inputs import BLEND_STAGE, BlendInputs, load_inputs
from ensembling.overlays import plot_overlays
from ensembling.report_html import Section, render, score_table
from ensembling.stage1_value import COMMAND as STAGE1_VALUE_COMMAND
from ensembling.stage1_value import stage1_values, value_table_rows
from stage2_gbdt.without_stage1 import WITHOUT_KEY
from trajstack.artifacts import ArtifactStore, RunResult
from trajstack.config import Config
from trajstack.folds import Folds, ensure_folds
from trajstack.io import data_hash, read_json, write_json_atomic, write_text_atomic
from trajstack.logs import get_logger
from trajstack.metrics import mae_report
from trajstack.tables import read_table

logger = get_logger(__name__)

REPORT_DIR = "report"
REPORT_VERSION = 2  # bump when the report's content changes, so finished reports are redone


def finished_blend(cfg: Config) -> RunResult | None:
    """The configured blend run (outputs/<exp>/blend/<name>/) when it has finished."""
    run_dir = cfg.experiment_dir / BLEND_STAGE / cfg.blend.run_name
    meta = run_dir / "meta.json"
    if not meta.exists() or read_json(meta).get("status") != "done":
        return None
    return ArtifactStore(cfg.experiment_dir).load(run_dir)


def build_report(cfg: Config, test_score: dict[str, Any] | None = None, force: bool = False) -> Path:
    """Write the report and return the path of index.html; skipped when nothing changed."""
    out = cfg.experiment_dir / REPORT_DIR
    folds = ensure_folds(cfg)
    store = ArtifactStore(cfg.experiment_dir)
    inputs = load_inputs(cfg, store, folds)
    blend = finished_blend(cfg)
    without = [r.meta.get("signature") for r in store.finished_runs() if WITHOUT_KEY in r.meta]
    signature = data_hash({
        "version": REPORT_VERSION, "report": cfg.report.model_dump(mode="json"),
        "runs": [r.meta.get("signature") for r in inputs.runs], "without_stage1": without,
        "blend": blend.meta.get("signature") if blend else None,
        "test": test_score and test_score.get("mae"),
    })
    index = out / "index.html"
    if not force and index.exists() and (out / "signature.json").exists() \
            and read_json(out / "signature.json").get("signature") == signature:
        logger.info(f"report: {index} is up to date")
        return index
    out.mkdir(parents=True, exist_ok=True)
    sections = _sections(cfg, inputs, blend, test_score, out)
    sections.insert(2 if blend is not None else 1, _stage1_value_section(cfg, folds))
    subtitle = (f"experiment {cfg.experiment} · data {cfg.data_dir} · {len(inputs.y)} train rows · "
                f"{len(np.unique(inputs.fold))} folds · written {dt.datetime.now():%Y-%m-%d %H:%M}")
    write_text_atomic(index, render(f"trajstack report: {cfg.experiment}", subtitle, sections))
    write_json_atomic(out / "signature.json", {"signature": signature})
    logger.info(f"report: {index}")
    return index


# ----------------------------------------------------------------------------- sections


def _sections(cfg: Config, inputs: BlendInputs, blend: RunResult | None,
              test_score: dict[str, Any] | None, out: Path) -> list[Section]:
    spec = cfg.dataset
    reports = {name: mae_report(inputs.y, inputs.oof[i], spec) for i, name in enumerate(inputs.names)}
    blend_oof = None
    if blend is not None:
        table = blend.oof().set_index(spec.id_column).loc[inputs.train_ids]
        blend_oof = table[spec.target_columns].to_numpy(float)
        reports[f"{blend.name} (nested)"] = mae_report(inputs.y, blend_oof, spec)
        reports[f"{blend.name} (in-sample)"] = blend.meta["scores"]["in_sample_mae_report"]
    sections = [_scores_section(reports, blend, test_score, out)]
    if blend is not None:
        sections.append(_weights_section(blend, out))
    sections.append(_curves_section(inputs.runs, out))
    sections.append(_importance_section(inputs.runs, cfg.report.top_features, out))
    # The errors and overlays are of the blend's honest OOF, or of the best single model.
    best = min(range(len(inputs.names)), key=lambda i: reports[inputs.names[i]]["mae"])
    focus_name, focus = ((f"{blend.name} (nested)", blend_oof) if blend_oof is not None
                         else (inputs.names[best], inputs.oof[best]))
    sections.append(_error_section(cfg, inputs, focus_name, focus, best, out))
    sections.append(_overlay_section(cfg, inputs, focus_name, focus, out))
    return sections


def _scores_section(reports: dict[str, dict[str, Any]], blend: RunResult | None,
                    test_score: dict[str, Any] | None, out: Path) -> Section:
    section = Section("Scores")
    section.paragraphs.append(
        "MAE on out-of-fold predictions against the train labels, all models on the same rows. "
        "The blend's nested score fits weights on K-1 folds and scores the held-out fold; the "
        "in-sample score fits and scores on the same rows and is optimistic.")
    highlight = {n for n in reports if n.startswith(f"{BLEND_STAGE}/")}
    maes = {n: r["mae"] for n, r in reports.items()}
    floor = None
    if test_score is not None:
        floor = test_score.get("floor_mae")
        test_name = f"{blend.name if blend else 'submission'} (test)"
        reports = {**reports, test_name: test_score["mae_report"]}
        maes[test_name] = test_score["mae"]
        highlight.add(test_name)
        ratio = test_score.get("ratio_to_floor")
        section.paragraphs.append(
            f"Test MAE {test_score['mae']:.4f}" + (f", {ratio:.3f} x the oracle floor "
                                                   f"{floor:.4f}" if ratio else "")
            + " (the data source's oracle, quoted only: nothing was fit or chosen on it).")
    section.tables.append(score_table(reports, highlight))
    section.figures += [
        (plots.plot_mae_by_model(maes, out / "mae_by_model.png", floor).name, "MAE per model"),
        (plots.plot_mae_breakdown(reports, "per_axis", out / "mae_per_axis.png", "axis").name,
         "MAE per axis"),
        (plots.plot_mae_breakdown(reports, "per_horizon", out / "mae_per_horizon.png",
                                  "horizon (s ahead)").name, "MAE per horizon"),
    ]
    return section


def _stage1_value_section(cfg: Config, folds: Folds) -> Section:
    section = Section("Stage-1 runs after stacking")
    values = stage1_values(cfg, folds)
    if not values:
        section.paragraphs.append("Stage 2 reads no stage-1 run (features.stage1 is off or none "
                                  "has finished).")
        return section
    section.paragraphs.append(
        "Each stage-1 run's CV MAE alone, then stage 2 and the blend with all stage-1 runs and "
        "without this one (its features and its predictions left out; gain = without - with, "
        "positive: the run helps). Blends are refit here, nested, on the same learners on both "
        "sides. Choose stage-1 runs by the stacked gain, not by their CV alone.")
    if not any(v.stage2_without for v in values):
        section.paragraphs.append(
            f"No stage-2 run without a stage-1 run yet: `{STAGE1_VALUE_COMMAND}` (make "
            "stage1-value) fits them (one stage 2 per stage-1 run; --learner KEY for fewer).")
    header, rows = value_table_rows(values)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    section.tables.append(f"<table><tr>{head}</tr>{body}</table>")
    return section


def _weights_section(blend: RunResult, out: Path) -> Section:
    weights = read_json(blend.dir / "weights.json")
    section = Section(f"Blend weights ({weights['optimizer']})")
    section.paragraphs.append("Final weights, fit on all OOF rows and applied to the test "
                              "predictions; each target's weights are >= 0 and sum to 1.")
    segments = blend.meta["scores"].get("segments")
    if segments:
        detail = "; ".join(
            f"{label}: nested MAE {segments['nested_mae_segment'][label]:.4f} with its own weights "
            f"vs {segments['nested_mae_global'][label]:.4f} with the global ones"
            for label in sorted(segments["nested_mae_global"]))
        section.paragraphs.append(
            f"Segments by {segments['by']}: {detail}. Own weights kept for "
            f"{', '.join(segments['kept']) or 'no segment'} (the heat-map shows the global weights).")
    if (blend.dir / "weights.png").exists():
        shutil.copyfile(blend.dir / "weights.png", out / "blend_weights.png")
        section.figures.append(("blend_weights.png", "blend weights per model and target"))
    return section


def _curves_section(runs: list[RunResult], out: Path) -> Section:
    section = Section("Stage-1 learning curves")
    for run in runs:
        curves = {}
        for path in sorted(run.dir.glob("fold*/metrics.jsonl")):
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            table = pd.DataFrame(rows)
            if not table.empty:
                if "epoch" not in table:
                    table["epoch"] = np.arange(len(table))
                curves[int(path.parent.name.removeprefix("fold"))] = table
        if curves:
            file = f"curves_{_slug(run.name)}.png"
            plots.plot_learning_curves(run.name, curves, out / file)
            section.figures.append((file, f"{run.name}: per-fold train loss and validation MAE"))
    if not section.figures:
        section.paragraphs.append("No run has fold<k>/metrics.jsonl.")
    return section


def _importance_section(runs: list[RunResult], top: int, out: Path) -> Section:
    section = Section("Stage-2 top features")
    for run in runs:
        path = run.dir / "importance.csv"
        if not path.exists():
            continue
        importance = aggregate_importance(pd.read_csv(path))
        if importance is None:
            section.paragraphs.append(f"{run.name}: importance.csv has no feature/value columns.")
            continue
        file = f"importance_{_slug(run.name)}.png"
        plots.plot_top_features(run.name, importance.head(top), out / file)
        section.figures.append((file, f"{run.name}: top {min(top, len(importance))} features"))
    if not section.figures and not section.paragraphs:
        section.paragraphs.append("No run has importance.csv.")
    return section


def aggregate_importance(table: pd.DataFrame) -> pd.Series | None:
    """Feature -> share of total importance, descending, from a long or wide importance table.

    Long tables (a `feature` column plus a value column such as `importance` or `gain`, one
    row per feature x target x fold) are averaged per feature; wide ones (a feature column and
    one numeric column per target or fold) are averaged across columns.
    """
    text = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    feature = "feature" if "feature" in table else (text[0] if text else None)
    if feature is None:
        return None
    numeric = [c for c in table.select_dtypes("number").columns if c not in ("fold", "seed")]
    preferred = [c for c in ("importance", "gain", "value", "split") if c in numeric]
    values = table[preferred[0]] if preferred else table[numeric].mean(axis=1) if numeric else None
    if values is None:
        return None
    per_feature = values.groupby(table[feature]).mean().abs()
    total = per_feature.sum()
    return (per_feature / total if total > 0 else per_feature).sort_values(ascending=False)


def _error_section(cfg: Config, inputs: BlendInputs, focus_name: str, focus: np.ndarray,
                   best: int, out: Path) -> Section:
    section = Section("OOF error against speed and steering")
    train = read_table(cfg.data_dir, cfg.dataset, "train")
    errors = {focus_name: np.abs(focus - inputs.y).mean(axis=1)}
    if not focus_name.startswith(inputs.names[best]):
        errors[inputs.names[best]] = np.abs(inputs.oof[best] - inputs.y).mean(axis=1)
    for key in ("speed_column", "steering_column"):
        column = getattr(cfg.report, key)
        if column not in train:
            section.paragraphs.append(f"report.{key}={column!r} is not a train column; skipped.")
            continue
        file = f"error_vs_{_slug(column)}.png"
        plots.plot_error_vs(train[column].to_numpy(float), errors, cfg.report.error_bins,
                            column, out / file)
        section.figures.append(
            (file, f"mean row MAE per bin of {column} (bins span its 1st to 99th percentile)"))
    return section


def _overlay_section(cfg: Config, inputs: BlendInputs, focus_name: str, focus: np.ndarray,
                     out: Path) -> Section:
    section = Section("Trajectory overlays")
    n = cfg.report.overlay_rows
    if cfg.dataset.camera is None or n == 0:
        section.paragraphs.append("No overlays (dataset.camera unset or report.overlay_rows=0).")
        return section
    if cfg.dataset.frames_folder(cfg.data_dir) is None:
        section.paragraphs.append("No overlays: a telemetry-only dataset (no frames folder, or "
                                  "dataset.images_dir is null).")
        return section
    section.paragraphs.append(
        f"{focus_name}: true (green) and predicted (red) future positions projected onto frame t "
        "through the camera matrix, with the same paths seen from above.")
    row_mae = np.abs(focus - inputs.y).mean(axis=1)
    order = np.argsort(row_mae, kind="stable")
    rest = order[n:len(order) - n] if len(order) > 2 * n else order
    rng = np.random.default_rng(cfg.report.seed)
    picks = {"best": order[:n], "worst": order[::-1][:n],
             "random": rng.choice(rest, size=min(n, len(rest)), replace=False)}
    for label, idx in picks.items():
        rows = [{"id": inputs.train_ids[i], "true": inputs.y[i], "pred": focus[i],
                 "mae": row_mae[i]} for i in idx]
        file = f"overlay_{label}.png"
        plot_overlays(rows, cfg.dataset, cfg.data_dir, f"{label} validation rows ({focus_name})",
                      out / file, ego_axes=cfg.report.ego_axes)
        section.figures.append((file, f"{label} {len(rows)} validation rows by row MAE"))
    return section


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def main(argv: list[str] | None = None) -> int:
    """`trajstack report [--config C] [--data D] [--exp E] [--force] [key=value ...]`."""
    from ensembling.oracle import test_score
    from trajstack.cli import common_parser, config_from_args

    parser = common_parser("report", "write outputs/<exp>/report/index.html")
    parser.add_argument("--force", action="store_true", help="rewrite even when up to date")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    blend = finished_blend(cfg)
    score = None
    if blend is not None:  # the oracle is quoted for the finished blend only
        test = blend.test()
        ids = read_table(cfg.data_dir, cfg.dataset, "test")[cfg.dataset.id_column].to_numpy(str)
        predictions = test.set_index(cfg.dataset.id_column).loc[ids, cfg.dataset.target_columns]
        score = test_score(cfg.data_dir, ids, predictions.to_numpy(float), cfg.dataset)
    build_report(cfg, test_score=score, force=args.force)
    return 0
