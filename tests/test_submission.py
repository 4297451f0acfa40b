"""Submission writer and checker (`trajstack check-submission`)."""

import numpy as np
import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset

from ensembling.submission import (
    SubmissionError,
    check_submission,
    submission_problems,
    write_submission,
)
from trajstack.cli import main as cli_main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), n_scenes=2, n_test_scenes=3)


def _valid(data):
    n = len(data.test_ids)
    return pd.DataFrame(np.arange(n * 18, dtype=float).reshape(n, 18) / 7,
                        columns=data.spec.target_columns)


def _write(tmp_path, frame, name="sub.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def _check(path, data, capsys):
    code = cli_main(["check-submission", str(path), "--data", str(data.root)])
    return code, capsys.readouterr()


def test_valid_submission_passes(tmp_path, data, capsys):
    path = write_submission(tmp_path / "sub.csv", _valid(data).to_numpy(), data.spec)
    assert submission_problems(path, data.root, data.spec) == []
    code, out = _check(path, data, capsys)
    assert code == 0 and "valid submission" in out.out
    assert pd.read_csv(path).columns.tolist() == data.spec.target_columns


def test_wrong_column_order_is_rejected(tmp_path, data, capsys):
    frame = _valid(data)
    cols = frame.columns.tolist()
    cols[0], cols[1] = cols[1], cols[0]
    code, out = _check(_write(tmp_path, frame[cols]), data, capsys)
    assert code == 2
    assert "wrong column order: column 1 is 'y_0', expected 'x_0'" in out.err


def test_wrong_row_count_is_rejected(tmp_path, data, capsys):
    code, out = _check(_write(tmp_path, _valid(data).iloc[:-1]), data, capsys)
    assert code == 2
    assert f"{len(data.test_ids) - 1} rows, but the test file has {len(data.test_ids)}" in out.err


@pytest.mark.parametrize("value,what", [(np.nan, "NaN or empty"), (np.inf, "infinite"),
                                        ("abc", "non-numeric")])
def test_non_finite_values_are_rejected(tmp_path, data, capsys, value, what):
    frame = _valid(data).astype(object)
    frame.iloc[2, 4] = value
    code, out = _check(_write(tmp_path, frame), data, capsys)
    assert code == 2
    assert f"column y_1: 1 {what} values (first at data row 3" in out.err


def test_id_column_and_missing_columns_are_rejected(tmp_path, data):
    frame = _valid(data)
    frame.insert(0, "ID", data.test_ids)
    problems = submission_problems(_write(tmp_path, frame), data.root, data.spec)
    assert any("unexpected columns ['ID']" in p for p in problems)
    problems = submission_problems(_write(tmp_path, _valid(data).drop(columns="z_5")),
                                   data.root, data.spec)
    assert any("missing columns ['z_5']" in p for p in problems)


def test_check_submission_raises_listing_every_problem(tmp_path, data):
    frame = _valid(data).iloc[:-1].astype(object)
    frame.iloc[0, 0] = np.nan
    with pytest.raises(SubmissionError, match="(?s)rows, but.*NaN or empty"):
        check_submission(_write(tmp_path, frame), data.root, data.spec)
    with pytest.raises(SubmissionError, match="file not found"):
        check_submission(tmp_path / "missing.csv", data.root, data.spec)


def test_writer_refuses_nan_and_wrong_shape(tmp_path, data):
    values = _valid(data).to_numpy().copy()  # pandas may hand out a read-only view
    values[0, 0] = np.nan
    with pytest.raises(SubmissionError, match="NaN"):
        write_submission(tmp_path / "s.csv", values, data.spec)
    with pytest.raises(SubmissionError, match="shape"):
        write_submission(tmp_path / "s.csv", values[:, :5], data.spec)
    assert not (tmp_path / "s.csv").exists()
