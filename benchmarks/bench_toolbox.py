"""Stage-1 toolbox ablation: each switch on vs the demo's stage 1, on fold 0, same budget.

Every row is one `trajstack stage1` run of the configured recipe (the demo's: ConvNeXt-atto +
BiLSTM, physics baseline, 3 epochs) on fold 0 only, with one switch changed; the same epochs,
batch size and seed for every row. The baseline is run again with another seed
(`stage1.seed_offset`), so the table shows how far two runs differ by chance alone: a switch
whose effect is smaller than that is noise. Scores are the fold-0 OOF MAE and the MAE of the
fold-0 model on the test rows (drivesim's `oracle/test_labels.csv`; the benchmark reads it to
score, the pipeline never does); time is the mean training seconds per epoch (validation
excluded) on this machine as it was, busy or not.

Runs live in the experiment `<exp>-toolbox` (one run folder per row) and resume: a rerun only
trains rows not yet done. Results are written after each row to
`outputs/<exp>-toolbox/bench_toolbox.json`, so an interrupted bench still has its rows.

    python -m benchmarks.bench_toolbox --config demo --data data/demo [--rows baseline,mixup]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.bench_pipeline import machine_info, machine_note
from benchmarks.readme_table import update_readme_table
from ensembling.oracle import test_score
from trajstack.artifacts import TEST_FILE
from trajstack.config import load_config
from trajstack.io import write_json_atomic
from trajstack.tables import read_table

MARKER = "toolbox"
FOLD = 0
BASELINE = "baseline"
# Every row starts from the recipe as it was measured: the demo's stage 1 with the backbone's
# pixel statistics (the demo has since switched to `pixel_norm: sequence`, the one clear win),
# so the rows keep their meaning and a rerun reuses them.
PINNED = ["stage1.model.pixel_norm=imagenet"]
# Row name -> (what it switches, config overrides), in the order the README's "growing a
# baseline" lists them. The second seeds are the chance spread, not switches.
ROWS: dict[str, tuple[str, list[str]]] = {
    BASELINE: ("the demo's stage 1", []),
    "baseline_seed2": ("the same, another seed (chance spread)", ["stage1.seed_offset=1"]),
    "pixel_norm_dataset": ("pixel statistics of the training fold", ["stage1.model.pixel_norm=dataset"]),
    "pixel_norm_sequence": ("pixel statistics of each row's frames", ["stage1.model.pixel_norm=sequence"]),
    "pixel_norm_sequence_seed2": ("the same, another seed", ["stage1.model.pixel_norm=sequence",
                                                             "stage1.seed_offset=1"]),
    "cutout": ("cutout, p 0.5", ["stage1.augment.cutout_p=0.5"]),
    "shift_scale": ("shift-scale, p 0.5", ["stage1.augment.shift_scale_p=0.5"]),
    "mixup": ("input mixup, p 0.5, alpha 0.4", ["stage1.mixup.p=0.5"]),
    "manifold_mixup": ("manifold mixup, p 0.5, alpha 0.4", ["stage1.mixup.manifold_p=0.5"]),
    "next_telemetry": ("next-row telemetry aux, weight 0.2", ["stage1.loss.next_telemetry_weight=0.2"]),
    "displacements": ("displacement output", ["stage1.model.output=displacements"]),
    "jerk": ("jerk loss, weight 0.1", ["stage1.loss.jerk_weight=0.1"]),
    "hold_schedule": ("warmup / hold / cool-down schedule", ["stage1.optim.schedule=hold"]),
    "sam": ("SAM around AdamW, rho 0.05", ["stage1.optim.name=sam"]),
    "muon": ("Muon (matrices) + AdamW", ["stage1.optim.name=muon"]),
    "stem_stride_2": ("stem surgery: first stride / 2", ["stage1.model.stem_stride_divisor=2"]),
}


def results_path(cfg_output_dir: str | Path, exp: str) -> Path:
    return Path(cfg_output_dir) / f"{exp}-toolbox" / "bench_toolbox.json"


def run_row(config: str, data: str, exp: str, name: str, overrides: list[str],
            extra: list[str] = ()) -> dict[str, Any]:
    """Train (or reuse) fold 0 of one row's stage 1; its scores and seconds per epoch.
    `extra` overrides apply to every row (e.g. a smaller net for a quick look)."""
    import stage1_nn.train as train_module

    cfg = load_config(config, [f"data_dir={data}", f"experiment={exp}-toolbox", f"stage1.folds=[{FOLD}]",
                               f"stage1.name=toolbox_{name}", "stage1.progress=false", *PINNED, *extra,
                               *overrides])
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


def to_markdown(rows: list[dict[str, Any]], epochs: int | None) -> str:
    """The ablation table: each row against the baseline, and the chance spread between seeds."""
    by_name = {r["row"]: r for r in rows}
    base = by_name.get(BASELINE)
    lines = [f"**Stage-1 toolbox ablation** — demo, fold {FOLD} only, {epochs} epochs each, "
             "one switch per row against the demo's stage 1 with the backbone's pixel statistics; "
             "Δ against that baseline (negative: better). "
             f"{machine_note(machine_info())}", "",
             "| switch | overrides | fold-0 MAE | Δ | test MAE | Δ | s / epoch | × time |",
             "|---|---|---|---|---|---|---|---|"]
    for name, (what, _) in ROWS.items():
        r = by_name.get(name)
        if r is None:
            lines.append(f"| {what} | {_overrides(ROWS[name][1])} | not run | | | | | |")
            continue
        ratio = "" if base is None else f"{r['seconds_per_epoch'] / base['seconds_per_epoch']:.2f}"
        test = "" if r["test_mae"] is None else f"{r['test_mae']:.4f}"
        lines.append(f"| {what} | {_overrides(r['overrides'])} | {r['fold0_mae']:.4f} | {_delta(r, base, 'fold0_mae')} "
                     f"| {test} | {_delta(r, base, 'test_mae')} | {r['seconds_per_epoch']:.1f} | {ratio} |")
    return "\n".join(lines)


def _delta(row: dict[str, Any], base: dict[str, Any] | None, key: str) -> str:
    if base is None or row is base or row[key] is None or base[key] is None:
        return ""
    return f"{row[key] - base[key]:+.4f}"


def _overrides(overrides: list[str]) -> str:
    return " ".join(f"`{o}`" for o in overrides) or "—"


def run(config: str = "demo", data: str = "data/demo", exp: str = "demo",
        rows: list[str] | None = None, extra: list[str] = ()) -> dict[str, Any]:
    """Every chosen row (all by default, in `ROWS` order), results saved after each; `extra`
    overrides apply to every row.

    Returns
    -------
    dict with ``rows`` (one result per row run) and ``markdown`` (the README table).
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
    epochs = ordered[0]["epochs"] if ordered else None
    return {"rows": ordered, "markdown": to_markdown(ordered, epochs)}


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
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied to every row")
    args = parser.parse_args(argv)
    rows = None if args.rows is None else [r for r in args.rows.split(",") if r]  # "": the table of saved rows
    result = run(args.config, args.data, args.exp, rows, args.overrides)
    print(result["markdown"])
    if args.readme:
        update_readme_table(args.readme, MARKER, result["markdown"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
