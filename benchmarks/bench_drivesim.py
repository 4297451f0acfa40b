"""drivesim speed: rows/s with one worker (PNG frames included) and with two, and peak memory.

`python -m benchmarks.bench_drivesim [--out DIR] [--train-scenes N] [--test-scenes M]` prints
the figures as JSON; `run(out_dir)` returns them for `make bench`, with the measured figures of
`make full-data` (wall time, peak memory, disk size) where data/full exists;
`--full-scale data/full` reports only those, generating nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import time
from pathlib import Path

import pandas as pd

from drivesim.writer import generate
from trajstack.config import load_config

FULL_SCENES = 9053 + 468
FULL_DATA_DIR = "data/full"  # where `make full-data` writes


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
    measured = full_scale(FULL_DATA_DIR)  # the figures of `make full-data`, where it ran
    if measured is not None:
        result["full_scale_measured"] = measured
    return result


TIME_FIELDS = {  # GNU `time -v` lines -> figure names
    "Elapsed (wall clock) time (h:mm:ss or m:ss)": "wall",
    "Maximum resident set size (kbytes)": "peak_rss_kb",
    "User time (seconds)": "user_s",
    "System time (seconds)": "system_s",
}


def _parse_time_v(path: Path) -> dict:
    """Wall time (s), peak RSS (MiB, the largest process) and CPU seconds from GNU `time -v` output."""
    raw = {}
    for line in path.read_text().splitlines():
        key, _, val = line.strip().rpartition(": ")
        if key in TIME_FIELDS:
            raw[TIME_FIELDS[key]] = val.strip()
    parts = [float(p) for p in raw.get("wall", "0").split(":")]
    wall = sum(p * 60**i for i, p in enumerate(reversed(parts)))
    out = {"wall_min": round(wall / 60, 1)}
    if "peak_rss_kb" in raw:
        out["peak_rss_mb_largest_process"] = round(int(raw["peak_rss_kb"]) / 1024, 1)
    if "user_s" in raw and "system_s" in raw:
        out["cpu_min"] = round((float(raw["user_s"]) + float(raw["system_s"])) / 60, 1)
    return out


def full_scale(data_dir: str | Path) -> dict | None:
    """Figures of a dataset written by `make full-data` (without generating anything).

    Parameters
    ----------
    data_dir : the dataset folder; its GNU `time -v` record is read from ``<data_dir>.time``.

    Returns
    -------
    None when the dataset is absent or unfinished; else rows and scenes per split, disk size
    (MiB, files counted) and, where recorded, wall minutes, peak RSS and CPU minutes.
    """
    root = Path(data_dir)
    spec = load_config("atmacup18").dataset
    if not (root / spec.train_file).is_file():
        return None
    out: dict = {"data_dir": str(root)}
    for split, name in (("train", spec.train_file), ("test", spec.test_file)):
        ids = pd.read_csv(root / name, usecols=[spec.id_column], dtype=str)[spec.id_column]
        out[f"{split}_rows"] = int(len(ids))
        out[f"{split}_scenes"] = int(ids.str.split("_").str[0].nunique())
    size = n_files = 0
    for dirpath, _, files in os.walk(root):
        for f in files:
            size += os.stat(os.path.join(dirpath, f)).st_blocks * 512  # on disk, as du counts
            n_files += 1
    out.update(disk_mb=round(size / 2**20, 1), files=n_files)
    timing = root.with_name(root.name + ".time")
    if timing.is_file():
        out.update(_parse_time_v(timing))
        rows = out["train_rows"] + out["test_rows"]
        if "cpu_min" in out:
            out["cpu_ms_per_row"] = round(out["cpu_min"] * 60_000 / rows, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="outputs/bench_drivesim")
    parser.add_argument("--train-scenes", type=int, default=48)
    parser.add_argument("--test-scenes", type=int, default=16)
    parser.add_argument("--full-scale", metavar="DIR", default=None,
                        help="only report the figures of a dataset made by `make full-data` (e.g. data/full)")
    args = parser.parse_args()
    if args.full_scale:
        print(json.dumps(full_scale(args.full_scale), indent=2))
        return
    print(json.dumps(run(args.out, args.train_scenes, args.test_scenes), indent=2))


if __name__ == "__main__":
    main()
