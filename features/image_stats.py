"""Image statistics computed without a network: optical flow, frame similarity, edge profiles.

A CNN learning from scratch needs tens of thousands of rows to read the road's geometry from
the frames; a GBDT can use a few hundred hand-made statistics from a couple of thousand rows.
Every statistic here is plain camera geometry, meaningful on any forward-facing dash cam:

- `flow`: dense optical flow (OpenCV DIS, fast preset) between consecutive frames, averaged per cell of
  a coarse grid, plus an affine fit of the whole field: its translation is the camera's yaw and
  pitch rate, its divergence the expansion of forward motion.
- `similarity`: normalised cross-correlation and mean absolute difference of consecutive frames,
  per horizontal band (how much and where the view changed).
- `regions`: mean and standard deviation of intensity and mean |horizontal / vertical gradient|
  per grid cell of the frame at t.
- `row_profile`: per-row strength of horizontal edges and per-row mean intensity of the frame at
  t (pooled into bins), and the row of the strongest horizontal edge / intensity step in each
  frame: where the horizon sits, which moves with the camera's pitch and so with the road's
  grade.
- `horizon`: the camera's pitch from the row of the strongest horizontal edge of each frame
  (the horizon line sits fy * tan(pitch) below the principal point, K in `dataset.camera`), and
  the height change it implies over each target horizon if the road keeps that grade:
  tan(pitch) * the constant-acceleration distance (speed and acceleration from telemetry).
- `colour_rows`: per frame, rows where the colour changes most sharply in the upper three
  quarters of the frame (where the horizon and the far road lie): per column the topmost and
  the lowest strong colour step (median over columns, so a pole or a car does not count), the
  best split of the column-median colour profile into an upper and a lower region (the classic
  sky/ground segmentation criterion), and the peak of the row-mean colour step; plus how each
  moved from the older frames to the frame at t (the pitch rate, hence the grade's change).
  Full-row resolution: one row is 1 / fy of grade (about 0.0045 here).
- `vertical_shift`: per pair of frames, how far the upper half of the view moved up or down
  (sub-pixel, by cross-correlating its per-row edge-strength and intensity profiles): far away,
  the view moves only with the camera's pitch, so this is the pitch change between frames, the
  change of the road's grade under the car (pitch change / fy radians per pixel).
- `row_colours`: the colour of each row of the frame at t in its upper part (median over the
  columns, so a pole or a car does not count) and its distance to the top row's colour: where
  the sky, the skyline and the far ground lie row by row, at full resolution, for the GBDT to
  read the horizon's row (hence the pitch) from directly.
- `ground_edge`: per frame, the top edge of the ground: the lowest row in the upper part of the
  frame where nearly the whole width changes colour from the row above. The far ground meets
  the sky or the skyline along the whole width at the horizon, while the edges of objects above
  it and of the road below it span only part of it (where no row spans 90% of the width, the
  lowest spanning half of it: a close car or truck across the horizon). Where the road ahead
  rises, the crest hides the horizon and the edge is the crest's (which is what the height ahead
  depends on). The row is where the camera's pitch to gravity shows: fy * tan(pitch) below the
  principal point.
  Missing (NaN) where no row qualifies, e.g. the horizon above the frame.
- `wide_edges`: per frame, the candidates for the horizon that `ground_edge`'s single rule may
  miss: the lowest and the highest of the rows whose edge spans (within 0.05) the most of the
  width, that share, and how many rows span half of it. A crossing road or a long car body below
  the horizon is also a wide edge, and the lowest one is then below the horizon; the widest is
  more often the horizon itself, and the count says when there was a choice. With
  `vanishing_point` on, the lowest and highest rows also come minus the scene's vanishing row.
- `vanishing_point`: per frame, the point where the road's straight edges meet (lane lines, road
  edges and kerbs run into the distance at a slant; the horizon, car bodies and poles, horizontal
  or vertical, are left out): Canny edges and probabilistic Hough segments on the frame upscaled
  4x (sub-pixel lines), then the point nearest all of them, robustly weighted. Its row is where
  the road's own plane meets the sky, fy * tan(the camera's pitch to the road) below the
  principal point, while the ground's top edge sits at the pitch to gravity: their difference is
  the grade. The camera's mount pitch is in both, so the scene's median vanishing row calibrates
  it (`img_vanishing_row_scene_median`) and, with `ground_edge` (`wide_edges`) on, each frame's
  ground edge (widest edges) minus it is the grade proxy (`img_ground_edge_minus_vanishing_*`).
  Missing where fewer than two slanted segments are found.
- `vanishing_bands`: the same point from the far road's edges alone and from the near road's
  (`FAR_ROAD`, `NEAR_ROAD`), and far minus near: on an even grade they coincide, and where the
  grade changes ahead the far edges bend away (up for a rise, down for a dip). With
  `vanishing_point` on, both also come minus the scene's vanishing row.
- `orientation`: per grid cell, the dominant edge orientation (structure tensor) and the
  column centroid of edge energy per band: where the road's edges lean, hence where it bends.

`scene_deviation` adds, for the groups it names, each column minus its mean over the row's scene
(`features.scene_lags.minus_scene_mean`): the same drive's other rows calibrate the camera, its
exposure and the scenery, leaving what changed at this row (the colours near the horizon as the
grade changes, rather than the drive's sky and light). `scene_neighbours` adds, for the groups
it names, the columns at the scene's neighbouring rows and the row's value minus them
(`features.scene_lags.scene_neighbours`): where a rise ahead hides this frame's horizon, the
camera's pitch a row before and after still shows how the grade bends.

Frames are read from the memory-mapped image cache (`trajstack.image_cache`), in chunks of
rows processed in parallel; the cache key covers the image cache's source fingerprint.
"""

from __future__ import annotations

import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from tqdm import tqdm

from features.base import BuildContext, id_frame, register_builder
from features.scene_lags import minus_scene_mean, scene_neighbours
from trajstack.image_cache import (
    IMAGES_FILE,
    build_or_open_cache,
    read_split_ids,
    source_fingerprint,
)
from trajstack.logs import get_logger
from trajstack.physics import telemetry_column, travelled_distance
from trajstack.spec import DatasetSpec
from trajstack.tables import scene_and_time

logger = get_logger(__name__)

if TYPE_CHECKING:
    from features.config import PhysicsConfig

ROWS_PER_TASK = 128  # rows per worker task: amortises the process round trip, smooth progress
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601 grey


# ----------------------------------------------------------------------------- statistics


def grey(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., H, W, C) -> float32 (..., H, W) in [0, 1] (a single channel passes through)."""
    x = frames.astype(np.float32) / 255.0
    return x[..., 0] if x.shape[-1] == 1 else x[..., :3] @ LUMA


def gradients(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Central differences along x (columns) and y (rows), same shape, zero at the border."""
    gx = np.zeros_like(img)
    gy = np.zeros_like(img)
    gx[..., :, 1:-1] = 0.5 * (img[..., :, 2:] - img[..., :, :-2])
    gy[..., 1:-1, :] = 0.5 * (img[..., 2:, :] - img[..., :-2, :])
    return gx, gy


def cell_means(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Mean of (..., H, W) over a grid of (rows, cols) cells -> (..., rows * cols), row-major.

    H and W need not divide evenly: cell edges are rounded (`np.linspace`), so every pixel
    counts once.
    """
    h, w = values.shape[-2:]
    rows = np.linspace(0, h, grid[0] + 1).round().astype(int)
    cols = np.linspace(0, w, grid[1] + 1).round().astype(int)
    out = [values[..., rows[i]:rows[i + 1], cols[j]:cols[j + 1]].mean(axis=(-2, -1))
           for i in range(grid[0]) for j in range(grid[1])]
    return np.stack(out, axis=-1)


def bin_rows(profile: np.ndarray, bins: int) -> np.ndarray:
    """Pool a per-row profile (..., H) into `bins` consecutive bins (means)."""
    h = profile.shape[-1]
    edges = np.linspace(0, h, bins + 1).round().astype(int)
    return np.stack([profile[..., edges[i]:edges[i + 1]].mean(axis=-1) for i in range(bins)], axis=-1)


def peak_row(profile: np.ndarray) -> np.ndarray:
    """Sub-pixel row of each profile's maximum (parabola through the peak and its neighbours)."""
    h = profile.shape[-1]
    i = profile.argmax(axis=-1)
    j = np.clip(i, 1, h - 2)
    take = np.take_along_axis
    left = take(profile, (j - 1)[..., None], -1)[..., 0]
    mid = take(profile, j[..., None], -1)[..., 0]
    right = take(profile, (j + 1)[..., None], -1)[..., 0]
    curvature = left - 2 * mid + right
    offset = np.where(curvature < 0, 0.5 * (left - right) / np.where(curvature < 0, curvature, -1), 0.0)
    # At the border (i clipped) keep the integer argmax.
    return np.where(i == j, j + np.clip(offset, -0.5, 0.5), i).astype(np.float32)


def edge_peak_rows(g: np.ndarray, edge: np.ndarray | None = None) -> np.ndarray:
    """(n, frames) sub-pixel row of the strongest horizontal edge (row mean of |d/dy|)."""
    if edge is None:
        edge = np.abs(gradients(g)[1]).mean(axis=-1)
    return peak_row(edge)


def horizon_geometry(peak_rows: np.ndarray, table: pd.DataFrame, spec: DatasetSpec,
                     physics: PhysicsConfig) -> dict[str, np.ndarray]:
    """Camera pitch per frame from the horizon row, and the height change it implies ahead.

    Parameters
    ----------
    peak_rows : (n, frames) horizon rows (`edge_peak_rows`).
    table : the split's telemetry (speed and acceleration columns of `physics`).
    spec : dataset spec: camera K, target horizons.
    physics : `features.physics` (column names).
    """
    if spec.camera is None:
        warnings.warn("image_stats: no dataset.camera, so no horizon pitch features", stacklevel=2)
        return {}
    fy, cy = spec.camera.K[1][1], spec.camera.K[1][2]
    pitch = np.arctan((peak_rows - cy) / fy)  # nose up (uphill) puts the horizon lower: positive
    out = {f"horizon_pitch_f{f}": pitch[:, f] for f in range(pitch.shape[1])}
    out["horizon_pitch_change"] = pitch[:, -1] - pitch[:, 0]
    grade = np.tan(np.median(pitch, axis=1))  # median of the frames: one bad frame does not count
    speed = telemetry_column(table, physics.speed_column, "speed_column", spec)
    accel = telemetry_column(table, physics.accel_column, "accel_column", spec)
    for k, t in enumerate(spec.horizons_s):
        out[f"horizon_dz_{k}"] = grade * travelled_distance(speed, np.nan_to_num(accel), t)
    return out


def row_profile_stats(g: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Horizontal-edge and intensity profiles of the last frame, peak rows of every frame.

    g : float (n, frames, H, W).
    """
    _, gy = gradients(g)
    edge = np.abs(gy).mean(axis=-1)            # (n, F, H): horizontal-edge strength per row
    intensity = g.mean(axis=-1)                # (n, F, H)
    step = np.zeros_like(intensity)
    step[..., 1:-1] = np.abs(intensity[..., 2:] - intensity[..., :-2])
    out: dict[str, np.ndarray] = {}
    for b, v in enumerate(bin_rows(edge[:, -1], bins).T):
        out[f"rowedge_{b:02d}"] = v
    for b, v in enumerate(bin_rows(intensity[:, -1], bins).T):
        out[f"rowmean_{b:02d}"] = v
    edge_peak, step_peak = edge_peak_rows(g, edge), peak_row(step)
    rows = np.arange(g.shape[-2], dtype=np.float32)
    centroid = (edge * rows).sum(-1) / np.maximum(edge.sum(-1), 1e-6)
    for f in range(g.shape[1]):
        out[f"edge_peak_row_f{f}"] = edge_peak[:, f]
        out[f"step_peak_row_f{f}"] = step_peak[:, f]
        out[f"edge_centroid_row_f{f}"] = centroid[:, f]
    return out


def two_region_split(profile: np.ndarray) -> np.ndarray:
    """(n, H, C) per-row colour profiles -> (n,) the first row of the lower region of the split
    into an upper and a lower region with the least within-region squared deviation."""
    n, h, _ = profile.shape
    total = np.cumsum(profile, axis=1)
    total_sq = np.cumsum((profile ** 2).sum(-1), axis=1)
    above = np.arange(1, h)                                            # rows above each split
    a, a_sq = total[:, :-1], total_sq[:, :-1]
    b, b_sq = total[:, -1:] - a, total_sq[:, -1:] - a_sq
    cost = (a_sq - (a ** 2).sum(-1) / above) + (b_sq - (b ** 2).sum(-1) / (h - above))
    return (1 + cost.argmin(axis=1)).astype(np.float32)


def colour_row_stats(frames: np.ndarray, share: float = 0.75) -> dict[str, np.ndarray]:
    """Rows of the sharpest colour changes in the upper `share` of each frame, and their motion.

    frames : uint8 (n, frames, H, W, C).
    A column's step at row r is |colour(r) - colour(r - 1)| (Euclidean over channels); a step is
    strong when it is at least half the column's largest one.
    """
    x = frames.astype(np.float32) / 255.0
    upper = max(2, int(round(x.shape[2] * share)))
    x = x[:, :, :upper]
    step = np.zeros(x.shape[:-1], np.float32)                          # (n, F, rows, W)
    step[:, :, 1:] = np.linalg.norm(x[:, :, 1:] - x[:, :, :-1], axis=-1)
    strong = step >= 0.5 * np.maximum(step.max(axis=2, keepdims=True), 1e-6)
    rows = np.arange(upper, dtype=np.float32)[None, None, :, None]
    row_mean = x.mean(axis=3)                                          # (n, F, rows, C)
    row_step = np.zeros(row_mean.shape[:-1], np.float32)
    row_step[:, :, 1:] = np.linalg.norm(row_mean[:, :, 1:] - row_mean[:, :, :-1], axis=-1)
    found = {
        "top_step": np.median(np.where(strong, rows, upper).min(axis=2), axis=-1),
        "low_step": np.median(np.where(strong, rows, 0).max(axis=2), axis=-1),
        "split": np.stack([two_region_split(np.median(x[:, f], axis=2)) for f in range(x.shape[1])], 1),
        "mean_step": row_step.argmax(axis=2).astype(np.float32),
    }                                                                  # each (n, F)
    out: dict[str, np.ndarray] = {}
    last = x.shape[1] - 1
    for name, value in found.items():
        out |= {f"colour_{name}_row_f{f}": value[:, f] for f in range(x.shape[1])}
        out |= {f"colour_{name}_row_change_f{f}": value[:, last] - value[:, f] for f in range(last)}
    return out


def row_colour_stats(frames: np.ndarray, share: float = 0.625) -> dict[str, np.ndarray]:
    """Column-median colour of each row of the frame at t in the upper `share` of the frame, and
    each row's colour distance (Euclidean over channels) to the top row's.

    frames : uint8 (n, frames, H, W, C).
    """
    x = frames[:, -1].astype(np.float32) / 255.0
    upper = max(1, int(round(x.shape[1] * share)))
    colour = np.median(x[:, :upper], axis=2)                           # (n, rows, C)
    from_top = np.linalg.norm(colour - colour[:, :1], axis=-1)         # (n, rows)
    out = {f"rowcolour_r{r:02d}_c{c}": colour[:, r, c]
           for r in range(upper) for c in range(colour.shape[-1])}
    out |= {f"rowcolour_from_top_r{r:02d}": from_top[:, r] for r in range(1, upper)}
    return out


def median_over_frames(values: np.ndarray) -> np.ndarray:
    """(n, frames) -> (n,) median of each row's found (finite) values; NaN where none is found,
    without numpy's all-NaN warning on every such row."""
    found = np.isfinite(values).any(axis=1)
    return np.where(found, np.nanmedian(np.where(found[:, None], values, 0.0), axis=1), np.nan)


def edge_width_profile(frames: np.ndarray, share: float = 0.625, block: int = 4,
                       min_step: float = 0.05) -> np.ndarray:
    """(n, frames, rows) per row of the upper `share` of each frame, the share of its
    `block`-pixel-wide column blocks whose colour changes by more than `min_step` (Euclidean,
    0-1 RGB) from the row above (0 for the top row): how much of the width an edge at that row
    spans. frames : uint8 (n, frames, H, W, C).

    Blocks average the sensor noise out of the step.
    """
    x = frames.astype(np.float32) / 255.0
    n, n_frames, h, w, c = x.shape
    upper = max(2, int(round(h * share)))
    blocks = max(1, w // block)
    x = x[:, :, :upper, : blocks * block].reshape(n, n_frames, upper, blocks, -1, c).mean(axis=4)
    step = np.zeros((n, n_frames, upper, blocks), np.float32)
    step[:, :, 1:] = np.linalg.norm(x[:, :, 1:] - x[:, :, :-1], axis=-1)
    return (step > min_step).mean(axis=-1)


def lowest_row(mask: np.ndarray) -> np.ndarray:
    """(..., rows) bool -> (...) the last True row; NaN where none."""
    rows = np.where(mask, np.arange(mask.shape[-1]), -1).max(axis=-1)
    return np.where(rows >= 0, rows, np.nan).astype(np.float32)


def ground_edge_rows(frames: np.ndarray, share: float = 0.625, block: int = 4,
                     min_step: float = 0.05, min_width: float = 0.9,
                     fallback_width: float | None = 0.5) -> np.ndarray:
    """(n, frames) the lowest row in the upper `share` of each frame where at least `min_width`
    of the `block`-pixel-wide column blocks change colour by more than `min_step` from the row
    above (`edge_width_profile`); where no row does, the lowest where `fallback_width` of them do
    (None: no fallback); NaN where none.

    frames : uint8 (n, frames, H, W, C).
    The width condition keeps out the edges of poles, cars and the road, which span part of the
    frame only. The fallback finds the horizon behind a close car or truck, at some risk of a
    lower wide edge.
    """
    width = edge_width_profile(frames, share, block, min_step)
    lowest = lowest_row(width >= min_width)
    if fallback_width is not None:
        lowest = np.where(np.isfinite(lowest), lowest, lowest_row(width >= fallback_width))
    return lowest


def wide_edge_stats(frames: np.ndarray, tolerance: float = 0.05, half: float = 0.5
                    ) -> dict[str, np.ndarray]:
    """Per frame, the rows of the widest edges in the upper part (`edge_width_profile`): the
    lowest and the highest row spanning within `tolerance` of the widest's share, that share,
    and how many rows span at least `half` of the width. frames : uint8 (n, F, H, W, C).

    Where `ground_edge`'s lowest wide row is a crossing road's near edge or a car's body, the
    widest row is more often the horizon; the highest is the top of a skyline or of a rise ahead;
    the count says how many candidates there were, so the GBDT can tell which to trust.
    """
    width = edge_width_profile(frames)
    widest = width.max(axis=-1)
    near_widest = width >= widest[..., None] - tolerance
    found = widest > 0                                                   # any edge at all
    lowest = np.where(found, lowest_row(near_widest), np.nan)
    highest = np.where(found, np.argmax(near_widest, axis=-1), np.nan)
    out = {}
    for f in range(width.shape[1]):
        out[f"wide_edge_lowest_row_f{f}"] = lowest[:, f]
        out[f"wide_edge_highest_row_f{f}"] = highest[:, f]
        out[f"wide_edge_share_f{f}"] = widest[:, f]
        out[f"wide_edge_rows_f{f}"] = (width[:, f] >= half).sum(axis=-1)
    out["wide_edge_lowest_row_median"] = median_over_frames(lowest)
    out["wide_edge_highest_row_median"] = median_over_frames(highest)
    return out


def ground_edge_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """The ground's top edge per frame (`ground_edge_rows`, falling back to half the width), its
    median over the frames and how it moved from the oldest frame to the frame at t (the pitch
    change). frames : uint8 (n, F, H, W, C)."""
    rows = ground_edge_rows(frames)
    out = {f"ground_edge_row_f{f}": rows[:, f] for f in range(rows.shape[1])}
    out["ground_edge_row_median"] = median_over_frames(rows)
    out["ground_edge_row_change"] = rows[:, -1] - rows[:, 0]
    return out


def edge_map(frame: np.ndarray, upscale: int = 4) -> np.ndarray:
    """Canny edges of one uint8 RGB (H, W, 3) frame's grey image upscaled `upscale` times, so that
    the lines fitted to them (`vanishing_point`) come out below a pixel."""
    import cv2  # optional heavy import, only where the statistic is computed

    h, w = frame.shape[:2]
    grey_up = cv2.resize(cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY),
                         (w * upscale, h * upscale), interpolation=cv2.INTER_LINEAR)
    return cv2.Canny(grey_up, 30, 90)


def vanishing_point(edges: np.ndarray, below: float = 0.28, above: float = 1.0, upscale: int = 4,
                    min_slope: float = 0.15, max_slope: float = 3.0, min_length: int = 16,
                    votes: int = 20, reweights: int = 5) -> tuple[float, float]:
    """(row, column) nearest every slanted straight edge between the upper `below` and the upper
    `above` of a frame, from its `edge_map` (made with the same `upscale`), in the frame's pixels
    (0.5 is a pixel's centre); NaN, NaN with fewer than two.

    Probabilistic Hough (segments of at least `min_length` upscaled pixels, `votes` votes) finds
    the straight edges. Segments steeper than `max_slope` (poles, car sides) or flatter than
    `min_slope` (the horizon, car bodies) rows per column are left out. The point minimises the
    length-weighted squared distances to the segments' lines, refitted `reweights` times with
    Cauchy weights (scale 1 px) so a stray segment does not pull it.
    """
    import cv2  # optional heavy import, only where the statistic is computed

    h = edges.shape[0] // upscale
    top, bottom = int(h * below * upscale), int(h * above * upscale)
    band = np.zeros_like(edges)
    band[top:bottom] = edges[top:bottom]
    found = cv2.HoughLinesP(band, 1, np.pi / 180, votes, minLineLength=min_length, maxLineGap=4)
    if found is None:
        return float("nan"), float("nan")
    seg = (found.reshape(-1, 4).astype(np.float64) + 0.5) / upscale       # x0, y0, x1, y1
    dx, dy = seg[:, 2] - seg[:, 0], seg[:, 3] - seg[:, 1]
    length = np.hypot(dx, dy)
    slope = np.abs(dy) / np.maximum(np.abs(dx), 1e-9)
    slanted = (slope > min_slope) & (slope < max_slope)
    if slanted.sum() < 2:
        return float("nan"), float("nan")
    seg, dx, dy, length = seg[slanted], dx[slanted], dy[slanted], length[slanted]
    nx, ny = -dy / length, dx / length                                    # unit normals
    offset = nx * seg[:, 0] + ny * seg[:, 1]
    weight = length
    for _ in range(reweights):
        a = np.array([[np.sum(weight * nx * nx), np.sum(weight * nx * ny)],
                      [np.sum(weight * nx * ny), np.sum(weight * ny * ny)]])
        if np.linalg.det(a) < 1e-6 * np.trace(a) ** 2:                    # all segments parallel
            return float("nan"), float("nan")
        col, row = np.linalg.solve(a, [np.sum(weight * nx * offset), np.sum(weight * ny * offset)])
        weight = length / (1.0 + (nx * col + ny * row - offset) ** 2)
    return float(row), float(col)


def vanishing_point_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """`vanishing_point` of every frame (row and column) and the median row over the frames.
    frames : uint8 (n, F, H, W, C)."""
    n, n_frames = frames.shape[:2]
    points = np.array([[vanishing_point(edge_map(frames[i, f])) for f in range(n_frames)] for i in range(n)],
                      dtype=np.float64).reshape(n, n_frames, 2)
    out = {f"vanishing_row_f{f}": points[:, f, 0] for f in range(n_frames)}
    out |= {f"vanishing_col_f{f}": points[:, f, 1] for f in range(n_frames)}
    out["vanishing_row_median"] = median_over_frames(points[..., 0])
    return out


# Where `vanishing_bands` splits the road, as shares of the frame's height from the top: the far
# road (about 15-60 m ahead for a camera whose horizon is near row 12 of 64, as atmaCup's is) and
# the near road below it. Shorter segments count there (10 upscaled pixels, 12 votes): the far
# road's edges are short.
FAR_ROAD, NEAR_ROAD = (0.22, 0.44), (0.44, 1.0)


def vanishing_band_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame the vanishing row of the far road's edges and of the near road's (`FAR_ROAD`,
    `NEAR_ROAD`), the far minus the near, and their medians over the frames.
    frames : uint8 (n, F, H, W, C).

    On a road of even grade both meet at one point; where the grade changes ahead the far edges
    bend up (a rise) or down (a dip), so their vanishing row leaves the near one's: the height
    ahead, beyond what the grade under the car says.
    """
    n, n_frames = frames.shape[:2]
    rows = np.full((2, n, n_frames), np.nan)
    for i in range(n):
        for f in range(n_frames):
            edges = edge_map(frames[i, f])  # once for both bands
            for b, band in enumerate((FAR_ROAD, NEAR_ROAD)):
                rows[b, i, f] = vanishing_point(edges, below=band[0], above=band[1], min_length=10, votes=12)[0]
    far, near = rows
    out = {}
    for name, value in (("far", far), ("near", near), ("far_minus_near", far - near)):
        out |= {f"vanishing_{name}_row_f{f}": value[:, f] for f in range(n_frames)}
        out[f"vanishing_{name}_row_median"] = median_over_frames(value)
    return out


def scene_vanishing_rows(row_medians: np.ndarray, scenes: np.ndarray) -> np.ndarray:
    """(rows,) the median over each row's scene of the rows' median vanishing rows: the camera's
    pitch to the road, mount included (`img_vanishing_row_scene_median`)."""
    return pd.Series(row_medians, dtype=np.float64).groupby(np.asarray(scenes)).transform("median").to_numpy()


# Per-frame row statistics (`img_<name>_f<frame>` and `img_<name>_median`) that
# `vanishing_scene_stats` differences against the scene's vanishing row, by the group computing them.
ROWS_BELOW_VANISHING = {"ground_edge": ["ground_edge_row"],
                        "wide_edges": ["wide_edge_lowest_row", "wide_edge_highest_row"],
                        "vanishing_bands": ["vanishing_far_row", "vanishing_near_row"]}


def vanishing_scene_stats(stats: pd.DataFrame, table: pd.DataFrame, spec: DatasetSpec,
                          n_frames: int, groups: list[str]) -> pd.DataFrame:
    """The scene's median vanishing row (the camera's pitch to the road, mount included, from all
    of the scene's frames: one frame's lines can mislead) and each horizon-like row of `groups`
    (`ROWS_BELOW_VANISHING`: the ground's top edge, the widest edges) minus it: the pitch to
    gravity less the pitch to the road, i.e. the grade (`img_ground_edge_minus_vanishing_f0`...).
    stats : one split's image statistics in `table`'s row order."""
    scenes, _ = scene_and_time(table[spec.id_column], spec)
    scene_row = scene_vanishing_rows(stats["img_vanishing_row_median"].to_numpy(np.float64), scenes)
    out = {"img_vanishing_row_scene_median": scene_row}
    for group in groups:
        for row, below in minus_vanishing_columns(group, n_frames).items():
            out[below] = stats[row].to_numpy(np.float64) - scene_row
    return pd.DataFrame({k: v.astype(np.float32) for k, v in out.items()})


def minus_vanishing_columns(group: str, n_frames: int) -> dict[str, str]:
    """The row columns of `group` that `vanishing_scene_stats` differences against the scene's
    vanishing row, each mapped to its difference's column (none for a group without rows)."""
    out = {}
    for name in ROWS_BELOW_VANISHING.get(group, []):
        below = f"img_{name.removesuffix('_row')}_minus_vanishing"
        for suffix in [*(f"_f{f}" for f in range(n_frames)), "_median"]:
            out[f"img_{name}{suffix}"] = below + suffix
    return out


def profile_shift(a: np.ndarray, b: np.ndarray, max_shift: int) -> np.ndarray:
    """(n, L) profiles -> (n,) sub-pixel shift s (|s| <= max_shift) with b[r + s] most like a[r]
    (cross-correlation of the mean-removed profiles over their overlap, parabola at the peak)."""
    n, length = a.shape
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    scores = []
    for s in range(-max_shift, max_shift + 1):
        lo, hi = max(0, -s), min(length, length - s)
        scores.append((a[:, lo:hi] * b[:, lo + s:hi + s]).mean(axis=1))
    return peak_row(np.stack(scores, axis=1)) - max_shift


def vertical_shift_stats(g: np.ndarray, max_shift: int = 6) -> dict[str, np.ndarray]:
    """Vertical shift of the upper half of the view between each pair of frames (rows; positive:
    the content moved down, the camera pitched up). g : float (n, frames, H, W)."""
    half = g.shape[-2] // 2
    profiles = {"edge": np.abs(gradients(g)[1][:, :, :half]).mean(axis=-1),
                "intensity": g[:, :, :half].mean(axis=-1)}
    out: dict[str, np.ndarray] = {}
    n_frames = g.shape[1]
    for f0 in range(n_frames):
        for f1 in range(f0 + 1, n_frames):
            for name, p in profiles.items():
                out[f"vshift_{name}_f{f0}f{f1}"] = profile_shift(p[:, f0], p[:, f1], max_shift)
    return out


def region_stats(g: np.ndarray, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """Mean, std, mean |d/dx|, mean |d/dy| of the last frame per grid cell."""
    last = g[:, -1]
    gx, gy = gradients(last)
    mean = cell_means(last, grid)
    std = np.sqrt(np.maximum(cell_means(last * last, grid) - mean * mean, 0.0))
    stats = {"mean": mean, "std": std, "gx": cell_means(np.abs(gx), grid),
             "gy": cell_means(np.abs(gy), grid)}
    return {f"cell{c:02d}_{name}": v[:, c] for name, v in stats.items() for c in range(v.shape[1])}


def orientation_stats(g: np.ndarray, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per cell the structure tensor's orientation terms; per band the edge-energy column centroid.

    `jxy` = mean(gx gy) / mean(gx^2 + gy^2) is the signed lean of the edges (lines going up-right
    vs up-left), `aniso` = (mean gx^2 - mean gy^2) / sum says vertical vs horizontal edges.
    """
    last = g[:, -1]
    gx, gy = gradients(last)
    jxx, jyy, jxy = cell_means(gx * gx, grid), cell_means(gy * gy, grid), cell_means(gx * gy, grid)
    norm = np.maximum(jxx + jyy, 1e-8)
    out = {f"cell{c:02d}_jxy": (jxy / norm)[:, c] for c in range(jxy.shape[1])}
    out |= {f"cell{c:02d}_aniso": ((jxx - jyy) / norm)[:, c] for c in range(jxy.shape[1])}
    energy = gx * gx + gy * gy                                         # (n, H, W)
    w = energy.shape[-1]
    x = np.linspace(-1.0, 1.0, w, dtype=np.float32)                    # left -1 .. right +1
    band_energy = bin_rows(np.swapaxes(energy, -1, -2), grid[0])       # (n, W, bands)
    centroid = (band_energy * x[None, :, None]).sum(1) / np.maximum(band_energy.sum(1), 1e-8)
    out |= {f"band{b}_edge_x_centroid": centroid[:, b] for b in range(grid[0])}
    return out


def similarity_stats(g: np.ndarray, bands: int) -> dict[str, np.ndarray]:
    """NCC and mean |difference| of each consecutive pair of frames, whole frame and per band."""
    out: dict[str, np.ndarray] = {}
    for f in range(1, g.shape[1]):
        a, b = g[:, f - 1], g[:, f]
        h = a.shape[-2]
        edges = np.linspace(0, h, bands + 1).round().astype(int)
        spans = [(0, h, "all")] + [(edges[i], edges[i + 1], f"band{i}") for i in range(bands)]
        for lo, hi, name in spans:
            pa, pb = a[:, lo:hi].reshape(len(a), -1), b[:, lo:hi].reshape(len(b), -1)
            da, db = pa - pa.mean(1, keepdims=True), pb - pb.mean(1, keepdims=True)
            den = np.sqrt((da * da).sum(1) * (db * db).sum(1))
            out[f"ncc_{f - 1}{f}_{name}"] = np.where(den > 1e-8, (da * db).sum(1) / np.maximum(den, 1e-8), 1.0)
            out[f"mad_{f - 1}{f}_{name}"] = np.abs(pa - pb).mean(1)
    return out


def flow_stats(frames_u8: np.ndarray, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """Dense optical flow of each consecutive pair: per-cell mean (dx, dy) and an affine fit.

    DIS (fast preset): about 1 ms a pair at 128x64, within 0.1 px of a known shift on a
    textured frame (Farneback is as accurate and ~8x slower).

    The affine fit u = a0 + a1 x + a2 y, v = b0 + b1 x + b2 y (x, y in pixels from the image
    centre) gives the yaw rate (a0), pitch rate (b0) and divergence (a1 + b2) of the view.
    """
    import cv2  # optional heavy import, only where flow is computed

    n, n_frames, h, w = frames_u8.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    design = np.stack([np.ones(h * w, np.float32), (xs - w / 2).ravel(), (ys - h / 2).ravel()], 1)
    pinv = np.linalg.pinv(design)                                      # (3, H*W)
    out: dict[str, np.ndarray] = {}
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    frames_u8 = np.ascontiguousarray(frames_u8)
    for f in range(1, n_frames):
        flow = np.empty((n, h, w, 2), np.float32)
        for i in range(n):
            flow[i] = dis.calc(frames_u8[i, f - 1], frames_u8[i, f], None)
        u, v = flow[..., 0], flow[..., 1]
        cu, cv_ = cell_means(u, grid), cell_means(v, grid)
        for c in range(cu.shape[1]):
            out[f"flow{f - 1}{f}_cell{c:02d}_dx"] = cu[:, c]
            out[f"flow{f - 1}{f}_cell{c:02d}_dy"] = cv_[:, c]
        a = u.reshape(n, -1) @ pinv.T                                  # (n, 3)
        b = v.reshape(n, -1) @ pinv.T
        for k, name in enumerate(("shift", "dx_per_x", "dx_per_y")):
            out[f"flow{f - 1}{f}_u_{name}"] = a[:, k]
        for k, name in enumerate(("shift", "dy_per_x", "dy_per_y")):
            out[f"flow{f - 1}{f}_v_{name}"] = b[:, k]
        out[f"flow{f - 1}{f}_divergence"] = a[:, 1] + b[:, 2]
        out[f"flow{f - 1}{f}_curl"] = b[:, 1] - a[:, 2]
        out[f"flow{f - 1}{f}_upper_dx"] = u[:, : h // 2].mean(axis=(1, 2))
        out[f"flow{f - 1}{f}_magnitude"] = np.sqrt(u * u + v * v).mean(axis=(1, 2))
    return out


def image_statistics(frames: np.ndarray, groups: list[str], grid: tuple[int, int],
                     profile_bins: int) -> pd.DataFrame:
    """Every statistic of `groups` for a batch of rows.

    Parameters
    ----------
    frames : uint8 (n, frames, H, W, channels), frames oldest first (as the image cache holds).
    groups : statistic groups to compute (see the module docstring).
    grid : (rows, cols) of the coarse grid.
    profile_bins : bins of the per-row profiles.

    Returns
    -------
    float32 frame with one row per input row; columns in a fixed order.
    """
    g = grey(frames)
    out: dict[str, np.ndarray] = {}
    for group in groups:
        if group == "flow":
            out |= flow_stats(np.round(g * 255).astype(np.uint8), grid)
        elif group == "similarity":
            out |= similarity_stats(g, grid[0])
        elif group == "regions":
            out |= region_stats(g, grid)
        elif group == "row_profile":
            out |= row_profile_stats(g, profile_bins)
        elif group == "orientation":
            out |= orientation_stats(g, grid)
        elif group == "vertical_shift":
            out |= vertical_shift_stats(g)
        elif group == "colour_rows":
            out |= colour_row_stats(frames)
        elif group == "row_colours":
            out |= row_colour_stats(frames)
        elif group == "ground_edge":
            out |= ground_edge_stats(frames)
        elif group == "wide_edges":
            out |= wide_edge_stats(frames)
        elif group == "vanishing_bands":
            out |= vanishing_band_stats(frames)
        elif group == "vanishing_point":  # the scene part is added by `split_statistics`
            out |= vanishing_point_stats(frames)
        elif group == "horizon":  # the telemetry part is added by `split_statistics`
            out |= {f"edge_peak_row_f{f}": r for f, r in enumerate(edge_peak_rows(g).T)}
        else:
            raise ValueError(f"unknown image_stats group {group!r}")
    return pd.DataFrame({f"img_{k}": v.astype(np.float32) for k, v in out.items()})


# ----------------------------------------------------------------------------- builder


def _stats_of_rows(images_path: Path, positions: np.ndarray, groups: list[str],
                   grid: tuple[int, int], bins: int) -> pd.DataFrame:
    """Worker task: statistics of some cache rows, read from the memory map."""
    import cv2

    cv2.setNumThreads(1)  # one process per core already; more threads only contend
    images = np.load(images_path, mmap_mode="r")
    return image_statistics(np.asarray(images[positions]), groups, grid, bins)


def split_statistics(ctx: BuildContext, split: str) -> pd.DataFrame:
    """The statistics of one split, rows in the table's order."""
    cfg, spec = ctx.cfg, ctx.spec
    options = cfg.features.image_stats
    table = ctx.split(split)
    cache = build_or_open_cache(cfg.data_dir, spec, split, cfg.cache_dir, cfg.cache.workers,
                                progress=options.progress)
    positions = cache.positions(table[spec.id_column].astype(str).tolist())
    grid, bins = (options.grid_rows, options.grid_cols), options.profile_bins
    tasks = [(cache.path / IMAGES_FILE, positions[s:s + ROWS_PER_TASK], options.groups, grid, bins)
             for s in range(0, len(table), ROWS_PER_TASK)]
    bar = tqdm(total=len(table), desc=f"image stats {split}", unit="row",
               disable=None if options.progress else True)
    parts: list[pd.DataFrame] = []
    with bar:
        if cfg.cache.workers <= 1 or len(tasks) <= 1:
            for task in tasks:
                parts.append(_stats_of_rows(*task))
                bar.update(len(parts[-1]))
        else:
            # spawn: a forked worker inherits OpenCV's thread pool, which hangs it in
            # cv2.setNumThreads once this process has run OpenCV itself (the serial path, the group
            # columns below).
            with ProcessPoolExecutor(max_workers=cfg.cache.workers,
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                for part in pool.map(_stats_of_rows, *zip(*tasks, strict=True)):
                    parts.append(part)
                    bar.update(len(part))
    stats = pd.concat(parts, ignore_index=True) if parts else image_statistics(
        np.zeros((0, len(spec.frames), spec.image_height, spec.image_width, 3), np.uint8),
        options.groups, grid, bins)
    group_columns = {group: list(image_statistics(np.zeros((1, *cache.images.shape[1:]), np.uint8),
                                                  [group], grid, bins).columns)
                     for group in dict.fromkeys([*options.scene_deviation, *options.scene_neighbours])}
    if "horizon" in options.groups:
        rows = stats[[f"img_edge_peak_row_f{f}" for f in range(len(spec.frames))]].to_numpy(float)
        geometry = pd.DataFrame({f"img_{k}": v.astype(np.float32) for k, v in
                                 horizon_geometry(rows, table, spec, cfg.features.physics).items()})
        stats = pd.concat([stats, geometry], axis=1)
        if "horizon" in group_columns:
            group_columns["horizon"] += list(geometry.columns)
    if "vanishing_point" in options.groups:  # whole scenes: after the chunks are joined
        stats = pd.concat([stats, vanishing_scene_stats(stats, table, spec, len(spec.frames),
                                                        options.groups)], axis=1)
    stats = pd.concat([id_frame(table, spec), stats], axis=1)
    # After the chunks are joined: a scene's rows may fall in different chunks.
    parts = [stats]
    if options.scene_deviation:
        parts.append(minus_scene_mean(
            stats, [c for g in options.scene_deviation for c in group_columns[g]], spec))
    if options.scene_neighbours:
        vanishing = "vanishing_point" in options.groups  # the rows minus the scene's vanishing row
        columns = [c for g in options.scene_neighbours for c in [
            *group_columns[g], *(minus_vanishing_columns(g, len(spec.frames)).values() if vanishing else [])]]
        older = tuple(f"_f{f}" for f in range(len(spec.frames) - 1))  # the neighbour's latest frame
        parts.append(scene_neighbours(stats, [c for c in columns if not c.endswith(older)], spec,
                                      options.scene_offsets))
    return pd.concat(parts, axis=1)


def image_inputs(ctx: BuildContext) -> dict[str, str]:
    """Source fingerprints of both splits' frames (what the image cache is keyed on); none for a
    dataset without frames."""
    data_dir = Path(ctx.cfg.data_dir)
    if ctx.spec.frames_folder(data_dir) is None:
        return {}
    return {f"images_{split}": _fingerprint(data_dir, ctx.spec, split) for split in ("train", "test")}


def _fingerprint(data_dir: Path, spec: DatasetSpec, split: str) -> str:
    return source_fingerprint(data_dir, spec, split, read_split_ids(data_dir, spec, split))


def _build(ctx: BuildContext) -> tuple[pd.DataFrame, pd.DataFrame]:
    spec = ctx.spec
    if spec.frames_folder(ctx.cfg.data_dir) is None:
        # As the traffic-light builder does: no columns, said once, rather than a crash on the
        # first missing frame (`trajstack validate` already names an unintended missing folder).
        where = ("dataset.images_dir is null" if spec.images_dir is None
                 else f"no folder {Path(ctx.cfg.data_dir) / spec.images_dir}")
        logger.warning(f"image_stats: {where}; no image statistics (a telemetry-only dataset: "
                       "leave image_stats out of features.builders to silence this)")
        return id_frame(ctx.train, spec), id_frame(ctx.test, spec)
    return split_statistics(ctx, "train"), split_statistics(ctx, "test")


register_builder(
    "image_stats",
    # progress does not change the output; everything else does
    config_of=lambda cfg: {
        **cfg.features.image_stats.model_dump(mode="json", exclude={"progress"}),
        # the horizon group reads the speed / acceleration columns named there
        "physics": cfg.features.physics.model_dump(mode="json")},
    extra_inputs=image_inputs,
    reads_frames=True,
)(_build)
