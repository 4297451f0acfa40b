"""Write a dataset: scenes in fixed chunks, run by worker processes, files as they are made.

Images and traffic-light JSON are written by the workers scene by scene (never held for the
whole dataset); the small per-row tables come back to the parent, which writes the oracle,
the sample submission, the test CSV and, last of all, the train CSV (so a finished train
file means a finished dataset; every CSV/JSON goes through a temp file and a rename).
"""

from __future__ import annotations

import io
import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from drivesim.oracle import rollout_medians
from drivesim.render import LIGHT_CLASS, render_frame
from drivesim.scene import (
    CAMERA_COLUMNS,
    DT,
    HIDDEN_COLUMNS,
    T_WARM,
    SceneJob,
    SceneRun,
    camera_state,
    hidden_state,
    simulate_chunk,
    targets,
    telemetry,
    world_arrays,
)
from trajstack.io import write_csv_atomic, write_json_atomic
from trajstack.spec import DatasetSpec

CHUNK = 16  # scenes simulated together; fixed, so outputs do not depend on --workers
MISS_P = 0.08  # traffic-light detections dropped at random, more for tiny boxes
PNG_LEVEL = 1  # fast zlib: noisy frames barely compress anyway
FLOAT_FORMAT = "%.5f"
ORACLE_DIR = "oracle"


@dataclass
class ChunkTask:
    split: str
    start: int
    stop: int
    seed: int
    out_dir: str | None  # None: tables only, no files
    spec: DatasetSpec


def _scene_rows(run: SceneRun, spec: DatasetSpec) -> pd.DataFrame:
    tel = telemetry(run)
    missing = [c for c in spec.telemetry_columns if c not in tel]
    if missing:
        raise ValueError(f"drivesim cannot produce telemetry column(s) {missing} named by the dataset spec")
    for col, kind in spec.telemetry.items():
        if kind == "category" and col in tel:
            bad = set(tel[col]) - set(spec.categories[col])
            if bad:
                raise ValueError(f"drivesim writes {sorted(bad)} in '{col}', not among the spec's levels")
    ids = [f"{run.job.scene_id}_{ds}" for ds in run.row_ds]
    cols: dict[str, object] = {spec.id_column: ids}
    for col in spec.telemetry_columns:
        vals = tel[col]
        if spec.telemetry[col] == "bool":
            vals = np.where(vals, spec.bool_true[0], spec.bool_false[0])
        cols[col] = vals
    tgt = targets(run, spec.horizons_s)
    for k in range(spec.n_horizons):
        for a, axis in enumerate(spec.axes):
            cols[spec.target_name(axis, k)] = tgt[:, k, a]
    hid = hidden_state(run)
    for col in HIDDEN_COLUMNS:
        cols[f"hidden:{col}"] = hid[col]
    cam = camera_state(run, spec)
    for col in CAMERA_COLUMNS:
        cols[f"camera:{col}"] = cam[col]
    frame = pd.DataFrame(cols)
    return frame


def _render_scene(run: SceneRun, frame: pd.DataFrame, spec: DatasetSpec, out: Path) -> None:
    """Write each kept row's frames and the traffic lights seen in its last frame."""
    wa = world_arrays(run.world)
    rng = run.rngs["render"]
    rec = run.rec
    t_frame = int(np.argmax(spec.frame_offsets_s))  # the lights are those of the frame at t
    for row_id, k in zip(frame[spec.id_column], run.row_steps, strict=True):
        folder = out / spec.images_dir / row_id
        folder.mkdir(parents=True, exist_ok=True)
        for f, (name, off) in enumerate(zip(spec.frames, spec.frame_offsets_s, strict=True)):
            kk = k + int(round(off / DT))
            pose = dict(X=rec["X"][kk], Y=rec["Y"][kk], psi=rec["psi"][kk], s=rec["s"][kk],
                        t=kk * DT - T_WARM, lights=rec["light"][kk], l_s=rec["l_s"][kk],
                        l_a=rec["l_a"][kk], l_v=rec["l_v"][kk], l_lane=rec["l_lane"][kk],
                        present=bool(rec["l_present"][kk]))
            img, boxes = render_frame(run.world, wa, pose, spec.camera, spec.image_width,
                                      spec.image_height, rng)
            buf = io.BytesIO()
            Image.fromarray(img, "RGB").save(buf, format="PNG", compress_level=PNG_LEVEL)
            (folder / name).write_bytes(buf.getvalue())
            if f == t_frame and spec.traffic_lights_dir:
                _write_lights(boxes, spec, out / spec.traffic_lights_dir / f"{row_id}.json", rng)


def _write_lights(boxes: list[dict], spec: DatasetSpec, path: Path, rng: np.random.Generator) -> None:
    entries = []
    for box in sorted(boxes, key=lambda b: b["depth"]):
        x1, y1, x2, y2 = box["bbox"]
        p_miss = MISS_P + (0.5 if (x2 - x1) * (y2 - y1) < 3.0 else 0.0)
        if rng.random() < p_miss:
            continue
        cls = LIGHT_CLASS[box["state"]]
        if cls not in spec.traffic_light_classes:
            raise ValueError(f"traffic-light class '{cls}' is not in the spec's classes")
        entries.append({"index": len(entries), "class": cls, "bbox": box["bbox"]})
    write_json_atomic(path, entries)


def run_chunk(task: ChunkTask) -> pd.DataFrame:
    """Simulate one chunk; write its files when `task.out_dir` is set; return its rows.

    The returned frame holds the dataset columns, ``hidden:*`` and ``camera:*`` columns, ``split`` and, for
    test rows, ``floor:*`` columns (the oracle's per-target rollout medians).
    """
    spec = task.spec
    jobs = [SceneJob(task.seed, task.split, i) for i in range(task.start, task.stop)]
    runs = simulate_chunk(jobs, spec.horizons_s)
    frames = [_scene_rows(run, spec) for run in runs]
    if task.split == "test":
        med = rollout_medians(runs, spec.horizons_s)
        rows = pd.concat(frames, ignore_index=True)
        for k in range(spec.n_horizons):
            for a, axis in enumerate(spec.axes):
                rows[f"floor:{spec.target_name(axis, k)}"] = med[:, k, a]
    else:
        rows = pd.concat(frames, ignore_index=True)
    rows["split"] = task.split
    if task.out_dir is not None:
        for run, frame in zip(runs, frames, strict=True):
            _render_scene(run, frame, spec, Path(task.out_dir))
    return rows


def _tasks(n_train, n_test, seed, out_dir, spec) -> list[ChunkTask]:
    tasks = []
    for split, n in (("train", n_train), ("test", n_test)):
        for start in range(0, n, CHUNK):
            tasks.append(ChunkTask(split, start, min(start + CHUNK, n), seed, out_dir, spec))
    return tasks


def simulate_rows(n_train: int, n_test: int, seed: int, spec: DatasetSpec, workers: int = 1,
                  out_dir: str | Path | None = None, progress: bool = False) -> pd.DataFrame:
    """Simulate scenes and return all rows (dataset, hidden and floor columns), sorted by ID.

    Parameters
    ----------
    n_train, n_test : scenes per split.
    seed : dataset seed; scene i of a split depends only on (seed, split, i).
    spec : the dataset spec (column names, horizons, frames, camera).
    workers : processes; the result is identical for any value.
    out_dir : where frames and traffic-light JSON go; None renders nothing (fast).
    progress : show a progress bar over scenes.
    """
    tasks = _tasks(n_train, n_test, seed, None if out_dir is None else str(out_dir), spec)
    parts = []
    bar = tqdm(total=n_train + n_test, unit="scene", disable=not progress, desc="drivesim")
    if workers <= 1:
        for task in tasks:
            parts.append(run_chunk(task))
            bar.update(task.stop - task.start)
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            for task, part in zip(tasks, pool.imap(run_chunk, tasks), strict=True):
                parts.append(part)
                bar.update(task.stop - task.start)
    bar.close()
    rows = pd.concat(parts, ignore_index=True)
    for col in spec.target_columns:  # train-only runs still carry the (empty) floor columns
        if f"floor:{col}" not in rows:
            rows[f"floor:{col}"] = np.nan
    return rows.sort_values(["split", spec.id_column], kind="stable").reset_index(drop=True)


def floor_report(test_rows: pd.DataFrame, spec: DatasetSpec, n_rollouts: int) -> dict:
    """The floor (MAE of the rollout medians), per target and axis, and the constant-velocity
    baseline for reference."""
    cols = spec.target_columns
    y = test_rows[cols].to_numpy(float)
    med = test_rows[[f"floor:{c}" for c in cols]].to_numpy(float)
    err = np.abs(med - y)
    cv = np.zeros_like(y)
    v = test_rows["vEgo"].to_numpy(float)  # the simulator's own speed signal
    for k, h in enumerate(spec.horizons_s):
        cv[:, cols.index(spec.target_name(spec.axes[0], k))] = v * h
    if not len(y):
        return {"n_rows": 0, "n_rollouts": n_rollouts, "floor_mae": None, "floor_mae_per_axis": {},
                "floor_mae_per_target": {}, "constant_velocity_mae": None,
                "constant_velocity_ratio_to_floor": None}
    cv_mae = float(np.abs(cv - y).mean())
    floor = float(err.mean())
    return {
        "n_rows": int(len(y)),
        "n_rollouts": n_rollouts,
        "floor_mae": floor,
        "floor_mae_per_axis": {a: float(err[:, i :: len(spec.axes)].mean()) for i, a in enumerate(spec.axes)},
        "floor_mae_per_target": {c: float(err[:, i].mean()) for i, c in enumerate(cols)},
        "constant_velocity_mae": cv_mae,
        "constant_velocity_ratio_to_floor": cv_mae / floor if floor > 0 else float("nan"),
        "note": "floor = MAE of the per-target median of rollouts from the exact state at t "
                "with fresh driver randomness; no predictor can beat it in expectation",
    }


def generate(out_dir: str | Path, n_train: int, n_test: int, seed: int, spec: DatasetSpec,
             workers: int = 1, render: bool = True, progress: bool = True) -> dict:
    """Write a complete dataset (and its oracle) to `out_dir`; return the floor report.

    Parameters
    ----------
    out_dir : dataset folder; the oracle goes to ``out_dir/oracle`` (never read by the pipeline).
    n_train, n_test : scenes per split.
    seed : dataset seed.
    spec : the dataset spec.
    workers : processes (output bytes are identical for any value).
    render : write frames and traffic-light JSON (False: tables only, much faster).
    progress : show a progress bar.
    """
    from drivesim.oracle import N_ROLLOUTS

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = simulate_rows(n_train, n_test, seed, spec, workers, out if render else None, progress)
    idc = spec.id_column
    train, test = rows[rows["split"] == "train"], rows[rows["split"] == "test"]
    oracle = out / ORACLE_DIR
    fmt = dict(float_format=FLOAT_FORMAT)
    write_csv_atomic(oracle / "test_labels.csv", test[[idc, *spec.target_columns]], **fmt)
    hidden = rows[[idc, "split", *[f"hidden:{c}" for c in HIDDEN_COLUMNS]]]
    write_csv_atomic(oracle / "hidden_state.csv", hidden.rename(columns=lambda c: c.removeprefix("hidden:")), **fmt)
    camera = rows[[idc, *[f"camera:{c}" for c in CAMERA_COLUMNS]]]
    write_csv_atomic(oracle / "camera_state.csv", camera.rename(columns=lambda c: c.removeprefix("camera:")), **fmt)
    floor_cols = {f"floor:{c}": c for c in spec.target_columns}
    write_csv_atomic(oracle / "floor_predictions.csv", test[[idc, *floor_cols]].rename(columns=floor_cols), **fmt)
    report = floor_report(test, spec, N_ROLLOUTS)
    report.update(seed=seed, train_scenes=n_train, test_scenes=n_test, train_rows=int(len(train)))
    write_json_atomic(oracle / "floor.json", report)
    if spec.sample_submission_file:
        zeros = pd.DataFrame(0.0, index=range(len(test)), columns=spec.target_columns)
        write_csv_atomic(out / spec.sample_submission_file, zeros, float_format="%.1f")
    write_csv_atomic(out / spec.test_file, test[spec.test_columns], **fmt)
    write_csv_atomic(out / spec.train_file, train[spec.train_columns], **fmt)  # last: the marker
    return report
