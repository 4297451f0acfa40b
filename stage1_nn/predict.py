"""Predict with a saved fold checkpoint: the net, its telemetry encoder and its config travel together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from trajstack.config import validate_config
from trajstack.image_cache import build_or_open_cache
from trajstack.tables import Split, read_table

from .augment import FlipRules
from .data import (
    SplitArrays,
    TelemetryEncoder,
    collate,
    extra_vectors,
    frame_indices,
    raw_telemetry,
    sequence_dataset,
    target_baseline,
    target_scale,
)
from .distributed import DistEnv
from .engine import predict_with_tta
from .model import load_checkpoint
from .report import prediction_frame


def predict_checkpoint(path: str | Path, data_dir: str | Path | None = None, split: Split = "test",
                       ids: list[str] | None = None, batch_size: int = 16) -> tuple[pd.DataFrame, np.ndarray]:
    """Predictions (ID + targets + aux, sorted by ID) and embeddings of one fold's checkpoint.

    Parameters
    ----------
    path : a `fold<k>/model.pt`.
    data_dir : dataset folder (default: the one the checkpoint was trained on).
    split : which table to predict.
    ids : restrict to these IDs (whole scenes are still read in scene mode, then filtered).
    batch_size : sequences per forward pass.
    """
    model, payload = load_checkpoint(path)
    raw_cfg = dict(payload["config"])
    if data_dir is not None:
        raw_cfg["data_dir"] = str(data_dir)
    cfg = validate_config(raw_cfg)
    spec, s1 = cfg.dataset, cfg.stage1
    torch.manual_seed(0)
    table = read_table(cfg.data_dir, spec, split)
    cache = build_or_open_cache(cfg.data_dir, spec, split, cfg.cache_dir, cfg.cache.workers, progress=False)
    extra = extra_vectors(cfg, split, table[spec.id_column].to_numpy(str))
    table_ids = table[spec.id_column].to_numpy(str)
    arrays = SplitArrays(ids=table_ids, images=cache.images, telemetry=raw_telemetry(table, spec),
                         extra=extra, baseline=target_baseline(cfg, table), scale=target_scale(cfg, table))
    encoder = TelemetryEncoder.from_state(payload["encoder"])
    flip, frames = FlipRules.from_spec(spec), frame_indices(spec, s1.frames)

    def loader_of(flip_p: float) -> DataLoader:
        dataset = sequence_dataset(cfg, arrays, encoder, frames, None, flip, flip_p)
        return DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)

    pred = predict_with_tta(model, loader_of, DistEnv(), None, spec, tta=s1.tta_flip)
    row_ids = table_ids[pred["rows"]]
    keep = np.ones(len(row_ids), bool) if ids is None else np.isin(row_ids, np.asarray(ids, dtype=str))
    order = np.argsort(row_ids[keep], kind="stable")
    frame = prediction_frame(row_ids[keep][order], pred["main"][keep][order], pred["aux"][keep][order], spec)
    return frame, pred["emb"][keep][order]
