"""Stage-2 benchmark: wall time of 18 targets x K folds per learner, and the CV MAE it reaches.

Times `stage2_gbdt.train.fit_learner` (the (target, fold) fits, parallel as configured) after
the feature table is built (timed separately), on the demo data and optionally on a
full-scale drivesim dataset (~45,000 train rows; `python -m drivesim --no-images` makes one).
Features default to telemetry-only (`features.stage1=false`), so the figure does not depend on
a stage-1 run; work goes to a temporary output folder, never into outputs/.

    python -m benchmarks.bench_stage2 --data data/demo --full-data data/bench_full
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_pipeline import machine_info
from stage2_gbdt.params import learner_params
from stage2_gbdt.train import fit_learner, prepare
from trajstack.config import load_config

LEARNERS = ("lightgbm", "xgboost", "catboost")


def time_dataset(data_dir: str | Path, learners: tuple[str, ...], config: str,
                 overrides: list[str], output_dir: str | Path) -> dict[str, Any]:
    """Feature build time, then per learner: wall time, CV MAE, mean best iteration."""
    cfg = load_config(config, [f"data_dir={data_dir}", f"output_dir={output_dir}", *overrides])
    started = time.perf_counter()
    data = prepare(cfg, log=lambda line: None)
    out: dict[str, Any] = {
        "data_dir": str(data_dir), "train_rows": len(data.features.train),
        "test_rows": len(data.features.test), "features": len(data.features.feature_columns),
        "folds": data.folds.n_splits, "targets": len(cfg.dataset.target_columns),
        "n_jobs": cfg.stage2.n_jobs, "threads_per_fit": cfg.stage2.threads_per_fit,
        "feature_build_s": round(time.perf_counter() - started, 1), "learners": {},
    }
    for key in learners:
        params = learner_params(cfg, key)
        started = time.perf_counter()
        result = fit_learner(data, key, params)
        wall = time.perf_counter() - started
        out["learners"][key] = {
            "wall_s": round(wall, 1),
            "s_per_fit": round(wall / (out["folds"] * out["targets"]), 2),
            "cv_mae": round(result.scores["mae"], 5),
            "best_iteration_mean": round(float(result.best_iterations.to_numpy(float).mean()), 1),
        }
        print(json.dumps({"data": str(data_dir), "learner": key, **out["learners"][key]}), flush=True)
    return out


def run(data_dir: str | Path = "data/demo", full_data_dir: str | Path | None = None,
        learners: tuple[str, ...] = LEARNERS, config: str = "demo",
        overrides: list[str] | None = None) -> dict[str, Any]:
    """Time every learner on the demo data and (if given) on the full-scale data.

    Parameters
    ----------
    data_dir : the demo dataset.
    full_data_dir : a full-scale dataset (~45,000 train rows), or None to skip it.
    learners : learner keys to time.
    config : config whose stage2 / features sections are timed (demo: its small trees).
    overrides : extra `key=value` config overrides (e.g. stage2.n_jobs=1), applied after
        `features.stage1=false` (stage-1 runs do not exist in the temporary output folder).
    """
    overrides = ["features.stage1=false", *(overrides or [])]
    result: dict[str, Any] = {"machine": machine_info(), "config": config, "overrides": overrides}
    with tempfile.TemporaryDirectory(prefix="bench_stage2_") as tmp:
        result["demo"] = time_dataset(data_dir, learners, config, overrides, tmp)
        if full_data_dir is not None:
            result["full_scale"] = time_dataset(full_data_dir, learners, config, overrides, tmp)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--full-data", default=None, help="full-scale dataset (~45k train rows)")
    parser.add_argument("--learners", default=",".join(LEARNERS))
    parser.add_argument("--config", default="demo")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    result = run(args.data, args.full_data, tuple(args.learners.split(",")), args.config,
                 args.overrides)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
