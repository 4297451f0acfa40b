"""AutoML baseline: AutoGluon on stage 2's own feature table, folds and residual target.

One `TabularPredictor` per target (`presets="best_quality"`, `time_limit` seconds each),
bagged on our folds (the fold column as AutoGluon's `groups`, so its fold children are ours
and its OOF predictions are out of the same folds), fitting the same target (label minus
stage 2's target baseline, per metre travelled on `stage2.per_metre_axes`) on the same feature
columns; the scale and the baseline are put back. Its CV
and test MAE, wall and CPU time sit beside our stage-2 runs and blend of the experiment
(read from their artifacts, which must have been made on the same feature table).

Caveat on the CV figure: AutoGluon early-stops each fold child on that child's held-out fold
and fits its weighted ensemble on all OOF rows, so its CV is slightly flattering; test MAE
(read from `<data>/oracle/`, benchmarks only) is the fair comparison.

AutoGluon is an optional extra (`pip install -e .[automl]`, best in a separate environment:
it pins older pandas); without it the benchmark says so and exits 0. With `--automl-python
PATH` (that environment's interpreter) the feature table is built here, in the project's own
environment, so its cache and hash are the ones our stage-2 runs used (the other pandas hashes
tables differently and would rebuild them), and each target's AutoGluon fit runs in a
subprocess of PATH on a parquet copy of its rows (`--fit-worker`); its CPU time is counted
with the process tree. Per-target results are
saved under `outputs/<exp>/automl/` as they finish, so an interrupted run resumes.

    python -m benchmarks.bench_automl --config configs/demo.yaml --data data/demo --exp demo \
        --automl-python /path/to/agvenv/bin/python
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.bench_pipeline import machine_info, machine_note
from benchmarks.readme_table import fmt_cell, print_and_write, ratio_cell
from ensembling.oracle import LABELS_FILE, oracle_dir
from trajstack.artifacts import OOF_FILE, TEST_FILE, ArtifactStore
from trajstack.config import Config, load_config
from trajstack.io import read_json, write_json_atomic, write_parquet_atomic
from trajstack.metrics import mae
from trajstack.resources import ProcessTreeMonitor
from trajstack.tables import read_table

MARKER = "automl"
FOLD_COLUMN = "__fold__"
LABEL_COLUMN = "__residual__"


def autogluon_available() -> bool:
    try:
        import autogluon.tabular  # noqa: F401
    except ImportError:
        return False
    return True


def fit_target(train: pd.DataFrame, test: pd.DataFrame, time_limit: float, presets: str,
               num_cpus: int, verbosity: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One bagged AutoGluon predictor on `train` (features, FOLD_COLUMN, LABEL_COLUMN).

    Returns OOF predictions (train order), test predictions and a summary (best model,
    number of models fitted).
    """
    from autogluon.tabular import TabularPredictor

    workdir = Path(tempfile.mkdtemp(prefix="automl-"))
    try:
        predictor = TabularPredictor(label=LABEL_COLUMN, problem_type="regression",
                                     eval_metric="mean_absolute_error", groups=FOLD_COLUMN,
                                     path=str(workdir), verbosity=verbosity)
        # dynamic_stacking off: its extra holdout would split our folds again.
        predictor.fit(train, presets=presets, time_limit=time_limit, num_cpus=num_cpus,
                      dynamic_stacking=False)
        oof = predictor.predict_oof().loc[train.index].to_numpy(float)
        pred = predictor.predict(test).to_numpy(float)
        board = predictor.leaderboard(silent=True)
        summary = {"best_model": str(predictor.model_best), "n_models": int(len(board))}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return oof, pred, summary


WORKER_TRAIN, WORKER_TEST, WORKER_RESULT = "train.parquet", "test.parquet", "result.json"


def fit_worker(folder: Path, time_limit: float, presets: str, num_cpus: int,
               verbosity: int = 0) -> None:
    """`fit_target` on the rows in `folder` (written by `fit_target_in`); result to
    `folder/result.json`. Runs in AutoGluon's environment."""
    train = pd.read_parquet(folder / WORKER_TRAIN)
    test = pd.read_parquet(folder / WORKER_TEST)
    oof, pred, summary = fit_target(train, test, time_limit, presets, num_cpus, verbosity)
    write_json_atomic(folder / WORKER_RESULT, {"oof": oof.tolist(), "test": pred.tolist(), **summary})


def fit_target_in(python: str, train: pd.DataFrame, test: pd.DataFrame, time_limit: float,
                  presets: str, num_cpus: int,
                  verbosity: int = 0) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """`fit_target` in a subprocess of the interpreter `python` (AutoGluon's own environment),
    handed the rows through parquet; same returns."""
    folder = Path(tempfile.mkdtemp(prefix="automl-worker-"))
    try:
        write_parquet_atomic(folder / WORKER_TRAIN, train)
        write_parquet_atomic(folder / WORKER_TEST, test)
        command = [python, "-m", "benchmarks.bench_automl", "--fit-worker", str(folder),
                   "--time-limit", str(time_limit), "--presets", presets,
                   "--num-cpus", str(num_cpus), "--verbosity", str(verbosity)]
        done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1])
        if done.returncode != 0 or not (folder / WORKER_RESULT).exists():
            raise RuntimeError(f"AutoGluon's fit in {python} failed (exit {done.returncode}); "
                               "its output is above")
        result = json.loads((folder / WORKER_RESULT).read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    oof, pred = np.asarray(result.pop("oof"), float), np.asarray(result.pop("test"), float)
    return oof, pred, result


def run_automl(cfg: Config, time_limit: float, presets: str, num_cpus: int,
               verbosity: int = 0, targets: list[str] | None = None,
               log: Any = print, python: str | None = None) -> dict[str, Any]:
    """AutoGluon per target (`targets`, default all) on stage 2's prepared data; OOF/test
    predictions, MAE over those targets and timing. `python`: AutoGluon's interpreter, when
    it is not this one (each fit runs there, see `fit_target_in`)."""
    from stage2_gbdt.train import prepare

    data = prepare(cfg)
    spec, ft = cfg.dataset, data.features
    targets = targets or spec.target_columns
    unknown = [t for t in targets if t not in spec.target_columns]
    if unknown:
        raise ValueError(f"--targets names {unknown}; the targets are {spec.target_columns}")
    columns = [spec.target_columns.index(t) for t in targets]
    out_dir = cfg.experiment_dir / "automl"
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = ft.train[spec.id_column].to_numpy()
    folds = data.folds.fold_of(ft.train[spec.id_column])
    labels = data.labels.set_index(spec.id_column).loc[ids, targets].to_numpy(float)
    def part(full: np.ndarray | None, rows: int, empty: float) -> np.ndarray:
        return np.full((rows, len(targets)), empty) if full is None else np.asarray(full)[:, columns]

    # Stage 2's target exactly: (label - baseline) / scale (`stage2.per_metre_axes`; else 1).
    base_train, base_test = part(data.baseline_train, len(ids), 0.0), part(data.baseline_test, len(ft.test), 0.0)
    scale_train, scale_test = part(data.scale_train, len(ids), 1.0), part(data.scale_test, len(ft.test), 1.0)
    X = ft.train[ft.feature_columns].reset_index(drop=True)
    X_test = ft.test[ft.feature_columns].reset_index(drop=True)
    oof = np.full(labels.shape, np.nan)
    test = np.zeros((len(X_test), len(targets)))
    per_target: dict[str, Any] = {}
    for t, name in enumerate(targets):
        done = out_dir / f"{name}.json"
        setting = {"features_hash": ft.hash, "time_limit": time_limit, "presets": presets,
                   "per_metre_axes": list(cfg.stage2.per_metre_axes)}
        if done.exists() and read_json(done).get("setting") == setting:
            saved = read_json(done)
            log(f"automl {name}: done already ({done})")
        else:
            residual = (labels[:, t] - base_train[:, t]) / scale_train[:, t]
            known = np.isfinite(residual)
            frame = X.assign(**{FOLD_COLUMN: folds, LABEL_COLUMN: residual})[known]
            started = time.perf_counter()
            try:
                with ProcessTreeMonitor() as monitor:
                    if python is None:
                        o, p, summary = fit_target(frame, X_test, time_limit, presets, num_cpus,
                                                   verbosity)
                    else:
                        o, p, summary = fit_target_in(python, frame, X_test, time_limit, presets,
                                                      num_cpus, verbosity)
            except RuntimeError as err:  # AutoGluon's "No models were trained successfully"
                raise RuntimeError(f"AutoGluon fitted no model for target {name} within "
                                   f"{time_limit:g} s ({err}; a busy machine leaves it too little "
                                   "CPU); rerun with a larger --time-limit (finished targets are "
                                   f"kept in {out_dir} only for the same limit)") from err
            row_oof = np.full(len(X), np.nan)
            row_oof[known] = o
            saved = {"setting": setting, "oof": row_oof.tolist(), "test": p.tolist(),
                     "wall_s": time.perf_counter() - started, "cpu_s": monitor.cpu_s, **summary}
            write_json_atomic(done, saved)
            log(f"automl {name}: {saved['best_model']} ({saved['n_models']} models), "
                f"{saved['wall_s']:.0f} s")
        oof[:, t] = np.asarray(saved["oof"], float) * scale_train[:, t] + base_train[:, t]
        test[:, t] = np.asarray(saved["test"], float) * scale_test[:, t] + base_test[:, t]
        per_target[name] = {k: saved[k] for k in ("wall_s", "cpu_s", "best_model", "n_models")}
    test_ids = ft.test[spec.id_column].to_numpy()
    oof_frame = pd.DataFrame(oof, columns=targets).assign(**{spec.id_column: ids, "fold": folds})
    test_frame = pd.DataFrame(test, columns=targets).assign(**{spec.id_column: test_ids})
    if len(targets) == len(spec.target_columns):  # a complete prediction table, as a run's
        write_parquet_atomic(out_dir / OOF_FILE, oof_frame[[spec.id_column, "fold", *targets]])
        write_parquet_atomic(out_dir / TEST_FILE, test_frame[[spec.id_column, *targets]])
    return {"model": f"AutoGluon {presets}, {time_limit:g} s a target",
            "targets": list(targets), "cv_mae": mae(labels, oof),
            "test_mae": test_mae(cfg, test_frame, targets),
            "wall_s": sum(v["wall_s"] for v in per_target.values()),
            "cpu_s": sum(v["cpu_s"] or 0.0 for v in per_target.values()),
            "features_hash": ft.hash, "per_target": per_target}


def test_mae(cfg: Config, predictions: pd.DataFrame, targets: list[str]) -> float | None:
    """Test MAE over `targets` of `predictions` (ID + target columns), from the data's oracle."""
    spec = cfg.dataset
    folder = oracle_dir(cfg.data_dir)
    if folder is None:
        return None
    labels = pd.read_csv(folder / LABELS_FILE, dtype={spec.id_column: str}).set_index(spec.id_column)
    ids = predictions[spec.id_column].astype(str).to_numpy()
    return mae(labels.loc[ids, targets].to_numpy(float), predictions[targets].to_numpy(float))


def our_runs(cfg: Config, features_hash: str, targets: list[str]) -> list[dict[str, Any]]:
    """Our finished stage-2 runs and blends on the same feature table: CV and test MAE over
    `targets` (a blend's OOF table is its nested one), wall time, CPU time and whether a blend
    weighs the run. A blend's inputs fitted on fewer of the table's columns (without stage 1's,
    `stage2.without_stage1` and variants) are listed too, marked so: their cost is the blend's."""
    spec = cfg.dataset
    labels = read_table(cfg.data_dir, spec, "train")
    labels = labels.set_index(labels[spec.id_column].astype(str))
    runs = ArtifactStore(cfg.experiment_dir).finished_runs()
    blend_inputs = {name for run in runs if run.meta.get("stage") == "blend"
                    for name in (run.meta.get("scores", {}).get("runs") or {})}
    rows = []
    for run in runs:
        stage = run.meta.get("stage")
        if stage not in ("stage2", "blend"):
            continue
        model = run.name
        if stage == "stage2" and run.meta.get("inputs", {}).get("features") != features_hash:
            if run.name not in blend_inputs:
                continue  # another feature table: not the same comparison
            model = f"{run.name} (fewer columns, a blend input)"
        oof = pd.read_parquet(run.dir / OOF_FILE)
        y = labels.loc[oof[spec.id_column].astype(str), targets].to_numpy(float)
        rows.append({"model": model, "cv_mae": mae(y, oof[targets].to_numpy(float)),
                     "test_mae": test_mae(cfg, pd.read_parquet(run.dir / TEST_FILE), targets),
                     "wall_s": run.meta.get("wall_time_s"), "cpu_s": run.meta.get("cpu_s"),
                     "stage": stage, "blend_input": run.name in blend_inputs})
    return rows


def to_markdown(result: dict[str, Any]) -> str:
    automl = result["automl"]
    lines = ["| model | CV MAE | test MAE | x AutoGluon (CV / test) | wall time (s) | CPU-s |",
             "|---|---|---|---|---|---|"]
    for row in [automl, *result["ours"]]:
        lines.append(f"| {row['model']} | {fmt_cell(row['cv_mae'])} | {fmt_cell(row['test_mae'])} | "
                     f"{ratio_cell(row, automl)} | {fmt_cell(row.get('wall_s'), 0)} | "
                     f"{fmt_cell(row.get('cpu_s'), 0)} |")
    note = (f"MAE over {', '.join(automl['targets'])}. "
            "Same feature table, folds and residual target for all rows (AutoGluon bagged on our "
            "folds, one predictor per target). AutoGluon early-stops each fold child on its own "
            "held-out fold and fits its ensemble weights on all OOF rows, so its CV flatters it; "
            "our blend CV is nested. Test MAE is quoted from the oracle only. "
            f"AutoGluon: {automl['wall_s']:.0f} s wall, {automl['cpu_s']:.0f} CPU-s; "
            f"{_stage2_time(result['ours'], automl)}")
    return "\n".join(lines) + "\n\n" + note + "\n\n" + machine_note(result["machine"]) + "\n"


def _stage2_time(ours: list[dict[str, Any]], automl: dict[str, Any]) -> str:
    """The summed wall and CPU time of the stage-2 runs a blend weighs (of every listed stage-2
    run when no blend is listed; the blend itself takes seconds) and their ratios to AutoGluon's,
    or why they are unknown. The runs are separate commands, one after another, so their wall
    times add up."""
    stage2 = [r for r in ours if r.get("stage") == "stage2"]
    blended = any(r.get("stage") == "blend" for r in ours)
    runs = [r for r in stage2 if r.get("blend_input")] if blended else stage2
    unknown = [r["model"] for r in runs if r.get("cpu_s") is None or r.get("wall_s") is None]
    if not runs or unknown:
        return f"our stage-2 time unknown ({', '.join(unknown) or 'no runs'} predate its record)."
    wall = sum(r["wall_s"] for r in runs)
    cpu = sum(r["cpu_s"] for r in runs)
    what = "the blend's" if blended else "our"
    return (f"{what} {len(runs)} stage-2 runs together: {wall:.0f} s wall "
            f"({wall / automl['wall_s']:.2f}x AutoGluon's), {cpu:.0f} CPU-s "
            f"({cpu / automl['cpu_s']:.2f}x).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--exp", default="demo")
    parser.add_argument("--time-limit", type=float, default=40.0, help="seconds per target")
    parser.add_argument("--presets", default="best_quality")
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--targets", help="comma list of targets (default: all); every row of "
                        "the table is then scored on these only")
    parser.add_argument("--verbosity", type=int, default=0, help="AutoGluon's log level (0-4)")
    parser.add_argument("--automl-python", help="AutoGluon's interpreter (its own virtualenv); "
                        "the features are built here and each fit runs there")
    parser.add_argument("--fit-worker", help=argparse.SUPPRESS)  # internal: see fit_target_in
    parser.add_argument("--readme", help="README to write the table into")
    parser.add_argument("--marker", default=MARKER,
                        help=f"README block to write (default {MARKER}; e.g. {MARKER}_lean for "
                             "configs/demo_lean.yaml)")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    if args.fit_worker:
        fit_worker(Path(args.fit_worker), args.time_limit, args.presets, args.num_cpus, args.verbosity)
        return 0
    if args.automl_python is None and not autogluon_available():
        print("bench_automl: skipped, autogluon.tabular is not installed (pip install -e .[automl], "
              "ideally in its own virtualenv: it pins an older pandas)")
        return 0
    cfg = load_config(args.config, [*args.overrides, f"data_dir={args.data}", f"experiment={args.exp}"])
    targets = [t.strip() for t in args.targets.split(",")] if args.targets else None
    automl = run_automl(cfg, args.time_limit, args.presets, args.num_cpus, args.verbosity, targets,
                        python=args.automl_python)
    result = {"experiment": args.exp, "automl": automl,
              "ours": our_runs(cfg, automl["features_hash"], automl["targets"]),
              "machine": machine_info()}
    print_and_write(result, to_markdown(result), args.readme, args.marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
