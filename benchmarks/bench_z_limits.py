"""What holds z back (drivesim data only): LightGBM on the z targets of the config's stage-2 table
without stage 1, alone and given some of drivesim's true camera values as extra columns.

The grade reaches the frames through the camera's pitch to gravity, which puts the horizon
`fy * tan(pitch)` below the principal point; that pitch is the road's plus the camera's mount
pitch, different in every drive. Each row of the table adds one true value to the same features
and folds, so the gain says how much a perfect estimator of it would be worth: the true horizon
row (what `ground_edge` estimates), the same only where the horizon shows as a wide edge (what a
perfect reader of the ground's edge could give: a rise ahead or a close vehicle hides it in the
other frames), both also read to the whole pixel row (what an exact reader of a sharp edge
could give; the rest is the sub-pixel part), the mount row (where the mount pitch alone puts the
horizon, what the scene's median vanishing row estimates), and the horizon row with the mount
pitch taken out (the grade itself). The true values come from simulating the scenes again from
their IDs (`benchmarks.bench_horizon.true_horizon_rows`); the pipeline never reads any of this,
and none of these columns is a feature anywhere else.

    python -m benchmarks.bench_z_limits --data data/demo --readme README.md
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.bench_horizon import STATS_CHUNK, horizon_shows, true_horizon_rows
from benchmarks.readme_table import print_and_write
from ensembling.oracle import test_score
from stage2_gbdt.params import learner_params
from stage2_gbdt.train import fit_learner, prepare
from trajstack.artifacts import ArtifactError
from trajstack.config import Config, load_config
from trajstack.image_cache import build_or_open_cache


@dataclass
class Truth:
    """One split's true values (drivesim's) beside what the table read of them."""

    horizon: np.ndarray      # (rows, frames) the true horizon rows
    mount: np.ndarray        # (rows,) where the mount pitch alone puts the horizon
    shows: np.ndarray        # (rows, frames) bool: an edge spanning half the width within a row of it
    ground_edge: np.ndarray  # (rows, frames) the table's `ground_edge` rows


def _level_rows(truth: Truth, cy: float, fy: float) -> np.ndarray:
    """The horizon rows with the mount pitch taken out: where the grade alone puts the horizon."""
    pitch = np.arctan((truth.horizon - cy) / fy) - np.arctan((truth.mount[:, None] - cy) / fy)
    return cy + fy * np.tan(pitch)


def _pixel_rows(horizon: np.ndarray) -> np.ndarray:
    """The first pixel row whose centre lies below each horizon: all a perfect reader of a sharp
    sky-to-ground edge can read, so the gain of the true row over it is the sub-pixel part."""
    return np.floor(horizon + 0.5)


def _per_frame(name: str, rows: np.ndarray) -> dict[str, np.ndarray]:
    return {f"{name}_f{f}": rows[:, f] for f in range(rows.shape[1])}


# Extra columns of each row of the table, from the truth of a split. "Where it shows" is what a
# perfect reader of the ground's top edge could give: the true row where the horizon shows as a
# wide edge, the table's ground edge where a rise ahead or a close vehicle hides it. "Pixel row":
# the same, read to the whole pixel, as an exact edge reader would (the rest is sub-pixel).
EXTRA: dict[str, Callable[[Truth, float, float], dict[str, np.ndarray]]] = {
    "the stage-2 table alone": lambda t, cy, fy: {},
    "+ the true horizon row": lambda t, cy, fy: _per_frame("true_horizon", t.horizon),
    "+ the true horizon's pixel row": lambda t, cy, fy: _per_frame(
        "true_horizon_pixel", _pixel_rows(t.horizon)),
    "+ the true horizon row where it shows, the ground edge elsewhere": lambda t, cy, fy: _per_frame(
        "true_horizon_shown", np.where(t.shows, t.horizon, t.ground_edge)),
    "+ the true horizon's pixel row where it shows, the ground edge elsewhere": lambda t, cy, fy: _per_frame(
        "true_horizon_pixel_shown", np.where(t.shows, _pixel_rows(t.horizon), t.ground_edge)),
    "+ the true mount row": lambda t, cy, fy: {"true_mount": t.mount},
    "+ the true horizon row less the mount pitch": lambda t, cy, fy: _per_frame(
        "true_level", _level_rows(t, cy, fy)),
}


def _truth(cfg: Config, frame: pd.DataFrame, split: str, seed: int) -> Truth:
    """The split's true horizon and mount rows, where the horizon shows, and the table's ground
    edge (the table must have `ground_edge` on)."""
    spec = cfg.dataset
    columns = [f"img_ground_edge_row_f{f}" for f in range(len(spec.frames))]
    if not set(columns) <= set(frame.columns):  # before the slow part
        raise ArtifactError(f"the stage-2 table of {cfg.experiment} has no {columns[0]}: put "
                            "ground_edge in features.image_stats.groups")
    ids = frame[spec.id_column].astype(str).tolist()
    horizon, mount = true_horizon_rows(cfg, ids, split, seed)
    cache = build_or_open_cache(cfg.data_dir, spec, split, cfg.cache_dir, cfg.cache.workers)
    positions = cache.positions(ids)
    shows = np.concatenate([
        horizon_shows(np.asarray(cache.images[positions[s:s + STATS_CHUNK]]), horizon[s:s + STATS_CHUNK])
        for s in range(0, len(ids), STATS_CHUNK)]) if ids else np.zeros(horizon.shape, bool)
    return Truth(horizon, mount, shows, frame[columns].to_numpy(float))


def run(config: str = "demo", data_dir: str = "data/demo", seed: int = 0, learner: str = "lightgbm",
        overrides: list[str] | None = None) -> dict[str, Any]:
    """z CV and test MAE of `learner` without stage 1, alone and with each row's true columns."""
    cfg = load_config(config, [f"data_dir={data_dir}", "features.stage1=false", *(overrides or [])])
    spec = cfg.dataset
    cy, fy = spec.camera.K[1][2], spec.camera.K[1][1]
    data = prepare(cfg)
    ft = data.features
    base_train, base_test = ft.train, ft.test
    truth = {split: _truth(cfg, frame, split, seed) for split, frame in (("train", base_train), ("test", base_test))}
    z = [t for t in spec.target_columns if t.startswith("z")]
    labels = data.labels[z].to_numpy(float)
    rows = {}
    for name, extra in EXTRA.items():
        start = time.perf_counter()
        ft.train = base_train.assign(**extra(truth["train"], cy, fy))
        ft.test = base_test.assign(**extra(truth["test"], cy, fy))
        result = fit_learner(data, learner, learner_params(cfg, learner), targets=z)
        # test_score wants every target: the z columns filled in, the rest left at zero
        full = pd.DataFrame(0.0, index=range(len(ft.test)), columns=spec.target_columns)
        full[z] = result.test
        report = test_score(cfg.data_dir, ft.test[spec.id_column].to_numpy(), full.to_numpy(), spec)
        rows[name] = {"cv": float(np.nanmean(np.abs(result.oof - labels))),
                      "test": None if report is None else float(report["mae_report"]["per_axis"]["z"]),
                      "seconds": time.perf_counter() - start}
    ft.train, ft.test = base_train, base_test
    return {"config": config, "data_dir": data_dir, "learner": learner, "rows": rows,
            "n_train": len(base_train), "columns": len(ft.feature_columns),
            "shows": float(truth["train"].shows.mean())}


def to_markdown(result: dict[str, Any]) -> str:
    lines = ["| LightGBM on the z targets, no stage 1 | z CV MAE | z test MAE |", "|---|---|---|"]
    for name, row in result["rows"].items():
        test = "—" if row["test"] is None else f"{row['test']:.4f}"
        lines.append(f"| {name} | {row['cv']:.4f} | {test} |")
    lines += ["", f"{result['learner']} on the {result['columns']} stage-2 columns of `{result['config']}` "
              f"without stage 1, on the {result['n_train']:,} train rows of `{result['data_dir']}` (same "
              "folds for every row); the true columns are drivesim's, simulated again from the scene IDs. "
              f"The horizon shows as an edge spanning half the width in {result['shows']:.0%} of the train "
              "frames. "
              f"`python -m benchmarks.bench_z_limits --data {result['data_dir']}`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_z_limits", description=__doc__)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--seed", type=int, default=0, help="the drivesim seed the data was made with")
    parser.add_argument("--learner", default="lightgbm")
    parser.add_argument("--readme", default=None)
    parser.add_argument("--marker", default="z_limits")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    result = run(args.config, args.data, args.seed, args.learner, args.overrides)
    print_and_write(result, to_markdown(result), args.readme, args.marker)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
