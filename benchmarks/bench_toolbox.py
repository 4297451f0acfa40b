"""Stage-1 toolbox ablation: each switch on vs the demo's stage 1, on fold 0, same budget.

Every row is one `trajstack stage1` run of the configured recipe (the demo's: ConvNeXt-atto +
BiLSTM, physics baseline, 3 epochs) on fold 0 only, with one switch changed; the same epochs,
batch size and seed for every row. The baseline, and every switch that won on its first seed,
is run again with other seeds (`stage1.seed_offset`), so the table shows how far runs differ by
chance alone: a switch whose effect is smaller than that is noise. Scores are the fold-0 OOF MAE and the MAE of the
fold-0 model on the test rows (drivesim's `oracle/test_labels.csv`; the benchmark reads it to
score, the pipeline never does); time is the mean training seconds per epoch (validation
excluded) on this machine as it was, busy or not.

Share captured is the ladder's (`benchmarks.bench_ladder`): (telemetry-only stage 2 - model) /
(telemetry-only stage 2 - perception oracle), here for stage 1 alone on fold 0's validation
rows, overall and on z (what only the frames carry), against the two ladder references' OOF on
the same rows (experiments `<exp>-ladder-telemetry` and `<exp>-ladder-perception`, built with
the ladder's commands when missing unless `--no-references`; their folds must be the bench's).
Negative where stage 1 alone is worse than the telemetry-only stage 2.

Runs live in the experiment `<exp>-toolbox` (one run folder per row) and resume: a rerun only
trains rows not yet done. Results are written after each row to
`outputs/<exp>-toolbox/bench_toolbox.json`, so an interrupted bench still has its rows.

    python -m benchmarks.bench_toolbox --config demo --data data/demo [--rows baseline,mixup] \
        [--readme README.md]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.bench_ladder import (
    _pct,
    camera_state_path,
    experiment_names,
    ladder_commands,
    reference_oof,
    share_captured,
)
from benchmarks.bench_pipeline import machine_info, machine_note, run_stages
from benchmarks.readme_table import print_and_write
from ensembling.oracle import test_score
from trajstack.artifacts import TEST_FILE, ArtifactStore
from trajstack.config import Config, load_config
from trajstack.folds import FOLDS_FILE, load_folds
from trajstack.io import write_json_atomic
from trajstack.metrics import mae_report
from trajstack.tables import read_table

MARKER = "toolbox"
FOLD = 0
BASELINE = "baseline"
LEARNER = "lightgbm"  # stage-2 learner of the two share references
SHARE_AXIS = "z"  # the axis only the frames carry
# Row name -> (what it switches, config overrides), in the order the README's "growing a
# baseline" lists them. The second seeds are the chance spread, not switches.
ROWS: dict[str, tuple[str, list[str]]] = {
    BASELINE: ("the demo's stage 1", []),
    "baseline_seed2": ("the same, another seed (chance spread)", ["stage1.seed_offset=1"]),
    "baseline_seed3": ("the same, a third seed", ["stage1.seed_offset=2"]),
    "pixel_norm_dataset": ("pixel statistics of the training fold", ["stage1.model.pixel_norm=dataset"]),
    "pixel_norm_dataset_seed2": ("the same, another seed", ["stage1.model.pixel_norm=dataset",
                                                            "stage1.seed_offset=1"]),
    "pixel_norm_dataset_seed3": ("the same, a third seed", ["stage1.model.pixel_norm=dataset",
                                                            "stage1.seed_offset=2"]),
    "pixel_norm_sequence": ("pixel statistics of each row's frames", ["stage1.model.pixel_norm=sequence"]),
    "cutout": ("cutout, p 0.5", ["stage1.augment.cutout_p=0.5"]),
    "shift_scale": ("shift-scale, p 0.5", ["stage1.augment.shift_scale_p=0.5"]),
    "mixup": ("input mixup, p 0.5, alpha 0.4", ["stage1.mixup.p=0.5"]),
    "manifold_mixup": ("manifold mixup, p 0.5, alpha 0.4", ["stage1.mixup.manifold_p=0.5"]),
    "next_telemetry": ("next-row telemetry aux, weight 0.2", ["stage1.loss.next_telemetry_weight=0.2"]),
    "displacements": ("displacement output", ["stage1.model.output=displacements"]),
    "jerk": ("jerk loss, weight 0.1", ["stage1.loss.jerk_weight=0.1"]),
    "hold_schedule": ("warmup / hold / cool-down schedule", ["stage1.optim.schedule=hold"]),
    "sam": ("SAM around AdamW, rho 0.05", ["stage1.optim.name=sam"]),
    "muon": ("Muon (matrices; float32 Newton-Schulz on CPU) + AdamW", ["stage1.optim.name=muon"]),
    "muon_seed2": ("the same, another seed", ["stage1.optim.name=muon", "stage1.seed_offset=1"]),
    "muon_seed3": ("the same, a third seed", ["stage1.optim.name=muon", "stage1.seed_offset=2"]),
    "muon_pixel_norm_dataset": ("Muon and the training fold's pixel statistics (the two wins)",
                                ["stage1.optim.name=muon", "stage1.model.pixel_norm=dataset"]),
    "muon_pixel_norm_dataset_seed2": ("the same, another seed", ["stage1.optim.name=muon",
                                                                 "stage1.model.pixel_norm=dataset",
                                                                 "stage1.seed_offset=1"]),
    "stem_stride_2": ("stem surgery: first stride / 2", ["stage1.model.stem_stride_divisor=2"]),
}


def results_path(cfg_output_dir: str | Path, exp: str) -> Path:
    return Path(cfg_output_dir) / f"{exp}-toolbox" / "bench_toolbox.json"


def row_config(config: str, data: str, exp: str, name: str, overrides: list[str],
               extra: list[str] = ()) -> Config:
    """The config of one row: fold 0 of the recipe in the experiment `<exp>-toolbox`."""
    return load_config(config, [f"data_dir={data}", f"experiment={exp}-toolbox", f"stage1.folds=[{FOLD}]",
                                f"stage1.name=toolbox_{name}", "stage1.progress=false", *extra, *overrides])


def run_row(config: str, data: str, exp: str, name: str, overrides: list[str],
            extra: list[str] = ()) -> dict[str, Any]:
    """Train (or reuse) fold 0 of one row's stage 1; its scores and seconds per epoch.
    `extra` overrides apply to every row (e.g. a smaller net for a quick look)."""
    import stage1_nn.train as train_module

    cfg = row_config(config, data, exp, name, overrides, extra)
    started = time.perf_counter()
    run = train_module.run_stage1(cfg)
    wall = time.perf_counter() - started
    meta = run.read_meta()
    epochs = [json.loads(line) for line in (run.dir / f"fold{FOLD}" / "metrics.jsonl").read_text().splitlines()]
    spec = cfg.dataset
    test = pd.read_parquet(run.dir / TEST_FILE)
    order = read_table(cfg.data_dir, spec, "test")[spec.id_column].to_numpy(str)
    test = test.set_index(spec.id_column).loc[order]
    scored = test_score(cfg.data_dir, order, test[spec.target_columns].to_numpy(), spec)
    return {
        "row": name, "overrides": overrides, "fold0_mae": meta["scores"]["mae"],
        "fold0_mae_per_axis": meta["scores"].get("per_axis"),
        "test_mae": scored["mae"] if scored else None,
        "seconds_per_epoch": float(np.mean([e["train_seconds"] for e in epochs])),
        "epochs": len(epochs), "wall_s_this_call": round(wall, 1),
    }


def fold_rows(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """IDs and labels of fold `FOLD`'s labelled validation rows in the bench's experiment."""
    spec = cfg.dataset
    train = read_table(cfg.data_dir, spec, "train")
    train = train[train[spec.target_columns].notna().all(axis=1).to_numpy()]
    ids = train[spec.id_column].to_numpy(str)
    in_fold = load_folds(cfg.experiment_dir / FOLDS_FILE).fold_of(ids) == FOLD
    return ids[in_fold], train.loc[in_fold, spec.target_columns].to_numpy(float)


def reference_scores(config: str, data: str, exp: str, extra: list[str] = (),
                     build: bool = True) -> dict[str, Any] | None:
    """Fold-0 MAE (overall and per axis) of the ladder's two references, on the bench's rows.

    The references are the ladder's telemetry-only and perception-oracle stage 2 (`LEARNER`),
    in `<exp>-ladder-telemetry` / `<exp>-ladder-perception`; missing ones are built with the
    ladder's commands when `build` is set, else None is returned (no share column). Their folds
    must be the bench's (a FoldMismatchError says otherwise).
    """
    names = experiment_names(exp)
    cfgs = {role: load_config(config, [f"data_dir={data}", *extra, f"experiment={names[role]}"])
            for role in ("telemetry", "perception")}
    cfgs["toolbox"] = row_config(config, data, exp, BASELINE, [], extra)
    missing = [role for role in ("telemetry", "perception")
               if not (cfgs[role].experiment_dir / "stage2" / LEARNER / "meta.json").exists()]
    if missing:
        if not build:
            return None
        commands = ladder_commands(config, data, exp, LEARNER, list(extra), camera_state_path(data),
                                   cfgs["toolbox"].features.builders)
        run_stages({f"{role} stage2": commands[f"{role} stage2"] for role in missing})
    ids, labels = fold_rows(cfgs["toolbox"])
    fold_hash, preds = reference_oof(cfgs, LEARNER, ids)
    spec = cfgs["toolbox"].dataset
    return {"fold_hash": fold_hash, "learner": LEARNER, "n_rows": int(len(ids)),
            **{role: _axis_scores(mae_report(labels, preds[role], spec)) for role in preds}}


def row_shares(cfg: Config, references: dict[str, Any]) -> dict[str, Any]:
    """Share captured by one row's stage 1 alone on fold 0 (overall and per axis), from its OOF
    on the references' rows; `cfg` is the row's config (`row_config`)."""
    spec = cfg.dataset
    ids, labels = fold_rows(cfg)
    run = ArtifactStore(cfg.experiment_dir).load(cfg.experiment_dir / "stage1" / cfg.stage1.name,
                                                 expect_fold_hash=references["fold_hash"])
    oof = run.oof().set_index(spec.id_column)
    scores = _axis_scores(mae_report(labels, oof.loc[ids, spec.target_columns].to_numpy(float), spec))
    tel, perc = references["telemetry"], references["perception"]
    return {"scores": scores,
            "share": {k: share_captured(tel[k], scores[k], perc[k]) for k in ("mae", *spec.axes)}}


def _axis_scores(report: dict[str, Any]) -> dict[str, float]:
    return {"mae": report["mae"], **report["per_axis"]}


def to_markdown(rows: list[dict[str, Any]], epochs: int | None,
                references: dict[str, Any] | None = None) -> str:
    """The ablation table: each row against the baseline, the chance spread between seeds, and
    the share stage 1 alone captures on fold 0 when the ladder's `references` are given."""
    by_name = {r["row"]: r for r in rows}
    base = by_name.get(BASELINE)
    if references is None:
        share_note = "share: — (the ladder's references were not built; run without --no-references)."
    else:
        tel, perc = references["telemetry"], references["perception"]
        share_note = (f"share = share captured by **stage 1 alone on fold {FOLD}** "
                      f"({references['n_rows']} validation rows): (telemetry-only stage 2 - row) / "
                      "(telemetry-only stage 2 - perception oracle), the ladder's references "
                      f"({references['learner']}, OOF on the same rows: MAE {tel['mae']:.4f} / "
                      f"{perc['mae']:.4f}, {SHARE_AXIS} {tel[SHARE_AXIS]:.4f} / {perc[SHARE_AXIS]:.4f}; "
                      f"folds `{references['fold_hash']}`); negative where stage 1 alone is worse "
                      "than telemetry-only stage 2. The stacked share is the ladder table's.")
    seeds = [r["fold0_mae"] for n, r in by_name.items() if n == BASELINE or n.startswith(f"{BASELINE}_seed")]
    spread = (f" Chance spread: the baseline's {len(seeds)} seeds span {max(seeds) - min(seeds):.4f} "
              "(fold-0 MAE): differences within it are chance."
              if len(seeds) > 1 else "")
    lines = [f"**Stage-1 toolbox ablation** — demo, fold {FOLD} only, {epochs} epochs each, "
             "one switch per row against the demo's stage 1 (configs/demo.yaml); "
             f"Δ against that baseline's first seed (negative: better).{spread} "
             f"{share_note} {machine_note(machine_info())}", "",
             f"| switch | overrides | fold-0 MAE | Δ | share | {SHARE_AXIS} MAE | share {SHARE_AXIS} "
             "| test MAE | Δ | s / epoch | × time |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, (what, _) in ROWS.items():
        r = by_name.get(name)
        if r is None:
            lines.append(f"| {what} | {_overrides(ROWS[name][1])} | not run | | | | | | | | |")
            continue
        ratio = "" if base is None else f"{r['seconds_per_epoch'] / base['seconds_per_epoch']:.2f}"
        test = "" if r["test_mae"] is None else f"{r['test_mae']:.4f}"
        share = r.get("share") or {}
        axis = (r.get("fold0_mae_per_axis") or {}).get(SHARE_AXIS)
        lines.append(f"| {what} | {_overrides(r['overrides'])} | {r['fold0_mae']:.4f} | {_delta(r, base, 'fold0_mae')} "
                     f"| {_pct(share.get('mae'))} | {'—' if axis is None else f'{axis:.4f}'} "
                     f"| {_pct(share.get(SHARE_AXIS))} "
                     f"| {test} | {_delta(r, base, 'test_mae')} | {r['seconds_per_epoch']:.1f} | {ratio} |")
    return "\n".join(lines)


def _delta(row: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    if base is None or row is base or row[key] is None or base[key] is None:
        return ""
    return f"{row[key] - base[key]:+.4f}"


def _overrides(overrides: list[str]) -> str:
    return " ".join(f"`{o}`" for o in overrides) or "—"


def run(config: str = "demo", data: str = "data/demo", exp: str = "demo",
        rows: list[str] | None = None, extra: list[str] = (), references: bool = True) -> dict[str, Any]:
    """Every chosen row (all by default, in `ROWS` order), results saved after each; `extra`
    overrides apply to every row. `references`: build the ladder's two references when missing
    (else the share column is left empty).

    Returns
    -------
    dict with ``rows`` (one result per saved row, with its fold-0 ``share``), ``references``
    (their fold-0 scores, or None) and ``markdown`` (the README table).
    """
    chosen = list(ROWS) if rows is None else rows
    unknown = sorted(set(chosen) - set(ROWS))
    if unknown:
        raise ValueError(f"unknown toolbox row(s) {unknown}; choose from {', '.join(ROWS)}")
    path = results_path(load_config(config, [f"data_dir={data}", *extra]).output_dir, exp)
    for name in chosen:
        print(f"-- toolbox row {name}: {' '.join(ROWS[name][1]) or '(baseline)'}", flush=True)
        result = run_row(config, data, exp, name, ROWS[name][1], extra)
        # read again just before writing: another bench process may have added rows meanwhile
        done = {**_saved_rows(path), name: result}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, {"rows": [done[n] for n in ROWS if n in done]})
        print(json.dumps(result), flush=True)
    done = _saved_rows(path)
    ordered = [done[n] for n in ROWS if n in done]
    refs = reference_scores(config, data, exp, extra, build=references) if ordered else None
    if refs is not None:
        for row in ordered:
            row["share"] = row_shares(row_config(config, data, exp, row["row"], row["overrides"], extra),
                                      refs)["share"]
    epochs = ordered[0]["epochs"] if ordered else None
    return {"rows": ordered, "references": refs, "markdown": to_markdown(ordered, epochs, refs)}


def _saved_rows(path: Path) -> dict[str, dict[str, Any]]:
    return {r["row"]: r for r in json.loads(path.read_text())["rows"]} if path.exists() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--exp", default="demo")
    parser.add_argument("--rows", default=None,
                        help=f"comma list of {', '.join(ROWS)} (default all; '' only prints the saved rows' table)")
    parser.add_argument("--readme", default=None, help="write the table into this README")
    parser.add_argument("--no-references", action="store_true",
                        help="do not build the ladder's references when missing (no share column)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every row")
    args = parser.parse_args(argv)
    rows = None if args.rows is None else [r for r in args.rows.split(",") if r]  # "": the table of saved rows
    result = run(args.config, args.data, args.exp, rows, args.overrides, references=not args.no_references)
    print_and_write(result, result["markdown"], args.readme, MARKER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
