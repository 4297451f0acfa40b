"""Optional experiment tracking: every finished run of an experiment logged to mlflow.

One mlflow run per artifact-store run (stage 1, each stage-2 learner, the blend) with its
config as params, its scores and wall time as metrics, and, for the blend, the HTML report as
artifacts. A run already logged with the same signature is not logged again, so rerunning the
pipeline does not duplicate entries. mlflow is an optional extra (`tracking`): without it this
prints a note and does nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from trajstack.artifacts import ArtifactStore, RunResult
from trajstack.config import Config
from trajstack.logs import get_logger

logger = get_logger(__name__)

SIGNATURE_TAG = "trajstack.signature"
MAX_PARAM_CHARS = 500  # long values (lists of columns) are cut: params are for filtering
SKIPPED_SECTIONS = ("dataset",)  # the schema is the same for every run of an experiment


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {"a.b.c": value}; lists and empty mappings are kept as values."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def run_params(run: RunResult) -> dict[str, str]:
    config = {k: v for k, v in run.config.items() if k not in SKIPPED_SECTIONS}
    return {k: str(v)[:MAX_PARAM_CHARS] for k, v in flatten(config).items()}


def run_metrics(run: RunResult) -> dict[str, float]:
    """Numeric leaves of the run's scores (e.g. mae_report.per_axis.x) plus its wall time."""
    metrics = {k: float(v) for k, v in flatten(run.meta.get("scores") or {}).items()
               if isinstance(v, int | float) and not isinstance(v, bool)}
    if run.meta.get("wall_time_s") is not None:
        metrics["wall_time_s"] = float(run.meta["wall_time_s"])
    return metrics


def _sqlite_parent(uri: str) -> None:
    # SQLite creates the file but not its folder.
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def log_experiment(cfg: Config, report_dir: str | Path | None = None) -> list[str]:
    """Log the experiment's finished runs not yet in the tracking store; return their names.

    Parameters
    ----------
    cfg : resolved config (`tracking.uri`, `tracking.artifact_location`, experiment name).
    report_dir : folder logged as artifacts of the blend runs (default outputs/<exp>/report).
    """
    try:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient
    except ImportError:
        logger.warning("tracking: mlflow is not installed (pip install -e '.[tracking]'); nothing logged")
        return []
    _sqlite_parent(cfg.tracking.uri)
    client = MlflowClient(tracking_uri=cfg.tracking.uri)
    name = cfg.tracking.experiment_name or cfg.experiment
    found = client.get_experiment_by_name(name)
    if found is not None:
        experiment_id = found.experiment_id
    else:
        location = cfg.tracking.artifact_location or str(Path(cfg.output_dir) / "mlflow-artifacts")
        experiment_id = client.create_experiment(name, artifact_location=Path(location).resolve().as_uri())
    report_dir = Path(report_dir) if report_dir else cfg.experiment_dir / "report"
    logged = []
    for run in ArtifactStore(cfg.experiment_dir).finished_runs():
        signature = str(run.meta.get("signature"))
        if client.search_runs([experiment_id], f"tags.`{SIGNATURE_TAG}` = '{signature}'", max_results=1):
            continue
        tags = {SIGNATURE_TAG: signature, "trajstack.stage": run.meta.get("stage", ""),
                "trajstack.fold_hash": str(run.fold_hash), "trajstack.dir": str(run.dir)}
        mlflow_run = client.create_run(experiment_id, run_name=run.name,
                                       tags={k: str(v) for k, v in tags.items()})
        run_id = mlflow_run.info.run_id
        now = int(time.time() * 1000)
        client.log_batch(run_id,
                         metrics=[Metric(k, v, now, 0) for k, v in run_metrics(run).items()],
                         params=[Param(k, v) for k, v in run_params(run).items()],
                         tags=[RunTag("trajstack.versions", str(run.meta.get("versions")))])
        if run.meta.get("stage") == "blend" and (report_dir / "index.html").exists():
            client.log_artifacts(run_id, str(report_dir), artifact_path="report")
        client.set_terminated(run_id)
        logged.append(run.name)
    logger.info(f"tracking: logged {len(logged)} new run(s) to {cfg.tracking.uri} "
          f"(experiment '{name}')" + (f": {', '.join(logged)}" if logged else ""))
    return logged
