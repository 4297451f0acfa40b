"""Extract one split's VLM features into its chunked cache, resuming where a run stopped.

Per row: the frames (from the image cache, in time order) and the prompt rendered from its
telemetry go through Qwen2-VL; the final hidden state of the last prompt token is the row's
feature vector. Only chunks absent from the cache are computed; a complete cache is opened
without even loading the model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from trajstack.config import Config
from trajstack.image_cache import ImageCache, build_or_open_cache
from trajstack.tables import Split, read_table

from .cache import FeatureCache, cache_folder, ids_hash, prompt_hash
from .model import VLMRunner, model_fingerprint, resolve_model_dir
from .prompt import PromptRenderer

RunnerFactory = Callable[[Path, Config], VLMRunner]


@dataclass
class ExtractResult:
    split: str
    folder: Path
    n_rows: int
    computed_rows: int  # rows computed by this call (0: the cache was complete)
    computed_chunks: int
    total_chunks: int
    seconds: float  # the whole call, image cache and model loading included
    compute_seconds: float  # the forward passes and chunk writes only

    @property
    def rows_per_s(self) -> float | None:
        return self.computed_rows / self.compute_seconds if self.computed_rows else None


def default_runner(model_dir: Path, cfg: Config) -> VLMRunner:
    return VLMRunner.from_pretrained(model_dir, cfg.vlm)


def extract_split(cfg: Config, split: Split, force: bool = False,
                  runner_factory: RunnerFactory = default_runner) -> ExtractResult:
    """Fill the VLM feature cache of `split`, computing only its missing chunks.

    Parameters
    ----------
    cfg : resolved config (`vlm`, `dataset`, `data_dir`, `cache_dir`).
    split : ``"train"`` or ``"test"``.
    force : move aside a cache made with another model, prompt or IDs instead of refusing.
    runner_factory : builds the model runner from the model folder (tests and the benchmark
        pass their own; the default loads from the local folder).

    Returns
    -------
    ExtractResult with the cache folder and how many chunks this call computed.
    """
    started = time.perf_counter()
    model_dir = resolve_model_dir(cfg.vlm)  # first: a missing model fails before any slow work
    images = build_or_open_cache(cfg.data_dir, cfg.dataset, split, cfg.cache_dir,
                                 workers=cfg.cache.workers, progress=cfg.vlm.progress)
    ids = images.ids.tolist()
    renderer = PromptRenderer(cfg.vlm.prompt, cfg.dataset)
    texts = renderer.texts(_rows_in_order(cfg, split, ids))
    store = FeatureCache(cache_folder(cfg, split))
    identity = {"model": cfg.vlm.model, "model_fingerprint": model_fingerprint(model_dir),
                "prompt_hash": prompt_hash(cfg), "ids_hash": ids_hash(ids)}
    meta = store.prepare(identity, ids, cfg.vlm.chunk_rows, force, split=split,
                         model_dir=str(model_dir), data_dir=str(Path(cfg.data_dir).resolve()),
                         template=renderer.template, example_prompt=texts[0] if texts else None)
    todo = store.missing_chunks(meta)
    computed_rows, compute_seconds = 0, 0.0
    if todo:
        runner = runner_factory(model_dir, cfg)
        t0 = time.perf_counter()
        computed_rows = _compute_chunks(store, meta, todo, runner, renderer, texts, images,
                                        cfg.vlm.batch_size, cfg.vlm.progress, split)
        compute_seconds = time.perf_counter() - t0
        meta = store.finish(meta, precision=str(runner.dtype).removeprefix("torch."),
                            device=str(runner.device),
                            rows_per_s=round(computed_rows / max(compute_seconds, 1e-9), 3))
    elif meta.get("status") != "done":
        meta = store.finish(meta)
    return ExtractResult(split, store.folder, len(ids), computed_rows, len(todo), meta["n_chunks"],
                         time.perf_counter() - started, compute_seconds)


def _rows_in_order(cfg: Config, split: Split, ids: list[str]) -> pd.DataFrame:
    """The typed table's rows in the image cache's ID order (the order of the chunks)."""
    table = read_table(cfg.data_dir, cfg.dataset, split)
    return table.set_index(cfg.dataset.id_column).loc[ids].reset_index()


def _compute_chunks(store: FeatureCache, meta: dict[str, Any], todo: list[int], runner: VLMRunner,
                    renderer: PromptRenderer, texts: list[str], images: ImageCache,
                    batch_size: int, progress: bool, split: str) -> int:
    """Compute and write the chunks `todo`; returns the number of rows computed."""
    chunk_rows, n_rows = meta["chunk_rows"], meta["n_rows"]
    remaining = sum(min(chunk_rows, n_rows - k * chunk_rows) for k in todo)
    bar = tqdm(total=remaining, desc=f"vlm {split}", unit="row", disable=None if progress else True)
    with bar:
        for k in todo:
            rows = range(k * chunk_rows, min((k + 1) * chunk_rows, n_rows))
            parts = []
            for start in range(rows.start, rows.stop, batch_size):
                batch = range(start, min(start + batch_size, rows.stop))
                parts.append(embed_rows(runner, renderer, [texts[i] for i in batch],
                                        images.get(np.arange(batch.start, batch.stop))))
                bar.update(len(batch))
            store.write_chunk(k, np.concatenate(parts))
    return remaining


def embed_rows(runner: VLMRunner, renderer: PromptRenderer, texts: list[str],
               frames: np.ndarray) -> np.ndarray:
    """Features of a batch: prompts and uint8 frames (rows, frames, H, W, C) -> (rows, hidden)."""
    messages = [renderer.messages(text) for text in texts]
    images = [[_to_rgb(frame) for frame in row] for row in frames]
    return runner.embed(messages, images)


def _to_rgb(frame: np.ndarray) -> Image.Image:
    # Qwen2-VL expects RGB; a grayscale or RGBA dataset is converted here.
    image = Image.fromarray(frame.squeeze(-1) if frame.shape[-1] == 1 else frame)
    return image if image.mode == "RGB" else image.convert("RGB")
