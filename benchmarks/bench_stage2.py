"""Stage-2 benchmark: per learner, 18 targets x K folds: wall and CPU time, peak memory, CV MAE
and test MAE; at full scale also the Ray executor against joblib on the same work.

Times `stage2_gbdt.train.fit_learner` (the (target, fold) fits, parallel as configured) after
the feature table is built (timed separately). On the demo data the features are the config's
without stage 1 (`features.stage1=false`, so the figure does not depend on a stage-1 run); on a
full-scale dataset (~45,000 train rows, `make full-data`) only the telemetry-side builders
run (those that read no frames, as the ladder's telemetry reference), and each learner is
timed with joblib and, for `ray_learners`, with the Ray executor on a local cluster. Work goes
to a temporary output folder, never into outputs/. CPU seconds and peak memory are summed over
the process tree (workers included) from /proc, so they stay meaningful on a busy machine
where wall time does not; peak memory is the sum of the processes' resident sets (shared pages
counted once per process: an upper bound). Test MAE reads `<data>/oracle/` (benchmarks only).

    python -m benchmarks.bench_stage2 --data data/demo --full-data data/full
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_ladder import frame_free_builders
from benchmarks.bench_pipeline import machine_info
from ensembling.oracle import test_score
from stage2_gbdt.params import learner_params
from stage2_gbdt.train import Stage2Data, fit_learner, prepare
from trajstack.config import load_config

LEARNERS = ("lightgbm", "xgboost", "catboost", "catboost_multi")


class ProcessTreeMonitor:
    """Samples this process and its descendants (/proc, Linux): peak summed RSS and CPU seconds.

    CPU seconds are the last value seen per process, so workers that exit between samples lose at
    most one interval. Elsewhere (no /proc) both figures are None.
    """

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self.peak_rss = 0
        self._cpu: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._start_cpu = 0.0

    def _stats(self) -> dict[int, tuple[int, float, int]]:
        """pid -> (parent pid, CPU seconds, RSS bytes) of every readable process."""
        out = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            fields = text[text.rindex(")") + 2:].split()
            out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / self._tick,
                                    int(fields[21]) * self._page)
        return out

    def _sample(self) -> None:
        stats = self._stats()
        tree, frontier = {os.getpid()}, [os.getpid()]
        while frontier:
            parent = frontier.pop()
            children = [pid for pid, (ppid, _, _) in stats.items() if ppid == parent and pid not in tree]
            tree.update(children)
            frontier.extend(children)
        self.peak_rss = max(self.peak_rss, sum(stats[pid][2] for pid in tree if pid in stats))
        for pid in tree:
            if pid in stats:
                self._cpu[pid] = stats[pid][1]

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> ProcessTreeMonitor:
        if Path("/proc/self/stat").exists():
            self._sample()
            self._start_cpu = sum(self._cpu.values())
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._stop.set()
            self._thread.join()
            self._sample()

    @property
    def cpu_s(self) -> float | None:
        return sum(self._cpu.values()) - self._start_cpu if self._cpu else None

    @property
    def peak_rss_mb(self) -> float | None:
        return self.peak_rss / 2**20 if self.peak_rss else None


def measure(data: Stage2Data, key: str, config: str, overrides: list[str]) -> dict[str, Any]:
    """Fit learner `key` on the prepared data under `config` + `overrides` (stage-2 options
    such as the executor or seeds; the features stay those prepared); its figures."""
    cfg = load_config(config, overrides)
    data = Stage2Data(cfg, data.folds, data.features, data.labels, data.baseline_train,
                      data.baseline_test)
    started = time.perf_counter()
    with ProcessTreeMonitor() as monitor:
        result = fit_learner(data, key, learner_params(cfg, key))
    wall = time.perf_counter() - started
    ids = data.features.test[cfg.dataset.id_column].to_numpy()
    test = test_score(cfg.data_dir, ids, result.test, cfg.dataset)
    return {
        "wall_s": round(wall, 1),
        "cpu_s": None if monitor.cpu_s is None else round(monitor.cpu_s, 1),
        "peak_rss_mb": None if monitor.peak_rss_mb is None else round(monitor.peak_rss_mb),
        "cv_mae": round(result.scores["mae"], 5),
        "test_mae": None if test is None else round(test["mae"], 5),
        "best_iteration_mean": round(float(result.best_iterations.to_numpy(float).mean()), 1),
    }


def time_dataset(data_dir: str | Path, learners: tuple[str, ...], config: str,
                 overrides: list[str], output_dir: str | Path,
                 variants: dict[str, list[str]] | None = None,
                 ray_learners: tuple[str, ...] = ()) -> dict[str, Any]:
    """Feature build time, then one row per learner (and per variant / executor).

    Parameters
    ----------
    variants : extra rows, name -> overrides on top of the learner's (e.g. `{"seeds=3":
        ["stage2.seeds=3"]}`), run for the first learner only.
    ray_learners : learners timed a second time with `stage2.executor=ray` (a local cluster of
        `stage2.n_jobs` CPUs, started and stopped inside the timing).
    """
    overrides = [f"data_dir={data_dir}", f"output_dir={output_dir}", *overrides]
    cfg = load_config(config, overrides)
    started = time.perf_counter()
    with ProcessTreeMonitor() as monitor:
        data = prepare(cfg, log=lambda line: None)
    out: dict[str, Any] = {
        "data_dir": str(data_dir), "train_rows": len(data.features.train),
        "test_rows": len(data.features.test), "features": len(data.features.feature_columns),
        "builders": list(cfg.features.builders), "folds": data.folds.n_splits,
        "targets": len(cfg.dataset.target_columns), "n_jobs": cfg.stage2.n_jobs,
        "threads_per_fit": cfg.stage2.threads_per_fit,
        "feature_build_s": round(time.perf_counter() - started, 1),
        "feature_build_peak_rss_mb": monitor.peak_rss_mb and round(monitor.peak_rss_mb),
        "learners": {},
    }
    rows: list[tuple[str, str, list[str]]] = [(key, key, []) for key in learners]
    rows += [(f"{learners[0]} {name}", learners[0], extra)
             for name, extra in (variants or {}).items() if learners]
    rows += [(f"{key} ray", key, ["stage2.executor=ray"]) for key in ray_learners]
    for name, key, extra in rows:
        out["learners"][name] = measure(data, key, config, [*overrides, *extra])
        print(json.dumps({"data": str(data_dir), "row": name, **out["learners"][name]}), flush=True)
    return out


def run(data_dir: str | Path = "data/demo", full_data_dir: str | Path | None = None,
        learners: tuple[str, ...] = LEARNERS, config: str = "demo",
        overrides: list[str] | None = None, seeds: int = 3,
        ray_learners: tuple[str, ...] = ("lightgbm",)) -> dict[str, Any]:
    """Time every learner on the demo data and (if given) on the full-scale data.

    Parameters
    ----------
    data_dir : the demo dataset (None: skip it).
    full_data_dir : a full-scale dataset (~45,000 train rows), or None to skip it.
    learners : learner keys to time.
    config : config whose stage2 / features sections are timed (demo: its small trees).
    overrides : extra `key=value` config overrides (e.g. stage2.n_jobs=1), applied after
        `features.stage1=false` (stage-1 runs do not exist in the temporary output folder).
    seeds : on the demo, the first learner again with `stage2.seeds=seeds` (0 or 1: skip).
    ray_learners : at full scale, learners timed again with the Ray executor.
    """
    overrides = ["features.stage1=false", *(overrides or [])]
    result: dict[str, Any] = {"machine": machine_info(), "config": config, "overrides": overrides}
    variants = {f"seeds={seeds}": [f"stage2.seeds={seeds}"]} if seeds > 1 else {}
    with tempfile.TemporaryDirectory(prefix="bench_stage2_") as tmp:
        if data_dir is not None:
            result["demo"] = time_dataset(data_dir, learners, config, overrides, tmp, variants)
        if full_data_dir is not None:
            builders = frame_free_builders(list(load_config(config).features.builders))
            full = [*overrides, "features.builders=" + json.dumps(builders)]
            result["full_scale"] = time_dataset(full_data_dir, learners, config, full, tmp,
                                                ray_learners=ray_learners)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo", help="demo dataset ('' to skip it)")
    parser.add_argument("--full-data", default=None,
                        help="full-scale dataset (~45k train rows; telemetry-side features)")
    parser.add_argument("--learners", default=",".join(LEARNERS))
    parser.add_argument("--ray-learners", default="lightgbm",
                        help="learners also timed with the Ray executor at full scale ('' none)")
    parser.add_argument("--seeds", type=int, default=3,
                        help="demo: the first learner again with stage2.seeds=N (1: skip)")
    parser.add_argument("--config", default="demo")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    result = run(args.data or None, args.full_data, tuple(args.learners.split(",")), args.config,
                 args.overrides, args.seeds,
                 tuple(k for k in args.ray_learners.split(",") if k))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
