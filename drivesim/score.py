"""`python -m drivesim.score --submission FILE --oracle DIR`: MAE and its ratio to the floor."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from trajstack.config import load_config


class ScoreError(ValueError):
    """A submission that cannot be scored; the message says what is wrong."""


def score(submission: pd.DataFrame, labels: pd.DataFrame, floor: dict, target_columns: list[str],
          axes: list[str]) -> dict:
    """MAE of a submission against the oracle labels, overall and per axis, with floor ratios.

    Parameters
    ----------
    submission : 18 target columns (an ID column is allowed and ignored), test row order.
    labels : oracle ``test_labels.csv`` (ID + targets), test row order.
    floor : oracle ``floor.json``.
    target_columns, axes : from the dataset spec.
    """
    missing = [c for c in target_columns if c not in submission.columns]
    if missing:
        raise ScoreError(f"submission lacks column(s) {missing}; expected {target_columns}")
    extra = [c for c in submission.columns if c not in target_columns and c != "ID"]
    if extra:
        raise ScoreError(f"submission has unexpected column(s) {extra}")
    if len(submission) != len(labels):
        raise ScoreError(f"submission has {len(submission)} rows, the test set {len(labels)}")
    pred = submission[target_columns].to_numpy(float)
    if not np.isfinite(pred).all():
        raise ScoreError("submission holds NaN or infinite values")
    err = np.abs(pred - labels[target_columns].to_numpy(float))
    out = {"mae": float(err.mean()), "floor_mae": floor["floor_mae"]}
    out["ratio_to_floor"] = out["mae"] / floor["floor_mae"]
    for i, axis in enumerate(axes):
        m = float(err[:, i :: len(axes)].mean())
        f = floor["floor_mae_per_axis"][axis]
        out[f"mae_{axis}"] = m
        out[f"ratio_to_floor_{axis}"] = m / f if f > 0 else float("inf")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drivesim.score", description=__doc__)
    parser.add_argument("--submission", required=True)
    parser.add_argument("--oracle", required=True, help="the dataset's oracle/ folder (or the dataset folder)")
    parser.add_argument("--config", default="atmacup18")
    args = parser.parse_args(argv)
    spec = load_config(args.config).dataset
    oracle = Path(args.oracle)
    if not (oracle / "floor.json").exists() and (oracle / "oracle" / "floor.json").exists():
        oracle = oracle / "oracle"
    try:
        labels = pd.read_csv(oracle / "test_labels.csv")
        floor = json.loads((oracle / "floor.json").read_text())
        sub = pd.read_csv(args.submission)
        result = score(sub, labels, floor, spec.target_columns, spec.axes)
    except (ScoreError, FileNotFoundError, pd.errors.ParserError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"MAE {result['mae']:.4f}  floor {result['floor_mae']:.4f}  ratio {result['ratio_to_floor']:.2f}")
    print("  " + "  ".join(f"{a}: MAE {result[f'mae_{a}']:.4f} ratio {result[f'ratio_to_floor_{a}']:.2f}" for a in spec.axes))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
