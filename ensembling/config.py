"""Config sections for the blend, the report and experiment tracking (issue 7).

Pure pydantic: importing it must stay cheap (no scipy, matplotlib or mlflow).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from trajstack.spec import StrictModel


class CaruanaConfig(StrictModel):
    # Number of greedy picks (with replacement); weights are pick counts / ensemble_size.
    ensemble_size: int = Field(50, ge=1)
    # True: one selection per target column; False: one selection shared by all targets.
    per_target: bool = True
    # Keep the picks only up to the step with the best fit score (AutoGluon's use_best).
    use_best: bool = True


class SegmentConfig(StrictModel):
    # Segmentation of the rows, a key of `ensembling.segments.SEGMENTERS` (scene_size: rows in
    # the row's scene); None: one set of weights for all rows.
    by: str | None = None
    # Inclusive upper bounds of every segment but the last: [2] gives scenes of 1-2 rows and 3+.
    edges: list[int] = [2]
    # A segment gets its own weights only with at least this many training rows in every fold.
    min_rows: int = Field(50, ge=1)


class BlendConfig(StrictModel):
    # Weight optimiser, a key of `ensembling.optimizers.OPTIMIZERS`: lp | caruana | mean.
    optimizer: str = "lp"
    # Input runs as "stage/run" (e.g. stage2/lightgbm); None: every finished run of the
    # experiment outside the blend stage.
    runs: list[str] | None = None
    # Blend run folder name under outputs/<exp>/blend/; None: the optimiser key.
    name: str | None = None
    # Fit weights on K-1 folds and score on the held-out one (the honest CV figure).
    nested: bool = True
    # Written to outputs/<exp>/<submission_file>.
    submission_file: str = "submission.csv"
    caruana: CaruanaConfig = CaruanaConfig()
    # Weights per segment (e.g. scene size), each kept only where it beats the global weights
    # in a nested comparison; the nested blend score makes that choice on inner folds.
    segments: SegmentConfig = SegmentConfig()

    @property
    def run_name(self) -> str:
        return self.name or self.optimizer


class ReportConfig(StrictModel):
    # `trajstack blend` ends by writing the report unless this is false.
    enabled: bool = True
    # Telemetry columns the OOF error is plotted against (names in the dataset's telemetry).
    speed_column: str = "vEgo"
    steering_column: str = "steeringAngleDeg"
    # Quantile bins for the error-versus-telemetry curves.
    error_bins: int = 12
    # Trajectory overlays: this many best, worst and random validation rows each.
    overlay_rows: int = Field(3, ge=0)
    # Target axes pointing forward, left and up in the ego frame (for projecting paths).
    ego_axes: tuple[str, str, str] = ("x", "y", "z")
    # Stage-2 features shown per learner.
    top_features: int = Field(20, ge=1)
    seed: int = 0


class TrackingConfig(StrictModel):
    backend: Literal["none", "mlflow"] = "none"
    # mlflow tracking URI; a local SQLite store by default (no server).
    uri: str = "sqlite:///outputs/mlflow.db"
    # Where mlflow stores logged files; None: <output_dir>/mlflow-artifacts.
    artifact_location: str | None = None
    # mlflow experiment name; None: the trajstack experiment name.
    experiment_name: str | None = None
