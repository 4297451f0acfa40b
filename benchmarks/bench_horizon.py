"""Horizon benchmark (drivesim data only): how well each image statistic finds the horizon row.

The road's grade reaches the frames through the camera's pitch to gravity, which puts the
horizon `fy * tan(pitch)` below the principal point. drivesim knows where its camera put it
(the pitch of the road under the car plus the drive's camera-mount pitch), so on its data each
horizon estimator of `features/image_stats.py` can be scored against the true row, frame by
frame: how often it finds a row, how well it follows the true one, how often it is within one
row of it. The scenes are simulated again from their IDs (`drivesim.scene.SceneJob.scene_id`, no
frames rendered); the pipeline itself never reads any of this.

    python -m benchmarks.bench_horizon --data data/demo --readme README.md
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks.readme_table import print_and_write
from features.image_stats import (
    colour_row_stats,
    edge_peak_rows,
    edge_width_profile,
    grey,
    ground_edge_rows,
    median_over_frames,
    scene_vanishing_rows,
    vanishing_point_stats,
    wide_edge_stats,
)
from trajstack.artifacts import ArtifactError
from trajstack.config import Config, load_config
from trajstack.image_cache import build_or_open_cache
from trajstack.tables import read_table, scene_and_time

SIM_CHUNK = 40       # scenes simulated at once (drivesim vectorises over a chunk)
STATS_CHUNK = 256    # rows whose frames are in memory at once
MAX_INDEX = 200_000  # scene indices searched for a dataset's scene IDs


class HorizonBenchError(ArtifactError):
    """The data is not drivesim's (or not made with the given seed)."""


def scene_indices(scene_ids: list[str], seed: int, split: str) -> dict[str, int]:
    """drivesim scene index of every scene ID, or a HorizonBenchError naming one that is not."""
    from drivesim.scene import SceneJob

    wanted, found = set(scene_ids), {}
    for i in range(MAX_INDEX):
        sid = SceneJob(seed, split, i).scene_id
        if sid in wanted:
            found[sid] = i
            if len(found) == len(wanted):
                return found
    missing = sorted(wanted - set(found))
    raise HorizonBenchError(
        f"scene {missing[0]} (and {len(missing) - 1} more) of the {split} table is not a drivesim "
        f"scene of seed {seed}: this benchmark needs drivesim data; pass the --seed it was made with")


def true_horizon_rows(cfg: Config, ids: list[str], split: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, frames) the row of the gravity horizon in each frame of `ids`, as drivesim drew it,
    and (rows,) the mount row: where the camera's mount pitch alone puts it (`cy + fy tan(mount
    pitch)`), i.e. where a level road's own lines meet."""
    from drivesim.render import frame_camera
    from drivesim.scene import DT, SceneJob, simulate_chunk, world_arrays

    spec = cfg.dataset
    scenes, _ = scene_and_time(ids, spec)
    index = scene_indices(sorted(set(scenes)), seed, split)
    jobs = sorted({index[s] for s in scenes})
    rows: dict[str, list[float]] = {}
    mount: dict[str, float] = {}
    fy, cy = spec.camera.K[1][1], spec.camera.K[1][2]
    for start in range(0, len(jobs), SIM_CHUNK):
        chunk = [SceneJob(seed, split, i) for i in jobs[start:start + SIM_CHUNK]]
        for run in simulate_chunk(chunk, spec.horizons_s):
            wa, rec = world_arrays(run.world), run.rec
            for ds, k in zip(run.row_ds, run.row_steps, strict=True):
                out = []
                for offset in spec.frame_offsets_s:
                    kk = k + int(round(offset / DT))
                    pose = dict(X=rec["X"][kk], Y=rec["Y"][kk], psi=rec["psi"][kk], s=rec["s"][kk])
                    camera = frame_camera(run.world, wa, pose, spec.camera, spec.image_width,
                                          spec.image_height)
                    out.append(camera.horizon_row)
                rows[f"{run.job.scene_id}_{ds}"] = out
                mount[f"{run.job.scene_id}_{ds}"] = cy + fy * np.tan(run.world.look.pitch_offset)
    missing = [i for i in ids if i not in rows]
    if missing:
        raise HorizonBenchError(f"row {missing[0]} is not a row drivesim keeps for its scene: "
                                "this benchmark needs unmodified drivesim data")
    return np.array([rows[i] for i in ids], dtype=float), np.array([mount[i] for i in ids], dtype=float)


def estimated_rows(frames: np.ndarray) -> dict[str, np.ndarray]:
    """(rows, frames) horizon-row estimates of each image statistic for uint8 (n, F, H, W, C)."""
    colour, wide = colour_row_stats(frames), wide_edge_stats(frames)
    n_frames = frames.shape[1]

    def per_frame(stats: dict[str, np.ndarray], name: str) -> np.ndarray:
        return np.stack([stats[f"{name}_f{f}"] for f in range(n_frames)], axis=1)

    return {
        "`ground_edge`": ground_edge_rows(frames),
        "`wide_edges` lowest of the widest": per_frame(wide, "wide_edge_lowest_row"),
        "`wide_edges` highest of the widest": per_frame(wide, "wide_edge_highest_row"),
        "`row_profile` strongest horizontal edge": edge_peak_rows(grey(frames)),
        "`colour_rows` best two-region split": per_frame(colour, "colour_split_row"),
        "`colour_rows` topmost strong step": per_frame(colour, "colour_top_step_row"),
        "`colour_rows` row-mean step": per_frame(colour, "colour_mean_step_row"),
    }


def horizon_shows(frames: np.ndarray, truth: np.ndarray, span: float = 0.5) -> np.ndarray:
    """(n, F) bool: whether an edge spanning at least `span` of the width lies within a row of the
    true horizon row, i.e. whether the horizon shows at all (a rise ahead hides it behind the
    ground)."""
    width = edge_width_profile(frames)
    first = np.ceil(truth - 0.5).astype(int)   # the first row below the horizon
    near = [np.take_along_axis(width, np.clip(first + d, 0, width.shape[-1] - 1)[..., None], -1)[..., 0]
            for d in (-1, 0, 1)]
    inside = (first >= 0) & (first < width.shape[-1])
    return inside & (np.max(near, axis=0) >= span)


def score(estimate: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Share of frames with an estimate, its correlation with the truth where found, and the share
    of all frames within one row of it (the boundary lies between rows: within 1 is exact)."""
    found = np.isfinite(estimate)
    error = np.abs(estimate - truth)
    return {"found": float(found.mean()),
            "corr": float(np.corrcoef(estimate[found], truth[found])[0, 1]) if found.sum() > 2 else float("nan"),
            "within_1": float((error[found] <= 1.0).sum() / estimate.size),
            "within_1_of_found": float((error[found] <= 1.0).mean()) if found.any() else float("nan")}


def mount_scores(vanishing_rows: np.ndarray, mount: np.ndarray, scenes: np.ndarray) -> dict[str, dict[str, float]]:
    """How well the vanishing row reads the camera's mount pitch, one frame and the scene's median
    (`img_vanishing_row_scene_median`): share found, correlation with the mount row, share within
    1 row of it once the estimator's median offset is taken off (a constant offset costs a GBDT
    nothing)."""
    scene_median = scene_vanishing_rows(median_over_frames(vanishing_rows), scenes)
    out = {}
    for name, est, truth in (("one frame", vanishing_rows.ravel(), np.repeat(mount, vanishing_rows.shape[1])),
                             ("the scene's median", scene_median, mount)):
        found = np.isfinite(est)
        error = est[found] - truth[found]
        out[name] = {"found": float(found.mean()),
                     "corr": float(np.corrcoef(est[found], truth[found])[0, 1]),
                     "within_1": float((np.abs(error - np.median(error)) <= 1.0).mean())}
    return out


def run(config: str = "demo", data_dir: str = "data/demo", seed: int = 0, split: str = "train") -> dict[str, Any]:
    """Score every horizon estimator on every frame of `split` (frames pooled)."""
    cfg = load_config(config, [f"data_dir={data_dir}"])
    spec = cfg.dataset
    if spec.camera is None:
        raise HorizonBenchError(f"{config} has no dataset.camera: no horizon row to score")
    ids = read_table(data_dir, spec, split)[spec.id_column].astype(str).tolist()
    truth, mount = true_horizon_rows(cfg, ids, split, seed)
    cache = build_or_open_cache(cfg.data_dir, spec, split, cfg.cache_dir, cfg.cache.workers)
    positions = cache.positions(ids)
    chunks = [np.asarray(cache.images[positions[s:s + STATS_CHUNK]]) for s in range(0, len(ids), STATS_CHUNK)]
    parts = [estimated_rows(frames) for frames in chunks]
    visible = np.concatenate([horizon_shows(frames, truth[s * STATS_CHUNK:(s + 1) * STATS_CHUNK])
                              for s, frames in enumerate(chunks)])
    estimates = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
    n_frames = len(spec.frames)
    vanishing = np.concatenate([np.stack([v[f"vanishing_row_f{f}"] for f in range(n_frames)], axis=1)
                                for v in map(vanishing_point_stats, chunks)])
    scenes, _ = scene_and_time(ids, spec)
    return {"data_dir": data_dir, "split": split, "rows": len(ids), "frames": int(truth.size),
            "scenes": len(set(scenes)), "true_row_std": float(truth.std()),
            "mount_row_std": float(mount.std()), "visible": float(visible.mean()),
            "estimators": {name: score(est, truth) for name, est in estimates.items()},
            "mount": mount_scores(vanishing, mount, scenes)}


def to_markdown(result: dict[str, Any]) -> str:
    lines = ["| estimator | found | corr. with the true row (found frames) | within 1 row, of all frames | within 1 row, of found |",
             "|---|---|---|---|---|"]
    for name, s in result["estimators"].items():
        lines.append(f"| {name} | {s['found']:.0%} | {s['corr']:.2f} | {s['within_1']:.0%} | "
                     f"{s['within_1_of_found']:.0%} |")
    lines += ["", f"{result['frames']:,} frames of the {result['rows']:,} {result['split']} rows of "
              f"`{result['data_dir']}` (the three frames of each row pooled); the true row's standard "
              f"deviation is {result['true_row_std']:.1f} rows (one row is 1 / fy of pitch). In "
              f"{result['visible']:.0%} of them an edge spanning half the width lies within a row of "
              "the true one; in the rest a rise ahead or a close vehicle hides the horizon. "
              "`python -m benchmarks.bench_horizon --data "
              f"{result['data_dir']}`."]
    lines += ["", "| `vanishing_point` row against the mount row | found | corr. with the mount row | "
              "within 1 row of it (median offset off) |", "|---|---|---|---|"]
    for name, s in result["mount"].items():
        lines.append(f"| {name} | {s['found']:.0%} | {s['corr']:.2f} | {s['within_1']:.0%} |")
    lines += ["", f"The mount row is where the camera's mount pitch alone puts the horizon (a level "
              f"road's lines meet there); its standard deviation is {result['mount_row_std']:.1f} "
              f"rows over the {result['scenes']:,} scenes."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_horizon", description=__doc__)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--seed", type=int, default=0, help="the drivesim seed the data was made with")
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--readme", default=None)
    parser.add_argument("--marker", default="horizon")
    args = parser.parse_args(argv)
    result = run(args.config, args.data, args.seed, args.split)
    print_and_write(result, to_markdown(result), args.readme, args.marker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
