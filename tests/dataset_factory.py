"""Tiny but complete datasets for tests: the spec's CSV columns, PNG frames, traffic-light JSON.

Everything schema-related (columns, kinds, frame names, image size, light classes) is read from
the spec, so the files match whatever `configs/atmacup18.yaml` says. Only the ID text is
written in the atmaCup form `<32 hex scene>_<deciseconds>`; the factory asserts the spec's
pattern accepts it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageMode

from trajstack.config import load_config
from trajstack.spec import DatasetSpec


@dataclass
class TinyDataset:
    root: Path
    spec: DatasetSpec
    train_ids: list[str]
    test_ids: list[str]

    def table_path(self, split: str) -> Path:
        return self.root / (self.spec.train_file if split == "train" else self.spec.test_file)

    def read_table(self, split: str) -> pd.DataFrame:
        """The CSV as text, exactly as written (no NaN interpretation)."""
        return pd.read_csv(self.table_path(split), dtype=str, keep_default_na=False)

    def write_table(self, split: str, frame: pd.DataFrame) -> None:
        frame.to_csv(self.table_path(split), index=False)

    def frame_path(self, row_id: str, frame_index: int = 0) -> Path:
        return self.root / self.spec.images_dir / row_id / self.spec.frames[frame_index]

    def light_path(self, row_id: str) -> Path:
        return self.root / str(self.spec.traffic_lights_dir) / f"{row_id}.json"


def default_spec() -> DatasetSpec:
    return load_config("atmacup18").dataset


def make_tiny_dataset(
    root: str | Path,
    n_scenes: int = 3,
    rows_per_scene: int = 2,
    seed: int = 0,
    n_test_scenes: int = 2,
    spec: DatasetSpec | None = None,
) -> TinyDataset:
    """Write a valid dataset of `n_scenes` train and `n_test_scenes` test scenes under `root`.

    Parameters
    ----------
    root : folder to write into (created).
    n_scenes, rows_per_scene : train size; rows of a scene are 10 s apart, as in the real data.
    seed : all values, pixels and lights derive from it.
    n_test_scenes : test scenes (disjoint from the train scenes).
    spec : the dataset spec (default: the atmacup18 preset's).
    """
    spec = spec or default_spec()
    root = Path(root)
    rng = np.random.default_rng(seed)
    scenes = _unique_scenes(rng, n_scenes + n_test_scenes)
    train_ids = _ids(scenes[:n_scenes], rows_per_scene, spec)
    test_ids = _ids(scenes[n_scenes:], rows_per_scene, spec)
    root.mkdir(parents=True, exist_ok=True)
    _telemetry_table(train_ids, spec, rng, with_targets=True).to_csv(root / spec.train_file, index=False)
    _telemetry_table(test_ids, spec, rng, with_targets=False).to_csv(root / spec.test_file, index=False)
    for row_id in train_ids + test_ids:
        _write_frames(root, row_id, spec, rng)
        if spec.traffic_lights_dir:
            _write_lights(root, row_id, spec, rng)
    return TinyDataset(root, spec, train_ids, test_ids)


def _unique_scenes(rng: np.random.Generator, n: int) -> list[str]:
    scenes: set[str] = set()
    while len(scenes) < n:
        scenes.add(rng.bytes(16).hex())
    return sorted(scenes)


def _ids(scenes: list[str], rows_per_scene: int, spec: DatasetSpec) -> list[str]:
    ids = sorted(f"{scene}_{20 + 100 * k}" for scene in scenes for k in range(rows_per_scene))
    assert all(spec.parse_id(i) is not None for i in ids), "factory IDs must match the spec"
    return ids


def _telemetry_table(
    ids: list[str], spec: DatasetSpec, rng: np.random.Generator, with_targets: bool
) -> pd.DataFrame:
    n = len(ids)
    columns: dict[str, object] = {spec.id_column: ids}
    for col, kind in spec.telemetry.items():
        if kind == "bool":
            columns[col] = np.where(rng.random(n) < 0.3, spec.bool_true[0], spec.bool_false[0])
        elif kind == "category":
            columns[col] = rng.choice(spec.categories[col], size=n)
        else:
            columns[col] = np.round(rng.normal(size=n), 4)
    if with_targets:
        for col in spec.target_columns:
            columns[col] = np.round(rng.normal(size=n), 4)
    return pd.DataFrame(columns)


def random_frame(spec: DatasetSpec, rng: np.random.Generator) -> np.ndarray:
    """A smooth random image (compresses like a photo, not like noise) in the spec's size."""
    bands = len(ImageMode.getmode(spec.image_mode).bands)
    coarse = rng.integers(0, 256, size=(spec.image_height // 8, spec.image_width // 8, bands), dtype=np.uint8)
    mode = spec.image_mode if bands > 1 else "L"
    smooth = Image.fromarray(coarse.squeeze(), mode=mode).resize(
        (spec.image_width, spec.image_height), Image.Resampling.BILINEAR
    )
    noisy = np.asarray(smooth, dtype=np.int16) + rng.integers(-4, 5, size=np.asarray(smooth).shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _write_frames(root: Path, row_id: str, spec: DatasetSpec, rng: np.random.Generator) -> None:
    folder = root / spec.images_dir / row_id
    folder.mkdir(parents=True, exist_ok=True)
    for frame in spec.frames:
        Image.fromarray(random_frame(spec, rng)).save(folder / frame)


def _write_lights(root: Path, row_id: str, spec: DatasetSpec, rng: np.random.Generator) -> None:
    folder = root / str(spec.traffic_lights_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lights = []
    for index in range(int(rng.integers(0, 3))):
        x1, y1 = (float(v) for v in rng.uniform(0, 60, size=2))
        lights.append({
            "index": index,
            "class": str(rng.choice(spec.traffic_light_classes)),
            "bbox": [round(x1, 2), round(y1, 2), round(x1 + 5, 2), round(y1 + 10, 2)],
        })
    (folder / f"{row_id}.json").write_text(json.dumps(lights))
