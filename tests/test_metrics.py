import numpy as np
import pandas as pd
import pytest

from trajstack.config import load_config
from trajstack.metrics import mae, mae_report

SPEC = load_config("atmacup18").dataset


def test_mae_report_breakdowns():
    n = 4
    truth = np.zeros((n, 18))
    pred = np.zeros((n, 18))
    pred[:, SPEC.target_columns.index("y_5")] = 6.0  # only y at 3.0 s is off, by 6 m
    report = mae_report(truth, pred, SPEC)
    assert report["mae"] == pytest.approx(6.0 / 18)
    assert report["per_axis"] == pytest.approx({"x": 0.0, "y": 1.0, "z": 0.0})
    assert report["per_horizon"]["3s"] == pytest.approx(2.0)
    assert report["per_horizon"]["0.5s"] == 0.0
    assert report["per_target"]["y_5"] == 6.0 and report["n_rows"] == n


def test_mae_report_reads_frames_by_column_name():
    cols = SPEC.target_columns
    truth = pd.DataFrame(np.ones((2, 18)), columns=cols)
    pred = truth[cols[::-1]] * 0  # other column order: matched by name
    assert mae_report(truth, pred, SPEC)["mae"] == 1.0
    with pytest.raises(KeyError, match="x_0"):
        mae_report(truth.drop(columns="x_0"), pred, SPEC)


def test_rows_with_a_missing_label_leave_the_score_but_missing_predictions_do_not():
    truth = np.zeros((3, 18))
    truth[1, 0] = np.nan  # row 1 lacks one label: left out whole
    truth[2, :] = np.nan  # row 2 has none
    pred = np.ones((3, 18))
    pred[1:] = 50.0
    report = mae_report(truth, pred, SPEC)
    assert report["mae"] == 1.0 and report["n_rows"] == 1 and report["n_unlabelled"] == 2
    assert mae(truth, pred) == 1.0
    pred[0, 3] = np.nan
    assert np.isnan(mae(truth, pred)) and np.isnan(mae_report(truth, pred, SPEC)["mae"])
