"""Ladder benchmark: how much of what the camera shows reaches the submission.

On the same folds and test rows, from worst to best:

- telemetry-only stage 2 (`features.stage1=false`): what the frames add is zero;
- stage 1 alone: each stage-1 network's own OOF / fold-mean test predictions;
- the full stack: the blend of the experiment's runs (`make stage1 stage2 blend`);
- the perception oracle: the same stage 2 plus the camera-visible state as features
  (`features.files` pointing at `<data>/oracle/camera_state.csv`), no stage 1: what perfect
  perception of the frames would give;
- the oracle floor (`oracle/floor.json`, test rows only): the physical limit;

and `share captured = (telemetry - stack) / (telemetry - perception)`, overall and per axis,
on honest CV (OOF; the blend's nested OOF) and on the test labels. The three model families
live in three experiments (`<exp>`, `<exp>-ladder-telemetry`, `<exp>-ladder-perception`), so
the stack's blend never sees the oracle's run; each experiment makes its folds from the same
train file and fold config, and the ladder refuses to compare runs whose fold hashes differ.
Every command resumes or skips finished runs, so stage 1 is not retrained after `make stage1`.
The benchmark reads `oracle/` to score; the pipeline never does (the perception run reads
camera_state.csv only because this benchmark names it in `features.files`).

With `features.stage1` off in the stack's config, the stack is stage 2 with the image
statistics plus the blend, no stage-1 command runs and the table says so. Each dataset keeps
its own README block (`--marker`).

    python -m benchmarks.bench_ladder --config configs/demo.yaml --data data/demo --exp demo \
        --readme README.md
    python -m benchmarks.bench_ladder --config configs/cpu_full.yaml --data data/full --exp full \
        --marker ladder_full --readme README.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.bench_pipeline import machine_info, machine_note, run_stages, stage_commands
from benchmarks.readme_table import fmt_cell, print_and_write
from ensembling.oracle import FLOOR_FILE, LABELS_FILE, ORACLE_DIR, test_score
from ensembling.report import finished_blend
from features.build import BUILDERS
from trajstack.artifacts import ArtifactError, ArtifactStore, FoldMismatchError, RunResult
from trajstack.config import Config, load_config
from trajstack.folds import FOLDS_FILE, load_folds
from trajstack.io import file_hash, read_json
from trajstack.metrics import mae_report
from trajstack.tables import read_table

MARKER = "ladder"
CAMERA_STATE = "camera_state.csv"
CAMERA_PREFIX = "cam_"
ROLES = ("stack", "telemetry", "perception")


class LadderError(ArtifactError):
    """The ladder cannot be measured as asked; the message says what to run or regenerate."""


def experiment_names(exp: str) -> dict[str, str]:
    """Experiment of each role: the stack's own, and one each for the two stage-2 references."""
    return {"stack": exp, "telemetry": f"{exp}-ladder-telemetry",
            "perception": f"{exp}-ladder-perception"}


def camera_state_path(data_dir: str | Path) -> Path:
    """`<data>/oracle/camera_state.csv`, or a LadderError saying how to get it."""
    path = Path(data_dir) / ORACLE_DIR / CAMERA_STATE
    if not path.is_file():
        raise LadderError(f"{path} is missing: the perception oracle needs the camera-visible "
                          "state of every train and test row; regenerate the data with drivesim "
                          "v2 (make demo-data after removing the old folder)")
    return path


def frame_free_builders(builders: list[str]) -> list[str]:
    """`builders` less those whose columns come from the frames (stage 1, image statistics)."""
    return [b for b in builders if not BUILDERS.get(b).reads_frames]


def reference_overrides(role: str, camera_state: Path | None, builders: list[str]) -> list[str]:
    """Config overrides of a reference stage 2: telemetry alone, or telemetry + camera state.

    `builders` are the configured feature builders; the references keep only the frame-free ones.
    """
    overrides = ["features.stage1=false",
                 "features.builders=" + json.dumps(frame_free_builders(builders))]
    if role == "perception":
        entry = {"path": str(camera_state), "prefix": CAMERA_PREFIX}
        overrides.append("features.files=" + json.dumps([entry]))  # JSON is valid YAML
    return overrides


def ladder_commands(config: str, data: str, exp: str, learner: str, extra: list[str],
                    camera_state: Path, builders: list[str],
                    stack_stage1: bool = True) -> dict[str, list[str]]:
    """The commands behind the ladder, keyed by what they make (each resumes or skips);
    `builders` are the stack's feature builders; `stack_stage1` False (the stack's
    `features.stage1` off) leaves out `trajstack stage1`, which would train the network anyway."""
    names = experiment_names(exp)
    commands = {f"stack {stage}": command for stage, command in
                stage_commands(config, data, exp, [learner], extra).items()
                if stack_stage1 or stage != "stage1"}
    for role in ("telemetry", "perception"):
        commands[f"{role} stage2"] = stage_commands(
            config, data, names[role], [learner],
            [*extra, *reference_overrides(role, camera_state, builders)])["stage2"]
    return commands


def share_captured(telemetry: float, stack: float, perception: float) -> float | None:
    """(telemetry - stack) / (telemetry - perception): the part of the camera's worth the stack
    reached. None when perception is no better than telemetry (nothing to capture)."""
    gap = telemetry - perception
    return None if not np.isfinite(gap) or gap <= 0 else (telemetry - stack) / gap


# ----------------------------------------------------------------------------- reading runs


def _fold_hashes(cfgs: dict[str, Config]) -> str:
    """The one fold hash of the three experiments; a LadderError when they differ."""
    hashes = {}
    for role, cfg in cfgs.items():
        path = cfg.experiment_dir / FOLDS_FILE
        if not path.exists():
            raise LadderError(f"{path} does not exist: run the {role} experiment's stages first")
        hashes[role] = load_folds(path).hash
    if len(set(hashes.values())) > 1:
        listing = ", ".join(f"{role} ({cfgs[role].experiment}): {h}" for role, h in hashes.items())
        raise FoldMismatchError(f"the ladder's experiments were made on different folds ({listing}); "
                                "a ladder across folds compares different validation rows. Make "
                                "them from the same train file and folds config (or delete the odd "
                                "experiment's folder and rerun it).")
    return next(iter(hashes.values()))


def _stage2_run(cfg: Config, learner: str, fold_hash: str, role: str) -> RunResult:
    run_dir = cfg.experiment_dir / "stage2" / learner
    if not (run_dir / "meta.json").exists():
        raise LadderError(f"{run_dir}: no finished {role} stage-2 run; run the ladder's commands "
                          "(python -m benchmarks.bench_ladder) first")
    run = ArtifactStore(cfg.experiment_dir).load(run_dir, expect_fold_hash=fold_hash)
    features = run.config.get("features", {})
    stage1_on = (features.get("stage1") or {}).get("enabled", True)
    from_frames = [b for b in features.get("builders", [])
                   if BUILDERS.get(b).reads_frames and (b != "stage1" or stage1_on)]
    files = features.get("files") or []
    if from_frames or (role == "telemetry") != (not files):
        raise LadderError(f"{run_dir} is not a {role} reference (builders reading frames: "
                          f"{from_frames or 'none'}, features.files: {files}); rerun it with the "
                          "ladder's overrides")
    return run


def ladder_runs(cfgs: dict[str, Config], learner: str) -> tuple[str, list[tuple[str, str, RunResult]]]:
    """(fold hash, [(role, label, run)]) from worst to best, every run checked for its folds."""
    fold_hash = _fold_hashes(cfgs)
    stack = cfgs["stack"]
    blend = finished_blend(stack)
    if blend is None:
        raise LadderError(f"{stack.experiment_dir}/blend/{stack.blend.run_name}: no finished blend; "
                          "run `make stage1 stage2 blend` (or the ladder's commands) first")
    stage1 = ArtifactStore(stack.experiment_dir).finished_runs("stage1") \
        if (stack.experiment_dir / "stage1").is_dir() else []
    runs = [("telemetry", f"telemetry-only stage 2 ({learner})",
             _stage2_run(cfgs["telemetry"], learner, fold_hash, "telemetry"))]
    runs += [("stage1", f"stage 1 alone ({r.meta['run']})", r) for r in stage1]
    runs += [("stack", f"full stack: blend ({blend.meta['run']})", blend),
             ("perception", f"perception oracle: stage 2 ({learner}) + camera state",
              _stage2_run(cfgs["perception"], learner, fold_hash, "perception"))]
    for _, _, run in runs:
        if run.fold_hash != fold_hash:
            raise FoldMismatchError(f"{run.dir} was built on folds {run.fold_hash}, the ladder's "
                                    f"experiments on {fold_hash}; rerun it on the current folds")
    return fold_hash, runs


def _predictions(frame: pd.DataFrame, ids: np.ndarray, id_col: str, targets: list[str],
                 what: str) -> np.ndarray:
    """(n, n_targets) rows of `frame` in the order of `ids`; each ID must be there once."""
    dupes = frame[id_col][frame[id_col].duplicated()]
    if len(dupes):
        raise LadderError(f"{what} lists ID {dupes.iloc[0]!r} more than once; rerun that stage")
    table = frame.set_index(frame[id_col].astype(str))
    missing = ~np.isin(ids, table.index.to_numpy(str))
    if missing.any():
        raise LadderError(f"{what} lacks {int(missing.sum())} of {len(ids)} rows (e.g. "
                          f"{ids[missing][0]!r}); the ladder needs every fold: rerun that stage "
                          "over all folds")
    return table.loc[ids, targets].to_numpy(float)


def reference_oof(cfgs: dict[str, Config], learner: str, ids: np.ndarray) -> tuple[str, dict[str, np.ndarray]]:
    """OOF predictions of the telemetry-only and perception-oracle stage 2 on the rows `ids`.

    Parameters
    ----------
    cfgs : config of the `telemetry` and `perception` experiments, and of any other experiment
        (e.g. a benchmark's own) whose folds must be the same.
    learner : the stage-2 learner of the two reference runs.
    ids : train IDs to read, in that order.

    Returns
    -------
    (fold hash, {role: (len(ids), n_targets) predictions}); a LadderError or FoldMismatchError
    when a run is missing, not a reference, or made on other folds.
    """
    fold_hash = _fold_hashes(cfgs)
    preds = {}
    for role in ("telemetry", "perception"):
        run = _stage2_run(cfgs[role], learner, fold_hash, role)
        if run.fold_hash != fold_hash:
            raise FoldMismatchError(f"{run.dir} was built on folds {run.fold_hash}, its experiment on "
                                    f"{fold_hash}; rerun it on the current folds")
        spec = cfgs[role].dataset
        preds[role] = _predictions(run.oof(), ids, spec.id_column, spec.target_columns,
                                   f"{run.dir}/oof.parquet")
    return fold_hash, preds


def _scores(report: dict[str, Any]) -> dict[str, Any]:
    return {"mae": report["mae"], **{a: v for a, v in report["per_axis"].items()}}


def collect_ladder(cfgs: dict[str, Config], learner: str = "lightgbm") -> dict[str, Any]:
    """The ladder of finished runs, read from their artifacts and the data's oracle.

    Parameters
    ----------
    cfgs : config of each role (`stack`, `telemetry`, `perception`); the same dataset.
    learner : the stage-2 learner of the two reference runs.

    Returns
    -------
    dict with ``rows`` (label, role, run, ``cv`` and ``test`` scores: mae and per axis),
    ``floor`` (test MAE and per axis), ``share`` (``cv`` and ``test``, overall and per axis),
    ``fold_hash``, ``n_train``, ``n_test``.
    """
    stack = cfgs["stack"]
    spec, data_dir = stack.dataset, stack.data_dir
    oracle = Path(data_dir) / ORACLE_DIR
    if not (oracle / LABELS_FILE).exists():
        raise LadderError(f"{oracle / LABELS_FILE} is missing: the ladder scores test rows "
                          "against the data source's oracle")
    fold_hash, runs = ladder_runs(cfgs, learner)
    id_col, targets = spec.id_column, spec.target_columns
    train = read_table(data_dir, spec, "train")
    labelled = train[targets].notna().all(axis=1).to_numpy()
    train_ids = train[id_col].to_numpy(str)[labelled]
    labels = train.loc[labelled, targets].to_numpy(float)
    test_ids = read_table(data_dir, spec, "test")[id_col].to_numpy(str)
    rows = []
    for role, label, run in runs:
        oof = _predictions(run.oof(), train_ids, id_col, targets, f"{run.dir}/oof.parquet")
        test = _predictions(run.test(), test_ids, id_col, targets, f"{run.dir}/test.parquet")
        scored = test_score(data_dir, test_ids, test, spec)
        rows.append({"label": label, "role": role, "run": run.name, "dir": str(run.dir),
                     "cv": _scores(mae_report(labels, oof, spec)),
                     "test": _scores(scored["mae_report"])})
    floor_json = read_json(oracle / FLOOR_FILE) if (oracle / FLOOR_FILE).exists() else {}
    floor = {"mae": floor_json.get("floor_mae"), **floor_json.get("floor_mae_per_axis", {})}
    by_role = {r["role"]: r for r in rows if r["role"] != "stage1"}
    share = {split: {key: share_captured(by_role["telemetry"][split][key], by_role["stack"][split][key],
                                         by_role["perception"][split][key])
                     for key in ("mae", *spec.axes)}
             for split in ("cv", "test")}
    stack_run = next(run for role, _, run in runs if role == "stack")
    return {"rows": rows, "floor": floor, "share": share, "fold_hash": fold_hash,
            "stack_inputs": sorted(stack_run.meta.get("scores", {}).get("runs", {})),
            "experiments": {role: cfg.experiment for role, cfg in cfgs.items()},
            "n_train": int(len(train_ids)), "n_test": int(len(test_ids)), "axes": list(spec.axes)}


# ----------------------------------------------------------------------------- run and table


def run(config: str, data: str, exp: str, learner: str = "lightgbm",
        extra: list[str] | None = None, execute: bool = True) -> dict[str, Any]:
    """Run (resume, or skip) every command of the ladder, then read it back (`collect_ladder`).

    Parameters
    ----------
    config, data, exp : as for `make stage1 stage2 blend` (CONFIG, DATA, EXP).
    learner : stage-2 learner of the stack and of both references.
    extra : `key=value` overrides for every command (the Makefile's ARGS).
    execute : False only reads finished runs.
    """
    extra = list(extra or [])
    camera_state = camera_state_path(data)
    overrides = [a for a in extra if "=" in a and not a.startswith("-")]
    names = experiment_names(exp)
    cfgs = {role: load_config(config, [*overrides, f"data_dir={data}", f"experiment={names[role]}"])
            for role in ROLES}
    commands = ladder_commands(config, data, exp, learner, extra, camera_state,
                               cfgs["stack"].features.builders, cfgs["stack"].features.stage1.enabled)
    times = run_stages(commands) if execute else {}
    result = collect_ladder(cfgs, learner)
    result |= {"data_dir": data, "camera_state": str(camera_state),
               "camera_state_hash": file_hash(camera_state), "learner": learner,
               "command_wall_s": times, "machine": machine_info()}
    result["markdown"] = to_markdown(result)
    return result


def _pct(value: float | None) -> str:
    # One decimal: a goal such as 50% must not be met by rounding (49.8% is not 50%).
    return "—" if value is None else f"{100 * value:.1f}%"


def to_markdown(result: dict[str, Any]) -> str:
    """The README table: one row per model (worst to best), the floor, then share captured."""
    axes = result["axes"]
    head = ["model", "CV MAE", *(f"CV {a}" for a in axes), "test MAE", *(f"test {a}" for a in axes)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result["rows"]:
        cells = [fmt_cell(row[split][k]) for split in ("cv", "test") for k in ("mae", *axes)]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    floor = result["floor"]
    lines.append("| oracle floor (rollouts from the exact state) | — |" + " — |" * len(axes)
                 + f" {fmt_cell(floor.get('mae'))} | " + " | ".join(fmt_cell(floor.get(a)) for a in axes) + " |")
    share = result["share"]
    cells = [_pct(share[split][k]) for split in ("cv", "test") for k in ("mae", *axes)]
    lines.append("| **share captured** | " + " | ".join(f"**{c}**" for c in cells) + " |")
    exps = result["experiments"]
    notes = [
        "share captured = (telemetry - stack) / (telemetry - perception); — where the perception "
        "oracle is no better than telemetry. CV: out-of-fold on all "
        f"{result['n_train']} labelled train rows (the blend's nested OOF); test: the "
        f"{result['n_test']} test rows against oracle/test_labels.csv.",
        f"Same folds for every row (fold hash `{result['fold_hash']}`): experiments "
        f"`{exps['stack']}` (stack), `{exps['telemetry']}`, `{exps['perception']}`; stage-2 "
        f"learner {result.get('learner', '—')}; camera state `{result.get('camera_state', '—')}` "
        f"(hash {result.get('camera_state_hash', '—')}) on `{result.get('data_dir', '—')}`.",
    ]
    inputs = result.get("stack_inputs")
    if inputs:
        no_stage1 = not any(row["role"] == "stage1" for row in result["rows"])
        notes.append(f"The stack's blend weighs {', '.join(inputs)}"
                     + (" (no stage-1 run: stage 2 reads the frames through the image statistics "
                        "only, `features.stage1` off)" if no_stage1 else "") + ".")
    times = result.get("command_wall_s") or {}
    if times:
        notes.append("Command wall time (s), resumed or skipped work included: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in times.items()) + ".")
    m = result.get("machine")
    if m:
        notes.append(machine_note(m))
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--exp", default="demo")
    parser.add_argument("--learner", default="lightgbm", help="stage-2 learner (default lightgbm)")
    parser.add_argument("--no-run", action="store_true", help="only read finished runs")
    parser.add_argument("--readme", help="README to write the table into")
    parser.add_argument("--marker", default=MARKER,
                        help=f"README block to write (default {MARKER}; e.g. {MARKER}_full at full scale)")
    parser.add_argument("extra", nargs="*", help="config overrides key=value for every command")
    args = parser.parse_args(argv)
    try:
        result = run(args.config, args.data, args.exp, args.learner, args.extra,
                     execute=not args.no_run)
    except ArtifactError as err:
        print(f"bench ladder: {err}", file=sys.stderr)
        return 2
    print_and_write(result, result["markdown"], args.readme, args.marker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
