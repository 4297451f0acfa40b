"""The submission file: writer and checker (`trajstack check-submission FILE --data DIR`).

A submission has the spec's target columns in spec order (x_0, y_0, z_0, ..., no ID), one row
per test row in the test file's order, and only finite numbers. The checker lists every
problem at once and exits 2 when there is one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from trajstack.errors import TrajstackError
from trajstack.io import write_csv_atomic
from trajstack.spec import DatasetSpec
from trajstack.tables import table_path


class SubmissionError(TrajstackError, ValueError):
    """A submission that would be rejected or mis-scored; the message lists every problem."""


def write_submission(path: str | Path, predictions: np.ndarray, spec: DatasetSpec) -> Path:
    """Write (n_test, n_targets) predictions, already in test-file row order, atomically."""
    predictions = np.asarray(predictions, float)
    if predictions.ndim != 2 or predictions.shape[1] != len(spec.target_columns):
        raise SubmissionError(f"predictions have shape {predictions.shape}, expected "
                              f"(n_test, {len(spec.target_columns)})")
    if not np.isfinite(predictions).all():
        raise SubmissionError("predictions hold NaN or infinite values; nothing written")
    write_csv_atomic(path, pd.DataFrame(predictions, columns=spec.target_columns))
    return Path(path)


def submission_problems(path: str | Path, data_dir: str | Path, spec: DatasetSpec) -> list[str]:
    """Every reason the submission at `path` is invalid for the dataset in `data_dir` (empty: valid)."""
    path = Path(path)
    if not path.exists():
        return [f"{path}: file not found"]
    try:
        sub = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        return [f"{path}: not a readable CSV ({err})"]
    problems = _column_problems(list(sub.columns), spec, data_dir)
    test_file = table_path(data_dir, spec, "test")
    if not test_file.exists():
        return [*problems, f"{test_file}: test file not found (is --data the dataset folder?)"]
    n_test = len(pd.read_csv(test_file, usecols=[spec.id_column]))
    if len(sub) != n_test:
        problems.append(f"{len(sub)} rows, but the test file has {n_test} (one row per test row, "
                        "in test-file order, header line first)")
    for col in [c for c in spec.target_columns if c in sub.columns]:
        problems.extend(_value_problems(sub[col], col))
    return problems


def check_submission(path: str | Path, data_dir: str | Path, spec: DatasetSpec) -> None:
    """Raise `SubmissionError` listing every problem of the submission at `path`."""
    problems = submission_problems(path, data_dir, spec)
    if problems:
        raise SubmissionError(f"{path} is not a valid submission:\n  " + "\n  ".join(problems))


def _column_problems(columns: list[str], spec: DatasetSpec, data_dir: str | Path) -> list[str]:
    expected = spec.target_columns
    if columns == expected:
        problems = []
    else:
        missing = [c for c in expected if c not in columns]
        extra = [c for c in columns if c not in expected]
        problems = [f"columns must be exactly {expected} in this order"]
        if missing:
            problems.append(f"missing columns {missing}")
        if extra:
            problems.append(f"unexpected columns {extra} (no ID or index column)")
        if not missing and not extra:
            first = next(i for i, (a, b) in enumerate(zip(columns, expected, strict=True)) if a != b)
            problems.append(f"wrong column order: column {first + 1} is {columns[first]!r}, "
                            f"expected {expected[first]!r}")
    # The sample submission, when the dataset ships one, is the final word on the header.
    if spec.sample_submission_file:
        sample = Path(data_dir) / spec.sample_submission_file
        if sample.exists():
            sample_cols = list(pd.read_csv(sample, nrows=0).columns)
            if sample_cols != expected:
                problems.append(f"{sample} has columns {sample_cols}, which differ from the "
                                f"spec's {expected}: fix dataset.axes / target_format")
    return problems


def _value_problems(values: pd.Series, col: str) -> list[str]:
    numbers = pd.to_numeric(values.str.strip().replace("", np.nan), errors="coerce")
    problems = []
    empty = values.str.strip() == ""
    not_numbers = numbers.isna() & ~empty & ~values.str.strip().str.lower().isin(["nan", "na"])
    missing = numbers.isna() & ~not_numbers
    infinite = np.isinf(numbers.to_numpy(float, na_value=np.nan))
    for mask, what in ((not_numbers, "non-numeric"), (missing, "NaN or empty"),
                       (infinite, "infinite")):
        mask = np.asarray(mask, bool)
        if mask.any():
            row = int(np.flatnonzero(mask)[0])
            problems.append(f"column {col}: {int(mask.sum())} {what} values (first at data row "
                            f"{row + 1}: {values.iloc[row]!r})")
    return problems


def main(argv: list[str] | None = None) -> int:
    """`trajstack check-submission FILE --data DIR [--config C]`: exit 0 valid, 2 invalid."""
    from trajstack.config import load_config

    parser = argparse.ArgumentParser(prog="trajstack check-submission",
                                     description="validate a submission CSV against a dataset")
    parser.add_argument("file", help="submission CSV")
    parser.add_argument("--data", help="dataset folder (default: the config's data_dir)")
    parser.add_argument("--config", default="atmacup18",
                        help="YAML config (for the dataset spec; default: atmacup18)")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    data_dir = args.data or cfg.data_dir
    problems = submission_problems(args.file, data_dir, cfg.dataset)
    if problems:
        print(f"{args.file}: INVALID submission", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    print(f"{args.file}: valid submission ({len(cfg.dataset.target_columns)} columns, rows match "
          f"{table_path(data_dir, cfg.dataset, 'test')})")
    return 0
