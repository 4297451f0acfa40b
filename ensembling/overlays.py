"""Trajectory overlays: future paths projected onto frame t through the camera matrix.

Targets are ego positions in the ego frame at t (x forward, y left, z up, metres, origin on
the road). The camera sits `height_m` above the road looking forward, so a point maps to
camera coordinates (right, down, forward) = (-y, height_m - z, x) and then to pixels by K.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from ensembling.plots import _save  # noqa: E402
from trajstack.spec import CameraSpec, DatasetSpec  # noqa: E402

MIN_DEPTH_M = 0.5  # points closer than this (or behind) do not project meaningfully


def ego_to_camera(points: np.ndarray, height_m: float) -> np.ndarray:
    """(n, 3) ego-frame points (x fwd, y left, z up) -> (n, 3) camera coords (right, down, fwd)."""
    points = np.asarray(points, float)
    return np.stack([-points[:, 1], height_m - points[:, 2], points[:, 0]], axis=1)


def project(points: np.ndarray, camera: CameraSpec) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (n, 2) of ego-frame points and a mask of those in front of the camera."""
    cam = ego_to_camera(points, camera.height_m)
    valid = cam[:, 2] > MIN_DEPTH_M
    homogeneous = cam @ np.asarray(camera.K, float).T
    depth = np.where(valid, homogeneous[:, 2], np.nan)
    return homogeneous[:, :2] / depth[:, None], valid


def path_points(row: np.ndarray, spec: DatasetSpec,
                ego_axes: tuple[str, str, str] = ("x", "y", "z")) -> np.ndarray:
    """(n_horizons, 3) forward/left/up points of one row of targets in spec order.

    Parameters
    ----------
    row : the targets of one row, spec order (horizon-major).
    ego_axes : names of the spec's forward, left and up axes (config `report.ego_axes`).
    """
    by_horizon = np.asarray(row, float).reshape(spec.n_horizons, len(spec.axes))
    missing = [a for a in ego_axes if a not in spec.axes]
    if missing:
        raise ValueError(f"report.ego_axes names {missing}, not among dataset.axes {spec.axes}")
    order = [spec.axes.index(a) for a in ego_axes]
    return by_horizon[:, order]


def frame_at_t(data_dir: str | Path, spec: DatasetSpec, row_id: str) -> np.ndarray | None:
    """The frame at time t (largest offset) of a row as an RGB array, or None when missing."""
    name = spec.frames[int(np.argmax(spec.frame_offsets_s))]
    path = Path(data_dir) / spec.images_dir / row_id / name
    if not path.exists():
        return None
    return np.asarray(Image.open(path).convert("RGB"))


def plot_overlays(rows: list[dict], spec: DatasetSpec, data_dir: str | Path, title: str,
                  path: str | Path, ego_axes: tuple[str, str, str] = ("x", "y", "z")) -> Path:
    """One column per row: frame t with true and predicted paths, and the same paths top-down.

    Parameters
    ----------
    rows : dicts with ``id``, ``true`` and ``pred`` (target rows in spec order) and ``mae``.
    """
    if spec.camera is None:
        raise ValueError("dataset.camera (K, height_m) is needed for trajectory overlays")
    fig, axes = plt.subplots(2, len(rows), figsize=(3.4 * len(rows), 4.6), squeeze=False,
                             gridspec_kw={"height_ratios": [1, 1.4]})
    for col, row in enumerate(rows):
        true, pred = path_points(row["true"], spec, ego_axes), path_points(row["pred"], spec, ego_axes)
        _camera_view(axes[0, col], frame_at_t(data_dir, spec, row["id"]), true, pred, spec)
        axes[0, col].set_title(f"{row['id'][:10]}... MAE {row['mae']:.3f}", fontsize=8)
        _top_view(axes[1, col], true, pred)
    axes[0, 0].legend(loc="lower left", fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def _camera_view(ax: plt.Axes, image: np.ndarray | None, true: np.ndarray, pred: np.ndarray,
                 spec: DatasetSpec) -> None:
    if image is None:
        image = np.full((spec.image_height, spec.image_width, 3), 200, np.uint8)
    ax.imshow(image)
    for points, colour, label in ((true, "lime", "true"), (pred, "red", "predicted")):
        pixels, valid = project(points, spec.camera)
        ax.plot(pixels[valid, 0], pixels[valid, 1], "-o", color=colour, markersize=3,
                linewidth=1.5, label=label)
    ax.set_xlim(0, spec.image_width)
    ax.set_ylim(spec.image_height, 0)
    ax.set_axis_off()


def _top_view(ax: plt.Axes, true: np.ndarray, pred: np.ndarray) -> None:
    # Bird's-eye view, x forward drawn upwards and y left drawn to the left.
    for points, colour in ((true, "green"), (pred, "red")):
        xs = np.concatenate([[0.0], points[:, 0]])
        ys = np.concatenate([[0.0], points[:, 1]])
        ax.plot(-ys, xs, "-o", color=colour, markersize=3)
    span = max(5.0, float(np.abs(np.concatenate([true[:, :2], pred[:, :2]])).max()) * 1.1)
    ax.set_xlim(-span / 2, span / 2)
    ax.set_ylim(min(-1.0, float(min(true[:, 0].min(), pred[:, 0].min())) - 1), span)
    ax.set_xlabel("right (m)", fontsize=7)
    ax.set_ylabel("forward (m)", fontsize=7)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
