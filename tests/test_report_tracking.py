"""Optional mlflow tracking into a local SQLite store (offline, tmp folder)."""

import pytest
from test_blend_fixtures import make_experiment, write_all_models

from ensembling.tracking import flatten, log_experiment
from trajstack.cli import main as cli_main


def test_flatten_nested_config():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_mlflow_logs_each_run_once_with_params_metrics_and_report(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    exp = make_experiment(tmp_path, extra_overrides=[
        "tracking.backend=mlflow", f"tracking.uri={uri}",
        f"tracking.artifact_location={tmp_path / 'artifacts'}", "report.overlay_rows=1"])
    write_all_models(exp)
    assert cli_main(["blend", *exp.cli_args()]) == 0  # blend logs at its end
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("synthetic")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"stage1/convnext", "stage2/lightgbm", "stage2/xgboost", "blend/lp"}
    blend = runs["blend/lp"]
    assert blend.data.params["blend.optimizer"] == "lp"
    assert "mae_report.mae" in blend.data.metrics and "wall_time_s" in blend.data.metrics
    assert "in_sample_mae_report.per_axis.x" in blend.data.metrics
    artifacts = [a.path for a in client.list_artifacts(blend.info.run_id, "report")]
    assert "report/index.html" in artifacts and "report/overlay_best.png" in artifacts
    assert runs["stage2/lightgbm"].data.metrics["mae_report.mae"] > 0
    # A second pass logs nothing new.
    assert log_experiment(exp.cfg) == []
    assert len(client.search_runs([experiment.experiment_id])) == 4
