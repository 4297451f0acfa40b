"""Stage-2 benchmark: per learner, 18 targets x K folds: wall and CPU time, peak memory, CV MAE
and test MAE; at full scale also the Ray executor against joblib on the same work, and the blend.

Times `stage2_gbdt.train.fit_learner` (the (target, fold) fits, parallel as configured) after
the feature table is built (timed separately). On the demo data the features are the config's
without stage 1 (`features.stage1=false`, so the figure does not depend on a stage-1 run), in a
temporary output folder. At full scale (`make full-data`, ~44,000 train rows) the config is
`configs/cpu_full.yaml` (its own builders, image statistics included; stage 1 off as on the
demo, `run` passing `features.stage1=false` to both, so no full-scale stage-1 run is needed) and
the work
folder persists (`outputs/bench_stage2/` by default): the feature table is built once and cached
there (its first build timed and kept), and each row's figures and predictions are saved as it
finishes, so a rerun resumes and redoes only rows whose config or features changed. Each
learner is timed with joblib; `ray_learners` again with the Ray executor on a local cluster,
each Ray row beside a joblib row on exactly the same work (the ratio Ray / joblib, Ray's
start-up timed apart) and its predictions checked against that row's; slow learners can be
timed on a named subset of the targets (`subset_learners`, labelled so in the table, never
scaled up); then the blend of the learners' OOF predictions (nested CV) and the sum stage 2 +
blend.

CPU seconds and peak memory are summed over the process tree (workers included) from /proc, so
they stay meaningful on a busy machine where wall time does not (the 1-minute load average is
recorded beside each row); peak memory is the sum of the processes' resident sets (shared pages
counted once per process: an upper bound; Ray's object store is shared memory, counted in each
process that maps it). A local Ray started here is in that tree: its GCS server, raylet, agents
and workers all descend from this process; a cluster reached through `stage2.ray_address` is
not, and its figures would leave out the work. Test MAE reads `<data>/oracle/` (benchmarks only).

    python -m benchmarks.bench_stage2 --data data/demo
    python -m benchmarks.bench_stage2 --data '' --full-data data/full --readme README.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from joblib.externals.loky import get_reusable_executor

from benchmarks.bench_pipeline import machine_info, machine_note
from benchmarks.readme_table import print_and_write
from ensembling.blend import optimizer_params
from ensembling.fitting import fit_blend
from ensembling.oracle import test_score
from stage2_gbdt.cv import CVResult
from stage2_gbdt.parallel import ray_session
from stage2_gbdt.params import learner_params, run_config
from stage2_gbdt.train import Stage2Data, fit_learner, prepare
from trajstack.config import load_config
from trajstack.io import atomic_path, data_hash, read_json, write_json_atomic
from trajstack.resources import ProcessTreeMonitor

LEARNERS = ("lightgbm", "xgboost", "catboost", "catboost_multi")
FULL_CONFIG = "configs/cpu_full.yaml"
FULL_WORK_DIR = "outputs/bench_stage2"
# Targets a slow learner is timed on at full scale when asked: each axis at the nearest and the
# farthest horizon (the far ones need the most rounds, the near ones the fewest).
SUBSET_TARGETS = ("x_0", "y_0", "z_0", "x_5", "y_5", "z_5")
STATE_FILE = "rows.json"


def load_1m() -> float | None:
    """The 1-minute load average (None where the OS has none): how busy the cores were."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def per_target_test_mae(data: Stage2Data, test: np.ndarray, names: list[str]) -> dict[str, float] | None:
    """Test MAE of each of `names` for `test` (n_test, len(names)) predictions, from the
    dataset's oracle labels (None where it has none)."""
    spec = data.cfg.dataset
    # The oracle scores all target columns: the ones not fitted stay NaN and are not quoted.
    full = np.full((len(data.features.test), len(spec.target_columns)), np.nan)
    full[:, [spec.target_columns.index(t) for t in names]] = test
    scored = test_score(data.cfg.data_dir, data.features.test[spec.id_column].to_numpy(), full, spec)
    return None if scored is None else {t: scored["mae_report"]["per_target"][t] for t in names}


def measure(data: Stage2Data, key: str, config: str, overrides: list[str],
            targets: list[str] | None = None) -> tuple[dict[str, Any], CVResult]:
    """Fit learner `key` on the prepared data under `config` + `overrides` (stage-2 options
    such as the executor or seeds; the features stay those prepared), on `targets` (None: all);
    its figures and its predictions. With `stage2.executor=ray` the Ray session is started
    inside the timing but before the fit, its wall and CPU seconds until `ray.init` returns
    kept as `ray_start_s` / `ray_start_cpu_s` (its workers may still be starting then)."""
    cfg = load_config(config, overrides)
    data = replace(data, cfg=cfg)  # every prepared field kept (baselines, per-metre scales)
    spec = cfg.dataset
    names = list(targets or spec.target_columns)
    # joblib keeps its worker processes between calls: an earlier row's idle workers would be
    # counted in this row's memory, and this row would skip the worker start-up a fresh
    # `trajstack stage2` pays (as the Ray rows pay Ray's). Each row starts its own.
    get_reusable_executor().shutdown(wait=True)
    load_start = load_1m()
    started = time.perf_counter()
    start_up: dict[str, Any] = {}
    with ProcessTreeMonitor() as monitor, contextlib.ExitStack() as session:
        if cfg.stage2.executor == "ray":
            # The Ray session the fit would start, started here so that its start-up (ray.init:
            # GCS, raylet, agents, workers) is timed apart; the fit then uses the running Ray.
            session.enter_context(ray_session(cfg.stage2.ray_address, cfg.stage2.n_jobs))
            start_up = {"ray_start_s": round(time.perf_counter() - started, 1),
                        "ray_start_cpu_s": monitor.cpu_s and round(monitor.cpu_s, 1)}
        result = fit_learner(data, key, learner_params(cfg, key), targets=targets)
    wall = time.perf_counter() - started
    cv_per_target = np.nanmean(np.abs(data.labels[names].to_numpy(float) - result.oof), axis=0)
    test_per_target = per_target_test_mae(data, result.test, names)
    figures = {
        "wall_s": round(wall, 1),
        "cpu_s": None if monitor.cpu_s is None else round(monitor.cpu_s, 1),
        "peak_rss_mb": None if monitor.peak_rss_mb is None else round(monitor.peak_rss_mb),
        "cv_mae": round(result.scores["mae"], 5),
        "test_mae": None if test_per_target is None else round(float(np.mean(list(test_per_target.values()))), 5),
        "best_iteration_mean": round(float(result.best_iterations.to_numpy(float).mean()), 1),
        "targets": names,
        "load_1m": [load_start, load_1m()],
        "cv_mae_per_target": {t: round(float(v), 5) for t, v in zip(names, cv_per_target, strict=True)},
        "test_mae_per_target": test_per_target and {t: round(v, 5) for t, v in test_per_target.items()},
        **start_up,
    }
    return figures, result


def time_dataset(data_dir: str | Path, learners: tuple[str, ...], config: str,
                 overrides: list[str], output_dir: str | Path,
                 variants: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Feature build time, then one row per learner (and per variant), all in `output_dir`.

    Parameters
    ----------
    variants : extra rows, name -> overrides on top of the learner's (e.g. `{"seeds=3":
        ["stage2.seeds=3"]}`), run for the first learner only.
    """
    overrides = [f"data_dir={data_dir}", f"output_dir={output_dir}", *overrides]
    cfg = load_config(config, overrides)
    started = time.perf_counter()
    with ProcessTreeMonitor() as monitor:
        data = prepare(cfg, log=lambda line: None)
    out: dict[str, Any] = {
        **_data_figures(data), "feature_build_s": round(time.perf_counter() - started, 1),
        "feature_build_peak_rss_mb": monitor.peak_rss_mb and round(monitor.peak_rss_mb),
        "learners": {},
    }
    rows: list[tuple[str, str, list[str]]] = [(key, key, []) for key in learners]
    rows += [(f"{learners[0]} {name}", learners[0], extra)
             for name, extra in (variants or {}).items() if learners]
    for name, key, extra in rows:
        out["learners"][name] = measure(data, key, config, [*overrides, *extra])[0]
        print(json.dumps({"data": str(data_dir), "row": name, **out["learners"][name]}), flush=True)
    return out


def _data_figures(data: Stage2Data) -> dict[str, Any]:
    cfg = data.cfg
    return {"data_dir": str(cfg.data_dir), "train_rows": len(data.features.train),
            "test_rows": len(data.features.test), "features": len(data.features.feature_columns),
            "builders": list(cfg.features.active_builders), "folds": data.folds.n_splits,
            "targets": len(cfg.dataset.target_columns), "n_jobs": cfg.stage2.n_jobs,
            "threads_per_fit": cfg.stage2.threads_per_fit}


def time_full_scale(data_dir: str | Path, config: str = FULL_CONFIG,
                    overrides: list[str] | None = None, work_dir: str | Path = FULL_WORK_DIR,
                    learners: tuple[str, ...] = ("lightgbm", "xgboost", "catboost"),
                    ray_learners: tuple[str, ...] = ("lightgbm",),
                    subset_learners: tuple[str, ...] = (),
                    subset_targets: tuple[str, ...] = SUBSET_TARGETS,
                    ray_targets: tuple[str, ...] | None = None,
                    ray_repeats: int = 1, blend: bool = True) -> dict[str, Any]:
    """Stage 2 at full scale, resumable: feature table, each learner (joblib), the Ray rows and
    the blend, with every finished row kept in `work_dir` and reused on a rerun.

    Parameters
    ----------
    data_dir : a full-scale dataset (`make full-data`).
    config, overrides : the config timed (its stage2 and features sections) and extra
        `key=value` overrides (`data_dir` and `output_dir` are set here).
    work_dir : output folder of the feature cache, the rows' figures (rows.json) and their
        predictions (predictions/*.npz); a row is reused when its config and features match.
    learners : learners timed with joblib, in order; the first is the reference.
    ray_learners : learners timed again with `stage2.executor=ray` (a local cluster of
        `stage2.n_jobs` CPUs, started and stopped inside the timing), on the same targets,
        their predictions compared with the joblib row's on the targets they share.
    ray_targets : the Ray rows' targets (None: those of the learner's joblib row); a subset
        keeps the comparison affordable on a busy machine (the predictions of a target do not
        depend on which other targets are fitted). Each Ray row is paired with a joblib row on
        exactly its targets (the learner's row, or a `<key> joblib` row timed just before it),
        its ratios to it kept in `vs_joblib`, its Ray start-up (`ray.init`) in `ray_start_s`.
    ray_repeats : how many times each (joblib, Ray) pair is timed, alternating (`#2`, ...): on
        a shared machine one pair can catch a burst of other work.
    subset_learners, subset_targets : learners fitted on `subset_targets` only (too slow for
        all targets); the table labels them and quotes the first learner on the same targets.
    blend : blend the learners' OOF predictions (on the targets they share) with the config's
        blend optimiser, nested CV as in `trajstack blend`, and time it.
    """
    work = Path(work_dir)
    overrides = [f"data_dir={data_dir}", f"output_dir={work}", *(overrides or [])]
    cfg = load_config(config, overrides)
    state_path = work / STATE_FILE
    state: dict[str, Any] = read_json(state_path) if state_path.exists() else {}
    rows_state = state.setdefault("rows", {})

    lines: list[str] = []
    load_start, started = load_1m(), time.perf_counter()
    with ProcessTreeMonitor() as monitor:
        data = prepare(cfg, log=lines.append)
    build = {"wall_s": round(time.perf_counter() - started, 1),
             "cpu_s": monitor.cpu_s and round(monitor.cpu_s, 1),
             "peak_rss_mb": monitor.peak_rss_mb and round(monitor.peak_rss_mb),
             "load_1m": [load_start, load_1m()], "log": lines}
    # A build (some builder not read from the cache) is the figure worth keeping; a table
    # cached before the benchmark first ran has no build time here (None).
    if any("(built" in line for line in lines):
        state["feature_build"] = {**build, "hash": data.features.hash}
        write_json_atomic(state_path, state)
    recorded = state.get("feature_build")
    out: dict[str, Any] = {**_data_figures(data), "config": config, "overrides": overrides,
                           "feature_build": (recorded if recorded and recorded["hash"] == data.features.hash
                                             else None),
                           "feature_load": build, "learners": {}}

    targets_of = {key: (list(subset_targets) if key in subset_learners else None) for key in learners}
    rows = [(key, key, [], targets_of[key]) for key in learners]
    # Each Ray row beside a joblib row on the same work (learner, targets, folds, n_jobs and
    # threads): the learner's own row when it fits exactly the Ray row's targets, else a row of
    # its own ("<key> joblib"), timed just before the Ray row so that both see the same load.
    ray_pairs: list[tuple[str, str]] = []  # (Ray row, joblib row on the same work)
    same_work_rows: set[str] = set()  # joblib rows there only for a Ray row: not summed, not blended
    for key in ray_learners:
        reference = targets_of.get(key) or cfg.dataset.target_columns
        if key not in learners or not set(ray_targets or reference) <= set(reference):
            raise ValueError(f"the Ray row of {key} is checked against its joblib row: list {key} "
                             f"in learners and give ray_targets among its targets {reference}")
        work_targets = targets_of.get(key) if ray_targets is None else list(ray_targets)
        for repeat in range(1, ray_repeats + 1):
            suffix = "" if repeat == 1 else f" #{repeat}"
            joblib_name = f"{key} joblib{suffix}"
            if repeat == 1 and list(work_targets or reference) == list(reference):
                joblib_name = key
            else:
                rows.append((joblib_name, key, [], work_targets))
                same_work_rows.add(joblib_name)
            rows.append((f"{key} ray{suffix}", key, ["stage2.executor=ray"], work_targets))
            ray_pairs.append((f"{key} ray{suffix}", joblib_name))
    predictions: dict[str, dict[str, np.ndarray]] = {}
    for name, key, extra, targets in rows:
        row_cfg = load_config(config, [*overrides, *extra])
        signature = data_hash([run_config(row_cfg, key, learner_params(row_cfg, key)),
                               data.features.hash, targets])
        pred_path = work / "predictions" / f"{name.replace(' ', '-')}-{signature}.npz"
        saved = rows_state.get(name)
        if saved and saved.get("signature") == signature and pred_path.exists():
            print(f"bench stage2 full: {name} done already ({pred_path})", flush=True)
        else:
            figures, result = measure(data, key, config, [*overrides, *extra], targets)
            with atomic_path(pred_path) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, oof=result.oof, test=result.test)
            rows_state[name] = {**figures, "signature": signature, "executor": row_cfg.stage2.executor,
                                "key": key}
            write_json_atomic(state_path, state)
            print(json.dumps({"data": str(data_dir), "row": name, **figures}), flush=True)
        with np.load(pred_path) as saved_predictions:
            predictions[name] = {k: saved_predictions[k] for k in ("oof", "test")}
        out["learners"][name] = {**rows_state[name], "same_work_as_ray": name in same_work_rows}
    for ray_name, joblib_name in ray_pairs:
        # The same seeds, tasks and threads: the executor must not change a single prediction.
        ray_row, joblib_row = out["learners"][ray_name], out["learners"][joblib_name]
        ray, ref = predictions[ray_name], predictions[joblib_name]
        shared = [joblib_row["targets"].index(t) for t in ray_row["targets"]]
        ray_row["max_abs_diff_vs_joblib"] = float(max(
            np.nanmax(np.abs(ray[k] - ref[k][:, shared])) for k in ("oof", "test")))
        ray_row["vs_joblib"] = {"row": joblib_name, **{
            figure: (None if not ray_row[figure] or not joblib_row[figure]
                     else round(ray_row[figure] / joblib_row[figure], 3))
            for figure in ("wall_s", "cpu_s", "peak_rss_mb")}}
    if blend and len(learners) > 1:
        out["blend"] = time_blend(data, {k: predictions[k] for k in learners},
                                  {k: out["learners"][k]["targets"] for k in learners})
    return out


def time_blend(data: Stage2Data, predictions: dict[str, dict[str, np.ndarray]],
               targets: dict[str, list[str]]) -> dict[str, Any]:
    """Blend the learners' OOF predictions on the targets all of them fitted (the config's
    optimiser, nested: each fold's weights fit on the other folds); its time and scores."""
    cfg, spec = data.cfg, data.cfg.dataset
    shared = [t for t in spec.target_columns if all(t in names for names in targets.values())]

    def stack(part: str) -> np.ndarray:
        return np.stack([pred[part][:, [targets[k].index(t) for t in shared]]
                         for k, pred in predictions.items()])

    oof, test = stack("oof"), stack("test")
    y = data.labels[shared].to_numpy(float)
    labelled = ~np.isnan(y).any(axis=1)
    fold = data.folds.fold_of(data.features.train[data.features.id_column])
    started = time.perf_counter()
    fit = fit_blend(oof[:, labelled], y[labelled], fold[labelled], test, cfg.blend.optimizer,
                    optimizer_params(cfg.blend), nested=True)
    wall = time.perf_counter() - started
    scored = per_target_test_mae(data, fit.test, shared)
    return {"models": list(predictions), "optimizer": cfg.blend.optimizer, "targets": shared,
            "wall_s": round(wall, 1),
            "cv_mae_nested": round(float(np.mean(np.abs(fit.oof_nested - y[labelled]))), 5),
            "test_mae": None if scored is None else round(float(np.mean(list(scored.values()))), 5),
            "weights": {k: [round(float(w), 3) for w in fit.weights[i]]
                        for i, k in enumerate(predictions)}}


def run(data_dir: str | Path | None = "data/demo", full_data_dir: str | Path | None = None,
        learners: tuple[str, ...] = LEARNERS, config: str = "demo",
        overrides: list[str] | None = None, seeds: int = 3,
        ray_learners: tuple[str, ...] = ("lightgbm",), full_config: str = FULL_CONFIG,
        work_dir: str | Path = FULL_WORK_DIR, full_learners: tuple[str, ...] | None = None,
        subset_learners: tuple[str, ...] = (),
        subset_targets: tuple[str, ...] = SUBSET_TARGETS,
        ray_targets: tuple[str, ...] | None = None, ray_repeats: int = 1) -> dict[str, Any]:
    """Time every learner on the demo data and (if given) stage 2 at full scale.

    Parameters
    ----------
    data_dir : the demo dataset (None: skip it).
    full_data_dir : a full-scale dataset (~45,000 train rows), or None to skip it.
    learners : learner keys to time on the demo.
    config : config whose stage2 / features sections are timed on the demo.
    overrides : extra `key=value` config overrides (e.g. stage2.n_jobs=1), applied after
        `features.stage1=false` (stage-1 runs do not exist in the benchmark's output folder).
    seeds : on the demo, the first learner again with `stage2.seeds=seeds` (0 or 1: skip).
    ray_learners, full_config, work_dir, subset_learners, subset_targets, ray_targets,
        ray_repeats : at full scale, see `time_full_scale`; `full_learners` are its learners (None: the demo's, less the
        multi-output one).
    """
    overrides = ["features.stage1=false", *(overrides or [])]
    result: dict[str, Any] = {"machine": machine_info(), "config": config, "overrides": overrides}
    variants = {f"seeds={seeds}": [f"stage2.seeds={seeds}"]} if seeds > 1 else {}
    if data_dir is not None:
        with tempfile.TemporaryDirectory(prefix="bench_stage2_") as tmp:
            result["demo"] = time_dataset(data_dir, learners, config, overrides, tmp, variants)
    if full_data_dir is not None:
        keys = full_learners or tuple(k for k in learners if k != "catboost_multi")
        result["full_scale"] = time_full_scale(
            full_data_dir, full_config, overrides, work_dir, keys, ray_learners,
            subset_learners, subset_targets, ray_targets, ray_repeats)
    return result


def to_markdown(result: dict[str, Any]) -> str:
    """The full-scale table (when measured), else the demo's; then the machine line."""
    parts = []
    if "full_scale" in result:
        parts.append(full_scale_markdown(result["full_scale"]))
    if "demo" in result:
        parts.append(demo_markdown(result["demo"]))
    return "\n\n".join(parts) + "\n\n" + machine_note(result["machine"]) + "\n"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _times(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _load(row: dict[str, Any]) -> str:
    return " / ".join(_fmt(v, 1) for v in row.get("load_1m") or [])


def demo_markdown(demo: dict[str, Any]) -> str:
    """One row per demo learner: wall, CPU, memory, CV and test MAE."""
    lines = [f"Demo, {demo['train_rows']} train rows, {demo['features']} features without stage 1, "
             f"{demo['targets']} targets x {demo['folds']} folds, feature build "
             f"{demo['feature_build_s']} s.", "",
             "| learner | wall s | CPU s | peak RSS MB | CV MAE | test MAE | rounds (mean) | load 1-min |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in demo["learners"].items():
        lines.append(f"| {name} | {row['wall_s']} | {_fmt(row['cpu_s'], 1)} | {_fmt(row['peak_rss_mb'])} | "
                     f"{_fmt(row['cv_mae'])} | {_fmt(row['test_mae'])} | {row['best_iteration_mean']} | "
                     f"{_load(row)} |")
    return "\n".join(lines)


def full_scale_markdown(full: dict[str, Any]) -> str:
    """Feature build, one row per learner and executor, the blend and the stage 2 + blend sum."""
    build, n_all = full["feature_build"], full["targets"]
    rows = full["learners"]
    reference = next(iter(rows))
    lines = [
        f"Full scale ({full['data_dir']}): {full['train_rows']} train / {full['test_rows']} test "
        f"rows, {full['features']} features ({', '.join(full['builders'])}; no stage 1), "
        f"{n_all} targets x {full['folds']} folds, {full['n_jobs']} parallel fits x "
        f"{full['threads_per_fit']} thread, config {full['config']}.",
        ("Feature table: built before this benchmark first ran (not timed here)" if build is None
         else f"Feature table: built in {build['wall_s']} s wall, {_fmt(build['cpu_s'], 0)} CPU-s, "
              f"peak {_fmt(build['peak_rss_mb'])} MB (load {_load(build)})")
        + f"; read back from the cache in {full['feature_load']['wall_s']} s.", "",
        "| run | targets | executor | wall s | CPU s | peak RSS MB | CV MAE | test MAE | "
        "rounds (mean) | load 1-min start / end |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    stage2_wall = 0.0
    for name, row in rows.items():
        subset = len(row["targets"]) < n_all
        targets = f"{len(row['targets'])} of {n_all} ({', '.join(row['targets'])})" if subset else str(n_all)
        executor = row["executor"]
        if "max_abs_diff_vs_joblib" in row:
            diff = row["max_abs_diff_vs_joblib"]
            executor += (", predictions identical to joblib" if diff == 0
                         else f", max abs diff vs joblib {diff:.2g}")
        elif row["executor"] == "joblib" and not row.get("same_work_as_ray"):
            stage2_wall += row["wall_s"]
        if row.get("same_work_as_ray"):
            executor += ", the Ray row's work"
        lines.append(f"| {name} | {targets} | {executor} | {row['wall_s']} | {_fmt(row['cpu_s'], 1)} | "
                     f"{_fmt(row['peak_rss_mb'])} | {_fmt(row['cv_mae'])} | {_fmt(row['test_mae'])} | "
                     f"{row['best_iteration_mean']} | {_load(row)} |")
        if row.get("ray_start_s") is not None:
            lines.append(f"| {name}: of which Ray start-up (until ray.init returns) | | ray | "
                         f"{row['ray_start_s']} | {_fmt(row['ray_start_cpu_s'], 1)} | | | | | |")
        if "vs_joblib" in row:
            ratio = row["vs_joblib"]
            lines.append(f"| {name} / {ratio['row']} (same targets, folds, n_jobs, threads) | | ratio | "
                         + " | ".join(_times(ratio[k]) for k in ("wall_s", "cpu_s", "peak_rss_mb"))
                         + " | | | | |")
        if subset and row["key"] != rows[reference]["key"] and not row.get("same_work_as_ray"):
            ref = rows[reference]
            cv = float(np.mean([ref["cv_mae_per_target"][t] for t in row["targets"]]))
            test = (None if not ref.get("test_mae_per_target") else
                    float(np.mean([ref["test_mae_per_target"][t] for t in row["targets"]])))
            lines.append(f"| {reference}, same {len(row['targets'])} targets | (its row above) | | | | | "
                         f"{_fmt(cv)} | {_fmt(test)} | | |")
    blend = full.get("blend")
    if blend:
        lines.append(f"| blend ({blend['optimizer']}: {', '.join(blend['models'])}) | "
                     f"{len(blend['targets'])} | in process | {blend['wall_s']} | | | "
                     f"{_fmt(blend['cv_mae_nested'])} (nested) | {_fmt(blend['test_mae'])} | | |")
        if all(len(row["targets"]) == n_all for row in rows.values()
               if row["executor"] == "joblib" and not row.get("same_work_as_ray")):
            lines.append(f"| stage 2 + blend (sum of the joblib rows and the blend) | {n_all} | | "
                         f"{round(stage2_wall + blend['wall_s'], 1)} | | | | | | |")
        else:  # a sum over different target sets would mean nothing
            lines.append("| stage 2 + blend | not summed: the learners fitted different targets | "
                         "| | | | | | | |")
    lines += ["", "Wall times were taken on a shared machine (other jobs running: see the load "
              "columns); CPU seconds (the process tree's) are the steadier figure. Rows on a subset "
              "of the targets are not scaled up."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo", help="demo dataset ('' to skip it)")
    parser.add_argument("--full-data", default=None,
                        help="full-scale dataset (~44k train rows), timed with --full-config")
    parser.add_argument("--learners", default=",".join(LEARNERS))
    parser.add_argument("--full-learners", default="lightgbm,xgboost,catboost",
                        help="learners timed at full scale (the first is the reference)")
    parser.add_argument("--ray-learners", default="lightgbm",
                        help="learners also timed with the Ray executor at full scale ('' none)")
    parser.add_argument("--subset-learners", default="",
                        help="full-scale learners fitted on --subset-targets only (too slow)")
    parser.add_argument("--subset-targets", default=",".join(SUBSET_TARGETS))
    parser.add_argument("--ray-targets", default="",
                        help="targets of the Ray rows ('': those of the learner's joblib row)")
    parser.add_argument("--ray-repeats", type=int, default=1,
                        help="time each (joblib, Ray) pair on the Ray targets N times, alternating")
    parser.add_argument("--seeds", type=int, default=3,
                        help="demo: the first learner again with stage2.seeds=N (1: skip)")
    parser.add_argument("--config", default="demo")
    parser.add_argument("--full-config", default=FULL_CONFIG)
    parser.add_argument("--work-dir", default=FULL_WORK_DIR,
                        help="full scale: feature cache and finished rows (a rerun resumes)")
    parser.add_argument("--readme", default=None, help="README to write the table into")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)

    def keys(text: str) -> tuple[str, ...]:
        return tuple(k.strip() for k in text.split(",") if k.strip())

    result = run(args.data or None, args.full_data, keys(args.learners), args.config,
                 args.overrides, args.seeds, keys(args.ray_learners), args.full_config,
                 args.work_dir, keys(args.full_learners), keys(args.subset_learners),
                 keys(args.subset_targets), keys(args.ray_targets) or None, args.ray_repeats)
    marker = "stage2_full" if args.full_data else "stage2"
    print_and_write(result, to_markdown(result), args.readme, marker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
