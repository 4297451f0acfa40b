"""The dataset spec: everything about the files' schema, read from `dataset:` in the config.

Column names, dtypes, frame names, targets, the ID pattern and the flip rules live here and
nowhere else, so a dataset of the same kind with other names needs only another YAML file.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, model_validator

ColumnKind = Literal["float", "bool", "category"]


class StrictModel(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class FlipSpec(StrictModel):
    negate_columns: list[str] = []
    swap_columns: list[tuple[str, str]] = []
    negate_axes: list[str] = []
    swap_light_classes: list[tuple[str, str]] = []


class CameraSpec(StrictModel):
    K: list[list[float]]
    height_m: float


class DatasetSpec(StrictModel):
    model_config = ConfigDict(extra="forbid", ignored_types=(cached_property,))

    train_file: str = "train_features.csv"
    test_file: str = "test_features.csv"
    sample_submission_file: str | None = None
    # None: a telemetry-only dataset (no frames): validate checks tables (and traffic lights),
    # stage 1 and the image cache refuse, stage 2 runs with features.stage1=false.
    images_dir: str | None = "images"
    # None: no traffic-light detections (the traffic_lights builder then adds no columns).
    traffic_lights_dir: str | None = "traffic_lights"
    id_column: str = "ID"
    id_pattern: str
    time_unit_s: float = 0.1
    frames: list[str]
    frame_offsets_s: list[float]
    image_height: int
    image_width: int
    image_mode: str = "RGB"
    telemetry: dict[str, ColumnKind]
    categories: dict[str, list[str]] = {}
    bool_true: list[str] = ["True"]
    bool_false: list[str] = ["False"]
    axes: list[str]
    horizons_s: list[float]
    target_format: str = "{axis}_{k}"
    flip: FlipSpec = FlipSpec()
    traffic_light_classes: list[str] = []
    camera: CameraSpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        pattern = re.compile(self.id_pattern)
        if "scene" not in pattern.groupindex or "time" not in pattern.groupindex:
            raise ValueError("dataset.id_pattern needs named groups (?P<scene>...) and (?P<time>...)")
        if len(self.frames) != len(self.frame_offsets_s):
            raise ValueError("dataset.frames and dataset.frame_offsets_s differ in length")
        for col, kind in self.telemetry.items():
            if kind == "category" and col not in self.categories:
                raise ValueError(f"dataset.categories lacks the levels of category column '{col}'")
        known = set(self.telemetry)
        for col in self.flip.negate_columns + [c for pair in self.flip.swap_columns for c in pair]:
            if col not in known:
                raise ValueError(f"dataset.flip names '{col}', which is not a telemetry column")
        for axis in self.flip.negate_axes:
            if axis not in self.axes:
                raise ValueError(f"dataset.flip.negate_axes names '{axis}', not one of {self.axes}")
        return self

    # ------------------------------------------------------------------ derived names
    def frames_folder(self, data_dir: str | Path) -> Path | None:
        """The dataset's frames folder, or None for a telemetry-only dataset (unset or absent)."""
        if self.images_dir is None:
            return None
        folder = Path(data_dir) / self.images_dir
        return folder if folder.is_dir() else None

    @cached_property
    def id_regex(self) -> re.Pattern[str]:
        return re.compile(self.id_pattern)

    @property
    def telemetry_columns(self) -> list[str]:
        return list(self.telemetry)

    def columns_of_kind(self, kind: ColumnKind) -> list[str]:
        return [c for c, k in self.telemetry.items() if k == kind]

    @property
    def n_horizons(self) -> int:
        return len(self.horizons_s)

    def target_name(self, axis: str, k: int) -> str:
        return self.target_format.format(axis=axis, k=k)

    @property
    def target_columns(self) -> list[str]:
        """Targets in file order: x_0, y_0, z_0, x_1, ... (horizon-major)."""
        return [self.target_name(a, k) for k in range(self.n_horizons) for a in self.axes]

    @property
    def test_columns(self) -> list[str]:
        return [self.id_column, *self.telemetry_columns]

    @property
    def train_columns(self) -> list[str]:
        return [*self.test_columns, *self.target_columns]

    @property
    def target_axes(self) -> list[str]:
        """The axis of each target column, in file order (x, y, z, x, ...)."""
        return [a for _ in range(self.n_horizons) for a in self.axes]

    @property
    def flip_target_sign(self) -> list[float]:
        """Per target column: -1 where the flip negates it, else +1."""
        neg = set(self.flip.negate_axes)
        return [-1.0 if a in neg else 1.0 for a in self.target_axes]

    def parse_id(self, row_id: str) -> tuple[str, int] | None:
        """(scene, time) of an ID, or None when it does not match the pattern."""
        m = self.id_regex.match(row_id)
        if m is None:
            return None
        return m.group("scene"), int(m.group("time"))
