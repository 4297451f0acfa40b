"""Pipeline benchmark: wall time and CV MAE per stage, blend scores, test MAE / floor, machine.

Runs the same commands as `make stage1 stage2 blend` (each one resumes or skips finished work)
and then reads the figures back from the artifacts; with ``--no-run`` it only reads them.
The markdown table goes between ``<!-- bench:pipeline -->`` markers in README.md.

    python -m benchmarks.bench_pipeline --config configs/demo.yaml --data data/demo \
        --exp demo --readme README.md
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from benchmarks.readme_table import fmt_cell, print_and_write
from trajstack.artifacts import ArtifactStore
from trajstack.config import Config, load_config
from trajstack.tables import read_table

MARKER = "pipeline"


def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, GPU (if torch sees one), OS and Python."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        kb = int(meminfo.read_text().split("MemTotal:")[1].split()[0])
        memory_gb = round(kb / 2**20, 1)
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "memory_gb": memory_gb, "gpu": gpu,
            "os": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def stage_commands(config: str, data: str, exp: str, learners: list[str],
                   extra: list[str]) -> dict[str, list[str]]:
    """The `make stage1 stage2 blend` commands, keyed by stage."""
    base = [sys.executable, "-m", "trajstack"]
    common = ["--config", config, "--data", data, "--exp", exp, *extra]
    return {
        "stage1": [*base, "stage1", *common],
        "stage2": [*base, "stage2", *common, *(a for key in learners for a in ("--learner", key))],
        "blend": [*base, "blend", *common],
    }


def run_stages(commands: dict[str, list[str]]) -> dict[str, float]:
    """Run each command (output streamed), stop at the first failure; wall seconds per stage."""
    times = {}
    for stage, command in commands.items():
        print(f"bench: {' '.join(command)}", flush=True)
        started = time.perf_counter()
        subprocess.run(command, check=True)
        times[stage] = round(time.perf_counter() - started, 1)
    return times


def collect(cfg: Config) -> dict[str, Any]:
    """Figures of a finished experiment, read from its artifacts (and the oracle, if any)."""
    from ensembling.oracle import test_score
    from ensembling.report import finished_blend
    from stage2_gbdt.without_stage1 import WITHOUT_KEY

    spec = cfg.dataset
    test_ids = read_table(cfg.data_dir, spec, "test")[spec.id_column].to_numpy(str)
    runs = []
    for run in ArtifactStore(cfg.experiment_dir).finished_runs():
        if run.meta.get("stage") == "blend" or WITHOUT_KEY in run.meta:
            continue  # the blend's own inputs only (not the stage-1 value runs)
        entry = {"stage": run.meta["stage"], "run": run.meta["run"],
                 "wall_time_s": run.meta.get("wall_time_s")}
        predictions = run.test().set_index(spec.id_column).loc[test_ids, spec.target_columns]
        # Quoted only, like the blend's: nothing is chosen on the oracle's test labels.
        score = test_score(cfg.data_dir, test_ids, predictions.to_numpy(float), spec)
        entry["test_mae"] = score["mae"] if score else None
        runs.append(entry)
    result: dict[str, Any] = {"experiment": cfg.experiment, "data_dir": cfg.data_dir, "runs": runs}
    blend = finished_blend(cfg)
    if blend is None:
        return result
    scores = blend.meta["scores"]
    for entry in runs:  # every run scored by the blend on the same rows
        entry["cv_mae"] = scores["runs"].get(f"{entry['stage']}/{entry['run']}", {}).get("mae")
    result["blend"] = {"run": blend.name, "cv_mae_nested": scores["mae_report"]["mae"],
                       "cv_mae_in_sample": scores["in_sample_mae_report"]["mae"],
                       "wall_time_s": blend.meta.get("wall_time_s")}
    submission = cfg.experiment_dir / cfg.blend.submission_file
    if submission.exists():
        score = test_score(cfg.data_dir, test_ids, pd.read_csv(submission).to_numpy(float), spec)
        if score is not None:
            result["test"] = {"mae": score["mae"], "floor_mae": score["floor_mae"],
                              "ratio_to_floor": score["ratio_to_floor"]}
    return result


def run(config: str, data: str, exp: str, learners: list[str] | None = None,
        extra: list[str] | None = None, execute: bool = True) -> dict[str, Any]:
    """Run the pipeline (unless `execute` is False) and return its figures as a dict.

    Returns
    -------
    dict with ``runs`` (stage, run, wall_time_s from meta.json, cv_mae), ``blend`` (nested and
    in-sample CV MAE), ``test`` (MAE, floor, ratio; only with an oracle), ``command_wall_s``
    (seconds per stage command this call, empty with `execute` False) and ``machine``.
    """
    learners = learners or []  # none: the config's stage2.learners
    overrides = [a for a in (extra or []) if "=" in a and not a.startswith("-")]
    cfg = load_config(config, [*overrides, f"data_dir={data}", f"experiment={exp}"])
    times = run_stages(stage_commands(config, data, exp, learners, extra or [])) if execute else {}
    return {**collect(cfg), "command_wall_s": times, "machine": machine_info()}


def to_markdown(result: dict[str, Any]) -> str:
    """The README table: one row per run and per blend score, then test and machine lines."""
    times = result.get("command_wall_s", {})
    test = result.get("test")
    lines = ["| stage | run | CV MAE (OOF) | test MAE | wall time (s) |", "|---|---|---|---|---|"]
    for entry in sorted(result["runs"], key=lambda e: (e["stage"], e["run"])):
        lines.append(f"| {entry['stage']} | {entry['run']} | {fmt_cell(entry.get('cv_mae'))} | "
                     f"{fmt_cell(entry.get('test_mae'))} | {fmt_cell(entry.get('wall_time_s'), 1)} |")
    blend = result.get("blend")
    if blend:
        lines.append(f"| blend | {blend['run']} nested | {fmt_cell(blend['cv_mae_nested'])} | "
                     f"{fmt_cell(test['mae'] if test else None)} | {fmt_cell(blend.get('wall_time_s'), 1)} |")
        lines.append(f"| blend | {blend['run']} in-sample | {fmt_cell(blend['cv_mae_in_sample'])} | | |")
    notes = []
    scored = [e for e in result["runs"] if e.get("cv_mae") is not None]
    if blend and scored:
        best = min(scored, key=lambda e: e["cv_mae"])
        gain = (f"Blend nested CV = **{blend['cv_mae_nested'] / best['cv_mae']:.3f}** x the best "
                f"single model's ({best['stage']}/{best['run']}, CV {fmt_cell(best['cv_mae'])})")
        if test and best.get("test_mae"):
            gain += f"; test {test['mae'] / best['test_mae']:.3f} x its test MAE"
        notes.append(gain + ".")
    if test:
        notes.append(f"Test MAE {fmt_cell(test['mae'])}, oracle floor {fmt_cell(test['floor_mae'])}, "
                     f"ratio **{fmt_cell(test['ratio_to_floor'], 3)}** x floor.")
    if times:
        notes.append("Command wall time (s), including resumed or skipped work: "
                     + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
                     + f"; total {sum(times.values()):.1f}.")
    notes.append(f"{machine_note(result['machine'])} "
                 f"Experiment `{result['experiment']}` on `{result['data_dir']}`.")
    return "\n".join(lines) + "\n\n" + "\n\n".join(notes) + "\n"


def machine_note(m: dict[str, Any]) -> str:
    """The machine line under a benchmark table (from `machine_info()`)."""
    return (f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB RAM, "
            f"GPU {m['gpu'] or 'none'}, {m['os']}, Python {m['python']}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--exp", default="demo")
    parser.add_argument("--learner", action="append", help="stage-2 learner(s) (default lightgbm)")
    parser.add_argument("--no-run", action="store_true", help="only read a finished experiment")
    parser.add_argument("--readme", help="README to write the table into")
    parser.add_argument("extra", nargs="*", help="config overrides key=value for every stage")
    args = parser.parse_args(argv)
    result = run(args.config, args.data, args.exp, args.learner, args.extra, execute=not args.no_run)
    print_and_write(result, to_markdown(result), args.readme, MARKER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
