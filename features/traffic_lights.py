"""Traffic-light features from `<data_dir>/<traffic_lights_dir>/<ID>.json`.

Each file is a list of detections `{"index", "class", "bbox": [x1, y1, x2, y2]}`; one light can
carry several entries sharing a bbox (e.g. red + left). Features: entries per class, number of
distinct lights, and the largest light's classes (one-hot) and box: the largest box is the
nearest light, the one the driver reacts to. A missing file gives NaN (unknown), an empty list
gives zeros (no light seen); no folder at all (a telemetry-only dataset) gives no columns,
with a warning unless `dataset.traffic_lights_dir` is null.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from features.base import BuildContext, id_frame, register_builder
from trajstack.io import data_hash
from trajstack.logs import get_logger

logger = get_logger(__name__)

BOX = ("x1", "y1", "x2", "y2", "width", "height", "area", "cx", "cy")


def lights_dir(ctx: BuildContext) -> Path | None:
    name = ctx.spec.traffic_lights_dir
    if name is None:
        return None
    folder = Path(ctx.cfg.data_dir) / name
    return folder if folder.is_dir() else None


def lights_inputs(ctx: BuildContext) -> dict[str, str]:
    """Hash of the folder listing (names, sizes, mtimes): cheap, and changes when a file does."""
    folder = lights_dir(ctx)
    if folder is None:
        return {"traffic_lights": "none"}
    with os.scandir(folder) as entries:
        listing = sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
    return {"traffic_lights": data_hash(listing)}


def light_row(entries: list[dict], classes: list[str], largest: bool) -> list[float]:
    """Feature values of one row's detections (see `feature_names` for the order)."""
    counts = [sum(e.get("class") == c for e in entries) for c in classes]
    boxes = {tuple(e["bbox"]) for e in entries if len(e.get("bbox") or ()) == 4}
    row = [float(len(entries)), float(len(boxes)), *map(float, counts)]
    if not largest:
        return row
    if not boxes:
        return row + [0.0] * len(classes) + [np.nan] * len(BOX)
    x1, y1, x2, y2 = max(boxes, key=lambda b: abs((b[2] - b[0]) * (b[3] - b[1])))
    its = {e.get("class") for e in entries if tuple(e.get("bbox") or ()) == (x1, y1, x2, y2)}
    w, h = x2 - x1, y2 - y1
    return row + [float(c in its) for c in classes] + [
        x1, y1, x2, y2, w, h, w * h, (x1 + x2) / 2, (y1 + y2) / 2]


def feature_names(classes: list[str], largest: bool) -> list[str]:
    names = ["tl_n_entries", "tl_n_lights", *(f"tl_count_{c}" for c in classes)]
    if largest:
        names += [f"tl_largest_is_{c}" for c in classes] + [f"tl_largest_{b}" for b in BOX]
    return names


def traffic_light_features(table: pd.DataFrame, ctx: BuildContext) -> pd.DataFrame:
    """Per-row traffic-light features of one split (rows in the table's order)."""
    spec = ctx.spec
    out = id_frame(table, spec)
    folder = lights_dir(ctx)
    if folder is None:
        # No columns rather than all-NaN ones: a telemetry-only dataset keeps a clean table.
        if spec.traffic_lights_dir is None:
            logger.info("traffic_lights: dataset.traffic_lights_dir is null; no traffic-light features")
        else:
            logger.warning(f"traffic_lights: no folder {Path(ctx.cfg.data_dir) / spec.traffic_lights_dir}; "
                           "no traffic-light features (set dataset.traffic_lights_dir=null to say so)")
        return out
    classes, largest = spec.traffic_light_classes, ctx.cfg.features.traffic_lights.largest_light
    names = feature_names(classes, largest)
    values = np.full((len(table), len(names)), np.nan)
    for i, row_id in enumerate(table[spec.id_column]):
        path = folder / f"{row_id}.json"
        if path.exists():
            values[i] = light_row(json.loads(path.read_text()) or [], classes, largest)
    return pd.concat([out, pd.DataFrame(values, columns=names)], axis=1)


def _build(ctx: BuildContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    return traffic_light_features(ctx.train, ctx), traffic_light_features(ctx.test, ctx)


register_builder(
    "traffic_lights",
    config_of=lambda cfg: cfg.features.traffic_lights.model_dump(mode="json"),
    extra_inputs=lights_inputs,
)(_build)
