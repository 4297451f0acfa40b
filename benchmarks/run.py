"""`make bench`: run the benchmarks and write each one's table into README.md.

Each benchmark module exposes `run(...) -> dict`; this script calls the chosen ones and puts
their figures between `<!-- bench:NAME -->` markers, so README figures are produced, never
typed. Benchmarks measure on this machine as it is; quote ratios and medians, not one run.

    python -m benchmarks.run --data data/demo --readme README.md [--only cache,stage1]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.bench_pipeline import machine_info
from benchmarks.readme_table import update_readme_table
from trajstack.artifacts import ArtifactError
from trajstack.config import load_config


def _ladder(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_ladder

    return bench_ladder.run(args.config, args.data, args.exp)


def _ladder_full(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_ladder
    from benchmarks.bench_stage2 import FULL_CONFIG

    # Its own experiments (full, full-ladder-telemetry, full-ladder-perception): every command
    # resumes, so a stopped run picks up where it was.
    return bench_ladder.run(FULL_CONFIG, args.full_data or "data/full", "full")


def _cache(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_cache

    with tempfile.TemporaryDirectory() as cache_root:
        return bench_cache.run(args.data, cache_root, config=args.config)


def _drivesim(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_drivesim

    with tempfile.TemporaryDirectory() as out:
        return bench_drivesim.run(out)


def _stage1(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_stage1

    return bench_stage1.run(load_config(args.config, [f"data_dir={args.data}"]))


def _stage2(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_stage2

    result = bench_stage2.run(data_dir=args.data, config=args.config)
    result["markdown"] = bench_stage2.to_markdown(result)
    return result


def _stage2_full(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_stage2

    # Resumable in outputs/bench_stage2/ (feature cache, finished rows): rerun after a stop.
    result = bench_stage2.run(data_dir=None, full_data_dir=args.full_data or "data/full")
    result["markdown"] = bench_stage2.to_markdown(result)
    return result


def _toolbox(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_toolbox

    return bench_toolbox.run(args.config, args.data, args.exp)


def _vlm(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_vlm

    return bench_vlm.run()


def _horizon(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_horizon

    result = bench_horizon.run(args.config, args.data)
    result["markdown"] = bench_horizon.to_markdown(result)
    return result


def _z_limits(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_z_limits

    result = bench_z_limits.run(args.config, args.data)
    result["markdown"] = bench_z_limits.to_markdown(result)
    return result


def _pipeline(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_pipeline

    result = bench_pipeline.run(args.config, args.data, args.exp)
    result["markdown"] = bench_pipeline.to_markdown(result)
    return result


def _blend(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks import bench_blend

    result = bench_blend.run(args.config, args.data, args.exp)
    result["markdown"] = bench_blend.to_markdown(result)
    return result


BENCHMARKS: dict[str, tuple[str, Callable[[argparse.Namespace], dict[str, Any]]]] = {
    "pipeline": ("`make stage1 stage2 blend` on the demo data", _pipeline),
    # After the pipeline: it refits blend weights on its runs (seconds).
    "blend": ("every single model and blend variant, nested CV and test", _blend),
    "cache": ("image cache: build and loader speed", _cache),
    "drivesim": ("drivesim generation speed", _drivesim),
    "stage1": ("stage-1 training and loader speed (CPU)", _stage1),
    "stage2": ("stage-2 wall time, 18 targets x 5 folds per learner", _stage2),
    # Only when named (BENCH=stage2_full): needs `make full-data` and about an hour on 2 cores.
    "stage2_full": ("stage 2 at full scale: learners, joblib vs Ray, blend", _stage2_full),
    "toolbox": ("stage-1 toolbox ablation, fold 0, each switch on vs off", _toolbox),
    "vlm": ("VLM extractor speed, tiny random Qwen2-VL (CPU)", _vlm),
    # Only when named (BENCH=horizon): drivesim data of seed 0 (it simulates the scenes again).
    "horizon": ("horizon-row estimators against drivesim's true horizon row", _horizon),
    # Only when named (BENCH=z_limits): the same, and four z-only stage-2 fits (minutes).
    "z_limits": ("z-only stage 2 given drivesim's true horizon / mount rows: what holds z back", _z_limits),
    # Last: it reuses the pipeline's runs, and it stops with a message on data without
    # oracle/camera_state.csv (drivesim v1) after the others have written their tables.
    "ladder": ("telemetry-only stage 2 -> stack -> perception oracle, share captured", _ladder),
    # Only when named (BENCH=ladder_full): the ladder on data/full with configs/cpu_full.yaml
    # (stage 1 off), about an hour on 2 cores.
    "ladder_full": ("the ladder at full scale (configs/cpu_full.yaml, data/full)", _ladder_full),
}


# Benchmarks run only when `--only` names them (long, or needing data the demo does not make).
ON_REQUEST = ("stage2_full", "ladder_full", "horizon", "z_limits")


def to_markdown(title: str, result: dict[str, Any]) -> str:
    """A two-column table of the (flattened) figures, headed by the machine and date."""
    if "markdown" in result:
        return str(result["markdown"])
    rows = [f"**{title}** — {_machine_line()}", "", "| figure | value |", "|---|---|"]
    for key, value in _flatten(result):
        rows.append(f"| {key} | {_fmt(value)} |")
    return "\n".join(rows)


def _flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(_flatten(value, f"{name}."))
        elif not isinstance(value, list | tuple):
            out.append((name, value))
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def _machine_line() -> str:
    info = machine_info()
    gpu = f", {info['gpu']}" if info.get("gpu") else ", no GPU"
    return f"{info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB{gpu}, {dt.date.today()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--exp", default="demo")
    parser.add_argument("--full-data", default=None,
                        help="the full-scale dataset of stage2_full and ladder_full (default data/full)")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--only", default=",".join(k for k in BENCHMARKS if k not in ON_REQUEST),
                        help=f"comma list of {', '.join(BENCHMARKS)}")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    for name in chosen:
        title, bench = BENCHMARKS[name]
        print(f"== bench {name}: {title}", flush=True)
        try:
            result = bench(args)
        except ArtifactError as err:  # e.g. the ladder on data without oracle/camera_state.csv
            print(f"bench {name}: {err}", file=sys.stderr)
            return 2
        print(json.dumps({k: v for k, v in result.items() if k != "markdown"}, indent=2,
                         default=str))
        update_readme_table(Path(args.readme), name, to_markdown(title, result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
