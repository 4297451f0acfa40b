"""Config section for the feature builders (issue 6). Pure pydantic: importing it must stay cheap (no torch).

`builders` lists the builders by registry name, in column order; each builder's options live
in its own sub-section. `features.stage1: false` is shorthand for `features.stage1.enabled: false`
(stage 2 then runs without stage 1 and without images). `features.files` lists per-ID
column files to join (bring-your-own features); the `files` builder runs whenever it is non-empty.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trajstack.spec import StrictModel

PhysicsModel = Literal["constant_velocity", "constant_acceleration", "constant_turn_rate"]
SceneStat = Literal["mean", "std", "min", "max"]


class SceneLagConfig(StrictModel):
    # Telemetry columns to lag; None: every float and bool column of the dataset spec.
    columns: list[str] | None = None
    # Row offsets within the scene (negative: earlier rows, positive: later rows).
    offsets: list[int] = [-2, -1, 1, 2]
    # Also the difference value - lagged value for each offset.
    diffs: bool = True
    # Whole-scene statistics of each column, and the row's deviation from the scene mean.
    stats: list[SceneStat] = ["mean", "std", "min", "max"]


class PhysicsConfig(StrictModel):
    # Telemetry column names (schema lives in the dataset spec; the atmaCup names are set in
    # configs/atmacup18.yaml). A name missing from the spec gives NaN features, not a crash.
    speed_column: str | None = None
    accel_column: str | None = None
    steering_column: str | None = None
    steering_unit: Literal["deg", "rad"] = "deg"
    # Steering-wheel angle / steering ratio = road-wheel angle; curvature = tan(angle) / wheelbase.
    steering_ratio: float = 15.0
    wheelbase_m: float = 2.7
    # Which target axes are forward and left in the ego frame (every other axis is forecast 0).
    forward_axis: str = "x"
    left_axis: str = "y"
    models: list[PhysicsModel] = ["constant_velocity", "constant_acceleration", "constant_turn_rate"]
    # The model used as a baseline to learn the residual to (stage1.baseline=physics,
    # stage2.target_baseline=physics).
    residual_baseline: PhysicsModel = "constant_turn_rate"


class TrafficLightConfig(StrictModel):
    # Also the class one-hot and box of the largest (so probably nearest) light.
    largest_light: bool = True


ImageStatGroup = Literal["flow", "similarity", "regions", "row_profile", "horizon", "orientation",
                         "colour_rows", "vertical_shift", "row_colours", "ground_edge",
                         "wide_edges", "vanishing_point", "vanishing_bands"]


class ImageStatsConfig(StrictModel):
    # Statistic groups of features/image_stats.py, in column order (ablation in the README).
    # The default three carry the grade and the bend (87 columns); flow, similarity and regions
    # add 255 more columns for about 0.01 on y and make stage 2 several times slower.
    groups: list[ImageStatGroup] = ["row_profile", "horizon", "orientation"]
    # Coarse grid (rows x cols) for per-cell statistics; grid_rows is also the number of bands.
    grid_rows: int = Field(4, ge=1)
    grid_cols: int = Field(4, ge=1)
    # Bins of the per-row edge / intensity profiles of the frame at t.
    profile_bins: int = Field(16, ge=1)
    # Groups (of `groups`) whose every column also comes as the row's deviation from the mean over
    # its scene (`<column>_minus_scene_mean`): the same drive's other rows calibrate its camera,
    # exposure and scenery, so what is left is what changed at this row.
    scene_deviation: list[ImageStatGroup] = []
    # Groups (of `groups`) whose columns also come as they are at the scene's neighbouring rows
    # (`scene_offsets`, -1: the row before; `<column>_prev1`, and the row's value minus it,
    # `<column>_diff_prev1`): the frame's latest statistics and the medians over its frames, the
    # older frames' left out. In atmaCup the rows are 10 s apart: the pitch of the camera before
    # and after says how the grade bends, where the horizon of this row's frame is hidden.
    scene_neighbours: list[ImageStatGroup] = []
    scene_offsets: list[int] = [-1, 1]
    # A progress bar while computing (on a terminal); does not change the output.
    progress: bool = True

    @model_validator(mode="after")
    def _scene_options_of_computed_groups(self) -> ImageStatsConfig:
        for option in ("scene_deviation", "scene_neighbours"):
            missing = [g for g in getattr(self, option) if g not in self.groups]
            if missing:
                raise ValueError(f"features.image_stats.{option} names {missing}, which are not "
                                 f"in features.image_stats.groups {self.groups}: add them there "
                                 "or drop them here")
        if 0 in self.scene_offsets:
            raise ValueError("features.image_stats.scene_offsets has 0 (the row itself): use "
                             "non-zero offsets such as [-1, 1]")
        return self


class Stage1FeatureConfig(StrictModel):
    enabled: bool = True
    # Stage-1 run names under outputs/<exp>/stage1/; None: every finished run.
    runs: list[str] | None = None
    # The 27 auxiliary predictions (velocities, accelerations) besides the 18 targets.
    aux: bool = True
    # Velocities / accelerations / headings derived from the 18 predictions.
    derived: bool = True


class FeatureFileConfig(StrictModel):
    """One source of per-ID columns: `path` holding both splits' IDs, or a `train` + `test` pair.

    Paths are relative to the working directory (like `data_dir`); .parquet or .csv.
    """

    path: str | None = None
    train: str | None = None
    test: str | None = None
    # Put before every column name (e.g. depth_), so that names cannot clash with other features.
    prefix: str = ""
    # Columns to join (None: every column but the ID); each must be numeric or boolean.
    columns: list[str] | None = None

    @model_validator(mode="after")
    def _one_layout(self) -> FeatureFileConfig:
        if self.path is not None and (self.train is not None or self.test is not None):
            raise ValueError(f"give either path ({self.path}) or train + test, not both")
        if self.path is None:
            if self.train is None and self.test is None:
                raise ValueError("give path (one file with train and test IDs) or train + test")
            if self.test is None:
                raise ValueError(f"train file {self.train} has no test counterpart: add "
                                 "test: <file with the test IDs> (or use path: for one file "
                                 "holding both)")
            if self.train is None:
                raise ValueError(f"test file {self.test} has no train counterpart: add "
                                 "train: <file with the train IDs> (or use path: for one file "
                                 "holding both)")
        return self

    def files(self) -> dict[str, str]:
        """Split name (train, test, or both) -> file path."""
        return {"both": self.path} if self.path is not None else {
            "train": str(self.train), "test": str(self.test)}


class FeaturesConfig(StrictModel):
    # Registry names, in column order: telemetry, scene_lags, physics, traffic_lights,
    # image_stats (off here, on in configs/demo.yaml), stage1 (and files, which `files` below
    # switches on).
    builders: list[str] = ["telemetry", "scene_lags", "physics", "traffic_lights", "stage1"]
    # Cache each builder's output under outputs/<exp>/features/, keyed by its input hash.
    cache: bool = True
    scene_lags: SceneLagConfig = SceneLagConfig()
    physics: PhysicsConfig = PhysicsConfig()
    traffic_lights: TrafficLightConfig = TrafficLightConfig()
    image_stats: ImageStatsConfig = ImageStatsConfig()
    stage1: Stage1FeatureConfig = Stage1FeatureConfig()
    # Per-ID columns from the user's files, e.g. [{train: a.parquet, test: b.parquet, prefix:
    # depth_}] or [{path: both.csv, prefix: cam_}]. Non-empty switches the `files` builder on
    # (appended after `builders`, unless `builders` places it; listed there with no files, it
    # adds nothing).
    files: list[FeatureFileConfig] = []

    @field_validator("stage1", mode="before")
    @classmethod
    def _stage1_switch(cls, value: Any) -> Any:
        # `features.stage1: false` (or true) is the on/off switch of the whole builder.
        return {"enabled": value} if isinstance(value, bool) else value

    @field_validator("builders")
    @classmethod
    def _no_duplicates(cls, value: list[str]) -> list[str]:
        dupes = sorted({b for b in value if value.count(b) > 1})
        if dupes:
            raise ValueError(f"features.builders lists {dupes} more than once")
        return value

    @property
    def active_builders(self) -> list[str]:
        """Builders that run: the list, less stage1 when it is switched off; `files` runs exactly
        when `features.files` is non-empty (at the end, unless the list places it)."""
        active = [b for b in self.builders if (b != "stage1" or self.stage1.enabled)
                  and (b != "files" or self.files)]
        if self.files and "files" not in active:
            active.append("files")
        return active

    @property
    def uses_stage1(self) -> bool:
        return "stage1" in self.active_builders
