"""Test score against a simulator's `oracle/` folder, for the final print and the report only.

A data source such as drivesim may write `<data_dir>/oracle/` with the test labels and an
estimate of the irreducible error floor. Nothing in the pipeline may fit or choose anything on
it: this module is called only after the submission is written, to quote its test MAE and the
ratio to the floor. Real competition data has no oracle, and then everything here is None.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trajstack.io import read_json
from trajstack.metrics import mae_report
from trajstack.spec import DatasetSpec

ORACLE_DIR = "oracle"
LABELS_FILE = "test_labels.csv"
FLOOR_FILE = "floor.json"


def oracle_dir(data_dir: str | Path) -> Path | None:
    path = Path(data_dir) / ORACLE_DIR
    return path if (path / LABELS_FILE).exists() else None


def test_score(data_dir: str | Path, test_ids: np.ndarray, predictions: np.ndarray,
               spec: DatasetSpec) -> dict[str, Any] | None:
    """Test MAE report of `predictions` (test-file row order) and its ratio to the floor.

    Returns None when the dataset has no oracle.
    """
    folder = oracle_dir(data_dir)
    if folder is None:
        return None
    labels = pd.read_csv(folder / LABELS_FILE, dtype={spec.id_column: str})
    labels = labels.set_index(spec.id_column).loc[np.asarray(test_ids, str)].reset_index()
    report = mae_report(labels, predictions, spec)
    # drivesim's floor.json: {"floor_mae": overall, "floor_mae_per_axis": ..., ...}
    floor = read_json(folder / FLOOR_FILE)["floor_mae"] if (folder / FLOOR_FILE).exists() else None
    return {"mae_report": report, "mae": report["mae"], "floor_mae": floor,
            "ratio_to_floor": report["mae"] / floor if floor else None}
