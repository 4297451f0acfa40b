"""The on-disk VLM feature cache of one (data, model, prompt, split): chunks, ID index, meta.

    <cache_dir>/vlm/<data>-<model>-<prompt hash>-<split>/
        ids.npy              the split's IDs, in the order of the rows of the chunks
        chunk_00000.npy ...  float32 (chunk_rows, hidden), rows [k * chunk_rows, (k+1) * chunk_rows)
        meta.json            model, model fingerprint, prompt hash, IDs hash, hidden size, status

Every file is written atomically, so a chunk on disk is a finished chunk: an interrupted run
resumes by computing only the chunks that are absent.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trajstack.config import Config
from trajstack.errors import TrajstackError
from trajstack.io import atomic_path, data_hash, read_json, write_json_atomic

CACHE_FORMAT = 1  # bump when the layout or the prompt rendering changes
META_FILE, IDS_FILE = "meta.json", "ids.npy"
# Meta keys that must match for a cache to be used (or resumed) by a run.
IDENTITY_KEYS = ("model", "model_fingerprint", "prompt_hash", "ids_hash")


class VLMCacheError(TrajstackError, RuntimeError):
    """A VLM feature cache that cannot be used as asked; the message says what to do."""


def prompt_hash(cfg: Config) -> str:
    """Hash of everything that shapes a row's model input besides the model and the data."""
    vlm, spec = cfg.vlm, cfg.dataset
    return data_hash({
        "format": CACHE_FORMAT, "prompt": vlm.prompt.model_dump(mode="json"),
        "min_pixels": vlm.min_pixels, "max_pixels": vlm.max_pixels, "hidden_layer": vlm.hidden_layer,
        "frames": spec.frames, "offsets": spec.frame_offsets_s, "telemetry": spec.telemetry,
    })[:12]


def ids_hash(ids: list[str] | np.ndarray) -> str:
    return data_hash([str(i) for i in ids])


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "x"


def model_slug(model: str) -> str:
    """Readable name of a model: ``Qwen/Qwen2-VL-2B-Instruct`` -> ``Qwen2-VL-2B-Instruct``."""
    return _slug(Path(model.rstrip("/\\")).name)


def cache_folder(cfg: Config, split: str) -> Path:
    """Where the features of this data folder, model, prompt and split live."""
    data = Path(cfg.data_dir).resolve()
    # The data folder's path is in the key too: a demo and a real dataset never share a cache.
    key = data_hash([str(data), prompt_hash(cfg)])[:12]
    return cfg.cache_dir / "vlm" / f"{_slug(data.name)}-{model_slug(cfg.vlm.model)}-{key}-{split}"


@dataclass
class FeatureCache:
    """Chunked features of one split in `folder`; rows follow `ids.npy`."""

    folder: Path

    @property
    def meta_path(self) -> Path:
        return self.folder / META_FILE

    def read_meta(self) -> dict[str, Any] | None:
        return read_json(self.meta_path) if self.meta_path.exists() else None

    def ids(self) -> np.ndarray:
        return np.load(self.folder / IDS_FILE, allow_pickle=False)

    def chunk_path(self, k: int) -> Path:
        return self.folder / f"chunk_{k:05d}.npy"

    # ------------------------------------------------------------------ writing
    def prepare(self, identity: dict[str, Any], ids: list[str], chunk_rows: int, force: bool,
                **info: Any) -> dict[str, Any]:
        """Start or resume the cache for `identity`; refuse (or with `force` move aside) another.

        Returns the meta in force; its ``chunk_rows`` wins over the argument when resuming,
        so the chunks already on disk keep their meaning.
        """
        meta = self.read_meta()
        if meta is not None:
            differing = [k for k in IDENTITY_KEYS if meta.get(k) != identity.get(k)]
            if not differing:
                return meta
            if not force:
                raise VLMCacheError(
                    f"{self.folder} holds VLM features made with another {', '.join(differing)} "
                    f"({', '.join(f'{k}: {meta.get(k)} != {identity.get(k)}' for k in differing)}). "
                    "Rerun with --force to move it aside and extract again."
                )
            self._archive()
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.folder / IDS_FILE) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(ids, dtype=str), allow_pickle=False)
        meta = {"format": CACHE_FORMAT, **identity, "n_rows": len(ids), "chunk_rows": chunk_rows,
                "n_chunks": n_chunks(len(ids), chunk_rows), "status": "running",
                "started": _now(), **info}
        write_json_atomic(self.meta_path, meta)
        return meta

    def missing_chunks(self, meta: dict[str, Any]) -> list[int]:
        return [k for k in range(meta["n_chunks"]) if not self.chunk_path(k).exists()]

    def write_chunk(self, k: int, features: np.ndarray) -> None:
        with atomic_path(self.chunk_path(k)) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(features, dtype=np.float32))

    def finish(self, meta: dict[str, Any], **info: Any) -> dict[str, Any]:
        hidden = int(np.load(self.chunk_path(0), mmap_mode="r").shape[1]) if meta["n_chunks"] else 0
        meta = {**meta, "status": "done", "hidden_size": hidden, "finished": _now(), **info}
        write_json_atomic(self.meta_path, meta)
        return meta

    # ------------------------------------------------------------------ reading
    def read_features(self, meta: dict[str, Any]) -> np.ndarray:
        """All rows, float32 (n_rows, hidden), in `ids.npy` order."""
        if meta["n_chunks"] == 0:
            return np.zeros((0, int(meta.get("hidden_size") or 0)), np.float32)
        return np.concatenate([np.load(self.chunk_path(k)) for k in range(meta["n_chunks"])])

    def _archive(self) -> None:
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        shutil.move(str(self.folder), str(self.folder.with_name(f"{self.folder.name}.old-{stamp}")))


def n_chunks(n_rows: int, chunk_rows: int) -> int:
    return -(-n_rows // chunk_rows)


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")
