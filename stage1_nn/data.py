"""Stage-1 data: raw telemetry, its encoder, auxiliary targets, sequences, dataset and collate.

Everything schema-related (columns, kinds, category levels, frames, targets) comes from the
dataset spec. Frames are read from the image cache (uint8 memmap), never decoded per sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from trajstack.config import Config, ConfigError
from trajstack.io import file_hash
from trajstack.physics import per_metre_scale, physics_baseline
from trajstack.spec import DatasetSpec
from trajstack.tables import scene_and_time

from .augment import FlipRules, PhotometricAugment

# ----------------------------------------------------------------------------- telemetry


def raw_telemetry(table: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """(n, n_telemetry) float64 in spec column order: floats and bools as read, categories as codes.

    Missing values stay NaN (a category code of -1 becomes NaN); the encoder imputes them.
    """
    columns = []
    for col, kind in spec.telemetry.items():
        if kind == "category":
            codes = pd.Categorical(table[col], categories=spec.categories[col]).codes.astype(float)
            codes[codes < 0] = np.nan
            columns.append(codes)
        else:
            columns.append(pd.to_numeric(table[col], errors="coerce").to_numpy(float))
    return np.stack(columns, axis=1) if columns else np.zeros((len(table), 0))


@dataclass
class TelemetryEncoder:
    """Standardise floats, keep bools 0/1, one-hot categories; impute NaN and add missing flags.

    Fit on the training fold only (`fit`), so validation rows never leak into the statistics.
    """

    kinds: list[str]
    n_levels: list[int]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, raw: np.ndarray, spec: DatasetSpec) -> TelemetryEncoder:
        kinds = list(spec.telemetry.values())
        n_levels = [len(spec.categories[c]) if k == "category" else 0 for c, k in spec.telemetry.items()]
        with np.errstate(all="ignore"):
            mean = np.nan_to_num(np.nanmean(raw, axis=0)) if len(raw) else np.zeros(raw.shape[1])
            std = np.nan_to_num(np.nanstd(raw, axis=0)) if len(raw) else np.ones(raw.shape[1])
        std = np.where(std > 1e-6, std, 1.0)
        return cls(kinds, n_levels, mean.tolist(), std.tolist())

    @property
    def n_features(self) -> int:
        # value (+ one-hot levels for categories) and one missing flag per column
        return sum(n if k == "category" else 1 for k, n in zip(self.kinds, self.n_levels, strict=True)) + len(self.kinds)

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """(n, n_features) float32; never NaN."""
        out, flags = [], []
        for j, kind in enumerate(self.kinds):
            x = raw[:, j]
            missing = ~np.isfinite(x)
            flags.append(missing.astype(np.float32))
            if kind == "category":
                onehot = np.zeros((len(x), self.n_levels[j]), np.float32)
                ok = ~missing
                onehot[np.flatnonzero(ok), x[ok].astype(int)] = 1.0
                out.append(onehot)
            elif kind == "bool":
                out.append(np.where(missing, self.mean[j], x)[:, None].astype(np.float32))
            else:
                z = (x - self.mean[j]) / self.std[j]
                out.append(np.where(missing, 0.0, z)[:, None].astype(np.float32))
        out.append(np.stack(flags, axis=1) if flags else np.zeros((len(raw), 0), np.float32))
        return np.concatenate(out, axis=1).astype(np.float32)

    @property
    def n_value_columns(self) -> int:
        """Float and bool columns: the ones `values` returns (the next-row telemetry targets)."""
        return sum(k != "category" for k in self.kinds)

    def values(self, raw: np.ndarray) -> np.ndarray:
        """(n, n_value_columns) float32: floats standardised, bools 0/1, as `transform` encodes
        them, but NaN where the value is missing (a target to leave out, not to impute)."""
        cols = [j for j, k in enumerate(self.kinds) if k != "category"]
        mean = np.array([self.mean[j] if self.kinds[j] == "float" else 0.0 for j in cols])
        std = np.array([self.std[j] if self.kinds[j] == "float" else 1.0 for j in cols])
        return ((raw[:, cols] - mean) / std).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"kinds": self.kinds, "n_levels": self.n_levels, "mean": self.mean, "std": self.std}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TelemetryEncoder:
        return cls(list(state["kinds"]), list(state["n_levels"]), list(state["mean"]), list(state["std"]))


# ----------------------------------------------------------------------------- targets


def aux_target_names(spec: DatasetSpec) -> list[str]:
    """`v{axis}_{k}` (k < horizons - 1) then `a{axis}_{k}` (k < horizons - 2), horizon-major."""
    n = spec.n_horizons
    return ([f"v{a}_{k}" for k in range(n - 1) for a in spec.axes]
            + [f"a{a}_{k}" for k in range(n - 2) for a in spec.axes])


def aux_targets(targets: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Velocities and accelerations by finite differences between horizons: (n, len(aux names)).

    Works on any array whose last axis is the targets in spec order (horizon-major), numpy or
    torch, so predictions can be turned into aux values the same way.
    """
    n_axes, n_h = len(spec.axes), spec.n_horizons
    is_numpy = isinstance(targets, np.ndarray)
    pos = targets.reshape(*targets.shape[:-1], n_h, n_axes)
    dt = np.diff(np.asarray(spec.horizons_s, dtype=np.float32))[:, None]
    dt2 = 0.5 * (dt[1:] + dt[:-1])  # spacing of the velocities (mid-points)
    if not is_numpy:
        dt, dt2 = (torch.as_tensor(d, device=targets.device, dtype=targets.dtype) for d in (dt, dt2))
    vel = (pos[..., 1:, :] - pos[..., :-1, :]) / dt
    acc = (vel[..., 1:, :] - vel[..., :-1, :]) / dt2
    flat = (*targets.shape[:-1], -1)
    parts = [vel.reshape(flat), acc.reshape(flat)]
    return np.concatenate(parts, axis=-1) if is_numpy else torch.cat(parts, dim=-1)


def aux_sign(spec: DatasetSpec) -> np.ndarray:
    """Sign of each aux target under the flip: that of its axis (velocity of y flips with y)."""
    neg = set(spec.flip.negate_axes)
    n = spec.n_horizons
    axes = [a for k in range(n - 1) for a in spec.axes] + [a for k in range(n - 2) for a in spec.axes]
    return np.array([-1.0 if a in neg else 1.0 for a in axes])


def path_jerk(targets: Any, spec: DatasetSpec) -> Any:
    """Third divided differences of a path per axis (m/s^3): (..., (horizons - 3) * axes).

    The finite differences of the accelerations of `aux_targets` over their spacing, so they
    are exactly 0 on any constant-acceleration path, evenly spaced horizons or not.
    """
    n_axes, n_h = len(spec.axes), spec.n_horizons
    acc = aux_targets(targets, spec)[..., (n_h - 1) * n_axes:].reshape(*targets.shape[:-1], n_h - 2, n_axes)
    t = np.asarray(spec.horizons_s, dtype=np.float32)
    spacing = ((t[3:] + t[2:-1] - t[1:-2] - t[:-3]) / 4.0)[:, None]  # between acceleration points
    if not isinstance(targets, np.ndarray):
        spacing = torch.as_tensor(spacing, device=targets.device, dtype=targets.dtype)
    jerk = (acc[..., 1:, :] - acc[..., :-1, :]) / spacing
    return jerk.reshape(*targets.shape[:-1], -1)


def displacements(targets: np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """Per-interval displacements of positions (horizon-major, last axis): the first horizon's
    from the origin, then each from the previous horizon; their running sum is `targets`."""
    n_axes = len(spec.axes)
    pos = targets.reshape(*targets.shape[:-1], spec.n_horizons, n_axes)
    steps = np.diff(pos, axis=-2, prepend=np.zeros_like(pos[..., :1, :]))
    return steps.reshape(targets.shape)


# ----------------------------------------------------------------------------- sequences


def make_sequences(ids: Sequence[str] | np.ndarray, spec: DatasetSpec, mode: str) -> list[np.ndarray]:
    """Index arrays into `ids`: one per scene sorted by time (scene mode) or one per row (row mode)."""
    scenes, times = scene_and_time(list(ids), spec)
    order = np.lexsort((times, scenes))
    if mode == "row":
        return [np.array([i]) for i in order]
    sorted_scenes = scenes[order]
    starts = np.flatnonzero(np.r_[True, sorted_scenes[1:] != sorted_scenes[:-1]])
    return np.split(order, starts[1:])


def next_row_index(ids: Sequence[str] | np.ndarray, spec: DatasetSpec) -> np.ndarray:
    """For each row, the position in `ids` of the next row of its scene in time; -1 for a scene's last row."""
    scenes, times = scene_and_time(list(ids), spec)
    order = np.lexsort((times, scenes))
    nxt = np.full(len(order), -1, dtype=np.int64)
    same_scene = scenes[order][1:] == scenes[order][:-1]
    nxt[order[:-1][same_scene]] = order[1:][same_scene]
    return nxt


def frame_indices(spec: DatasetSpec, frames: list[str] | None) -> np.ndarray:
    """Positions of the chosen frames in the cache's frame axis (spec order)."""
    if frames is None:
        return np.arange(len(spec.frames))
    unknown = [f for f in frames if f not in spec.frames]
    if unknown:
        raise ConfigError(f"stage1.frames names {unknown}, not in dataset.frames {spec.frames}")
    return np.array([spec.frames.index(f) for f in frames])


def extra_vectors(cfg: Config, split: str, ids: Sequence[str]) -> np.ndarray | None:
    """The extra per-row vector the model fuses, in `ids` order, or None when there is none.

    The cached VLM features when `vlm.enabled` (refusing a cache of other IDs, model or
    prompt), else the parquet at `stage1.model.vlm.features` when set. Either is refused with
    flips on (`refuse_unflipped_extra`).
    """
    refuse_unflipped_extra(cfg)
    if cfg.vlm.enabled:
        from stage1_nn.vlm.features import load_vlm_features

        return load_vlm_features(cfg, split, np.asarray(ids, dtype=str))
    if cfg.stage1.model.vlm.features:
        return read_extra_vectors(cfg.stage1.model.vlm.features, ids, cfg.dataset.id_column)
    return None


def refuse_unflipped_extra(cfg: Config) -> None:
    """Refuse extra vectors together with flip augmentation or flip TTA.

    The vectors describe the unmirrored row (the VLM saw the original frames and read "left"
    where a mirrored row says "right"), and no mirrored version of them exists: a flipped
    sample would carry a vector that contradicts its own frames, telemetry and targets.
    """
    source = ("vlm.enabled=true" if cfg.vlm.enabled else
              f"stage1.model.vlm.features={cfg.stage1.model.vlm.features}"
              if cfg.stage1.model.vlm.features else None)
    flips = [f"stage1.augment.flip_p={cfg.stage1.augment.flip_p}"] * (cfg.stage1.augment.flip_p > 0)
    flips += ["stage1.tta_flip=true"] * cfg.stage1.tta_flip
    if source is not None and flips:
        raise ConfigError(
            f"{source} with {' and '.join(flips)}: the extra vectors describe the unmirrored "
            "frames and telemetry, and there are none of mirrored rows, so flipped samples would "
            "get vectors that contradict them; set stage1.augment.flip_p=0 and "
            "stage1.tta_flip=false to use the vectors, or drop the vectors to keep the flips")


def pixel_statistics(images: np.ndarray, rows: np.ndarray, frames: np.ndarray, max_rows: int = 2000,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (0-255 scale) of every stacked channel (frame-major, as the net stacks them)
    over `rows` of an image cache (rows, frames, H, W, C), from at most `max_rows` of them
    (seeded sample). Pass the training fold's rows only: no scored row enters the statistics."""
    rows = np.sort(np.asarray(rows))
    if len(rows) == 0:
        raise ValueError("pixel_statistics: no training rows to compute the statistics on")
    if len(rows) > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_rows, replace=False))
    total = np.zeros(len(frames) * images.shape[-1])
    total_sq = np.zeros_like(total)
    for start in range(0, len(rows), 256):
        chunk = images[rows[start:start + 256]][:, frames].astype(np.float64)  # (n, F, H, W, C)
        total += chunk.sum(axis=(0, 2, 3)).reshape(-1)
        total_sq += (chunk ** 2).sum(axis=(0, 2, 3)).reshape(-1)
    n = len(rows) * images.shape[2] * images.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 0.0))
    return mean.astype(np.float32), np.maximum(std, 1.0).astype(np.float32)


def target_baseline(cfg: Config, table: pd.DataFrame) -> np.ndarray | None:
    """(rows, n_targets) float32 forecast the net learns the residual to (`stage1.baseline`), or None."""
    if cfg.stage1.baseline == "physics":
        return physics_baseline(table, cfg.dataset, cfg.features.physics).astype(np.float32)
    return None


def target_scale(cfg: Config, table: pd.DataFrame) -> np.ndarray | None:
    """(rows, n_targets) float32 divisor of the targets the heads learn (`stage1.per_metre_axes`:
    the distance to each horizon on those axes, 1 elsewhere), or None when no axis is scaled."""
    if not cfg.stage1.per_metre_axes:
        return None
    return per_metre_scale(table, cfg.dataset, cfg.features.physics, cfg.stage1.per_metre_axes,
                           option="stage1.per_metre_axes").astype(np.float32)


def extra_vectors_hash(cfg: Config) -> str | None:
    """Hash of the extra vectors' source, for the run's signature (None: no extra input)."""
    if cfg.vlm.enabled:
        from stage1_nn.vlm.features import vlm_cache_hash

        return vlm_cache_hash(cfg)
    if cfg.stage1.model.vlm.features:
        return file_hash(cfg.stage1.model.vlm.features)
    return None


def read_extra_vectors(path: str | Path, ids: Sequence[str], id_column: str) -> np.ndarray:
    """(len(ids), d) float32 from a parquet of ID + feature columns, in `ids` order; NaN -> 0."""
    table = pd.read_parquet(path)
    if id_column not in table.columns:
        raise ValueError(f"{path}: no {id_column} column")
    values = table.set_index(id_column).reindex(list(ids))
    if values.isna().all(axis=1).any():
        missing = values.index[values.isna().all(axis=1)][0]
        raise ValueError(f"{path}: no features for ID {missing!r}")
    return np.nan_to_num(values.to_numpy(np.float32))


# ----------------------------------------------------------------------------- dataset


class SequenceDataset(Dataset):
    """Items are sequences of rows (a scene, or a single row): frames, telemetry, targets.

    Parameters
    ----------
    sequences : index arrays into the split's table (see `make_sequences`).
    images : the split's image cache ``images`` array (rows, frames, H, W, C), table order.
    telemetry : raw telemetry (see `raw_telemetry`), table order.
    encoder : fitted `TelemetryEncoder`.
    spec : dataset spec.
    frames : frame indices to stack (see `frame_indices`).
    targets : (rows, n_targets) or None (test).
    extra : (rows, d) extra per-row vector or None.
    baseline : (rows, n_targets) forecast the net adds to its outputs (`stage1.baseline`) or None.
    scale : (rows, n_targets) factor the net multiplies its heads' outputs by before adding the
        baseline (`target_scale`) or None.
    next_rows : (rows,) position of each row's next row in its scene, -1 for none (`next_row_index`);
        given, items carry that row's telemetry as ``next_telemetry`` targets.
    flip : flip rules; applied with probability `flip_p` to a whole sequence.
    photometric : per-row photometric augmentation or None.
    seed : seed of the flip draws.
    """

    def __init__(self, sequences: list[np.ndarray], images: np.ndarray, telemetry: np.ndarray,
                 encoder: TelemetryEncoder, spec: DatasetSpec, frames: np.ndarray,
                 targets: np.ndarray | None = None, extra: np.ndarray | None = None,
                 baseline: np.ndarray | None = None, flip: FlipRules | None = None, flip_p: float = 0.0,
                 photometric: PhotometricAugment | None = None, seed: int = 0,
                 next_rows: np.ndarray | None = None, scale: np.ndarray | None = None):
        self.sequences, self.images, self.telemetry = sequences, images, telemetry
        self.encoder, self.spec, self.frames = encoder, spec, frames
        self.targets, self.extra, self.baseline, self.scale = targets, extra, baseline, scale
        self.next_rows = next_rows
        self.flip, self.flip_p, self.photometric = flip, flip_p, photometric
        self.rng = np.random.default_rng(seed)
        self._all_frames = len(frames) == images.shape[1] and np.array_equal(frames, np.arange(len(frames)))

    def __len__(self) -> int:
        return len(self.sequences)

    def reseed(self, seed: int) -> None:
        """New seeds for the flip draws and the photometric transform (one per loader worker)."""
        self.rng = np.random.default_rng(seed)
        if self.photometric is not None:
            self.photometric.transform.set_random_seed(seed)

    def random_state(self) -> dict[str, Any]:
        """The flip and photometric generators' states (what a resumed fold puts back)."""
        return {"flip": self.rng.bit_generator.state,
                "photometric": self.photometric.random_state() if self.photometric is not None else None}

    def set_random_state(self, state: dict[str, Any]) -> None:
        """Put `random_state` back."""
        self.rng.bit_generator.state = state["flip"]
        if self.photometric is not None:
            self.photometric.set_random_state(state["photometric"])

    def load(self, index: int, flipped: bool = False) -> dict[str, np.ndarray]:
        """One sequence, raw (before encoding): images, telemetry, targets, baseline; flipped if asked."""
        rows = self.sequences[index]
        order = np.argsort(rows)  # a sorted fancy index reads the memmap in file order
        images = np.empty((len(rows), *self.images.shape[1:]), self.images.dtype)
        images[order] = self.images[rows[order]]
        if not self._all_frames:
            images = images[:, self.frames]
        sample = {"rows": rows, "images": images, "telemetry": self.telemetry[rows].copy()}
        if self.targets is not None:
            sample["targets"] = self.targets[rows].astype(np.float32)
        if self.baseline is not None:
            sample["baseline"] = self.baseline[rows].astype(np.float32)
        if self.scale is not None:  # a distance: the same for the mirrored sequence
            sample["target_scale"] = self.scale[rows].astype(np.float32)
        if self.next_rows is not None:
            nxt = self.next_rows[rows]
            sample["next_telemetry"] = np.where((nxt >= 0)[:, None], self.telemetry[np.maximum(nxt, 0)], np.nan)
        if flipped and self.flip is not None:
            sample = self.flip(sample)
        return sample

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        flipped = self.flip is not None and self.flip_p > 0 and self.rng.random() < self.flip_p
        return self.encode(self.load(index, flipped), flipped)

    def encode(self, sample: dict[str, np.ndarray], flipped: bool = False) -> dict[str, Any]:
        """Turn a raw sample into model inputs (augment, encode telemetry, aux targets)."""
        images = sample["images"]
        if self.photometric is not None:
            images = np.stack([self.photometric(frames) for frames in images])
        out: dict[str, Any] = {
            "rows": sample["rows"],
            "images": np.ascontiguousarray(images),
            "telemetry": self.encoder.transform(sample["telemetry"]),
            "flipped": flipped,
        }
        if self.extra is not None:
            out["extra"] = self.extra[sample["rows"]]
        if "baseline" in sample:
            out["baseline"] = sample["baseline"]
            out["baseline_aux"] = aux_targets(sample["baseline"], self.spec).astype(np.float32)
        if "target_scale" in sample:
            out["target_scale"] = sample["target_scale"]
        if "targets" in sample:
            out["targets"] = sample["targets"]
            out["aux"] = aux_targets(sample["targets"], self.spec).astype(np.float32)
        if "next_telemetry" in sample:
            out["next_telemetry"] = self.encoder.values(sample["next_telemetry"])
        return out


def collate(batch: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad sequences to the longest in the batch; `mask` marks real rows, `rows` is -1 on padding."""
    lengths = [len(item["rows"]) for item in batch]
    b, t = len(batch), max(lengths)
    out: dict[str, torch.Tensor] = {
        "mask": torch.zeros(b, t, dtype=torch.bool),
        "rows": torch.full((b, t), -1, dtype=torch.long),
        "flipped": torch.tensor([bool(item["flipped"]) for item in batch]),
    }
    for key in ("images", "telemetry", "extra", "baseline", "baseline_aux", "target_scale", "targets", "aux",
                "next_telemetry"):
        if key not in batch[0]:
            continue
        first = batch[0][key]
        padded = np.zeros((b, t, *first.shape[1:]), dtype=first.dtype)
        for i, item in enumerate(batch):
            padded[i, : lengths[i]] = item[key]
        out[key] = torch.from_numpy(padded)
    for i, n in enumerate(lengths):
        out["mask"][i, :n] = True
        out["rows"][i, :n] = torch.as_tensor(batch[i]["rows"])
    return out


@dataclass
class SplitArrays:
    """One table's per-row arrays (table order) as a `SequenceDataset` reads them."""

    ids: np.ndarray
    images: np.ndarray  # the image cache's (rows, frames, H, W, C) array
    telemetry: np.ndarray  # `raw_telemetry`
    targets: np.ndarray | None = None  # None: test rows
    extra: np.ndarray | None = None
    baseline: np.ndarray | None = None
    next_rows: np.ndarray | None = None  # `next_row_index`, for the next-row telemetry targets
    scale: np.ndarray | None = None  # `target_scale`


def sequence_dataset(cfg: Config, arrays: SplitArrays, encoder: TelemetryEncoder, frames: np.ndarray,
                     rows: np.ndarray | None, flip: FlipRules, flip_p: float,
                     photometric: PhotometricAugment | None = None, seed: int = 0,
                     shard: tuple[int, int] | None = None) -> SequenceDataset:
    """The one dataset builder of training, evaluation and checkpoint prediction.

    Parameters
    ----------
    cfg : resolved config (dataset spec, `stage1.mode`).
    arrays : the split's per-row arrays.
    encoder, frames, flip, photometric, seed : as in `SequenceDataset`.
    rows : keep only sequences made entirely of these rows (None: all); folds keep scenes whole.
    flip_p : probability of flipping a sequence (1.0: the flipped pass of flip TTA).
    shard : (rank, world): keep every world-th sequence from rank (evaluation under DDP).
    """
    spec = cfg.dataset
    seqs = make_sequences(arrays.ids, spec, cfg.stage1.mode)
    if rows is not None:
        keep = np.zeros(len(arrays.ids), bool)
        keep[rows] = True
        seqs = [s for s in seqs if keep[s].all()]
    if shard is not None:
        seqs = seqs[shard[0]::shard[1]]
    return SequenceDataset(seqs, arrays.images, arrays.telemetry, encoder, spec, frames,
                           targets=arrays.targets, extra=arrays.extra, baseline=arrays.baseline,
                           flip=flip, flip_p=flip_p, photometric=photometric, seed=seed,
                           next_rows=arrays.next_rows, scale=arrays.scale)
