"""drivesim speed: rows/s with one worker (PNG frames included) and with two, and peak memory.

`python -m benchmarks.bench_drivesim [--out DIR] [--train-scenes N] [--test-scenes M]` prints
the figures as JSON; `run(out_dir)` returns them for `make bench`.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

from drivesim.writer import generate
from trajstack.config import load_config

FULL_SCENES = 9053 + 468


def _peak_rss_mb() -> dict[str, float]:
    """Peak resident memory (MiB) of this process and of its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"self": round(own, 1), "largest_worker": round(kids, 1)}


def _cpu_seconds() -> float:
    """CPU time used so far by this process and its finished children (the workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _timed(out: Path, n_train: int, n_test: int, workers: int, spec) -> tuple[float, float, dict]:
    shutil.rmtree(out, ignore_errors=True)
    t0, c0 = time.perf_counter(), _cpu_seconds()
    report = generate(out, n_train, n_test, seed=0, spec=spec, workers=workers, progress=False)
    return time.perf_counter() - t0, _cpu_seconds() - c0, report


def run(out_dir: str | Path, n_train: int = 48, n_test: int = 16) -> dict:
    """Time dataset generation with 1 and 2 workers (frames, JSON, oracle included).

    Parameters
    ----------
    out_dir : scratch folder (emptied and reused).
    n_train, n_test : scenes per split for each timing.

    Returns
    -------
    dict with rows, seconds and rows/s per worker count, the peak RSS, the floor and the
    constant-velocity baseline of the generated test split, and an estimate of the time for
    the full real scale (9,053 + 468 scenes) with two workers.
    """
    spec = load_config("atmacup18").dataset
    out = Path(out_dir)
    result: dict = {"train_scenes": n_train, "test_scenes": n_test}
    for workers in (1, 2):
        secs, cpu, report = _timed(out / f"w{workers}", n_train, n_test, workers, spec)
        n_rows = report["train_rows"] + report["n_rows"]
        # CPU ms per row is the figure that survives a busy machine; rows/s is wall clock
        result[f"workers_{workers}"] = {"rows": n_rows, "seconds": round(secs, 2),
                                        "rows_per_s": round(n_rows / secs, 1),
                                        "cpu_ms_per_row": round(1000 * cpu / n_rows, 1)}
    result["peak_rss_mb"] = _peak_rss_mb()
    result["floor_mae"] = report["floor_mae"]
    result["constant_velocity_mae"] = report["constant_velocity_mae"]
    result["constant_velocity_ratio_to_floor"] = report["constant_velocity_ratio_to_floor"]
    rows_per_scene = result["workers_2"]["rows"] / (n_train + n_test)
    full_rows = FULL_SCENES * rows_per_scene
    result["full_scale_estimate_min_2_workers"] = round(full_rows / result["workers_2"]["rows_per_s"] / 60, 1)
    # the same on two otherwise idle cores: total CPU time shared by two workers
    result["full_scale_estimate_min_2_idle_cores"] = round(
        full_rows * result["workers_1"]["cpu_ms_per_row"] / 1000 / 2 / 60, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="outputs/bench_drivesim")
    parser.add_argument("--train-scenes", type=int, default=48)
    parser.add_argument("--test-scenes", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps(run(args.out, args.train_scenes, args.test_scenes), indent=2))


if __name__ == "__main__":
    main()
