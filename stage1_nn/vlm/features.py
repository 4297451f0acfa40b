"""Read cached VLM features for a run: `load_vlm_features(cfg, split, ids) -> (n, hidden)`.

This is what stage 1 calls. It refuses a cache that is missing, unfinished, made with another
model or prompt, or whose IDs differ from the run's, each with a message saying what to do.
It never loads the model (no transformers import), so stage 1 runs where the cache was copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from trajstack.config import Config
from trajstack.io import data_hash

from .cache import IDENTITY_KEYS, FeatureCache, VLMCacheError, cache_folder, prompt_hash
from .model import VLMModelNotFoundError, model_fingerprint, resolve_model_dir


def _extract_hint(split: str) -> str:
    return f"run `trajstack vlm` (make vlm) with the same config and data to extract the {split} features"


def load_vlm_features(cfg: Config, split: str, ids: Sequence[str] | np.ndarray,
                      allow_subset: bool = False) -> np.ndarray:
    """Cached VLM features of `ids`, float32 (len(ids), hidden), rows in the order of `ids`.

    Parameters
    ----------
    cfg : the run's resolved config (`vlm.model`, `vlm.prompt`, `data_dir`, `cache_dir`).
    split : ``"train"`` or ``"test"``.
    ids : the run's row IDs.
    allow_subset : accept a cache holding more rows than `ids` (e.g. a debug subset); by
        default the cache's IDs must be exactly the run's.

    Raises
    ------
    VLMCacheError : no finished cache, another model (name or, when the model is present
        locally, its weights), another prompt, or other IDs.
    """
    store = FeatureCache(cache_folder(cfg, split))
    meta = store.read_meta()
    if meta is None:
        raise VLMCacheError(f"no VLM feature cache for {split} at {store.folder}; {_extract_hint(split)}")
    if meta.get("status") != "done":
        raise VLMCacheError(f"the VLM feature cache {store.folder} is unfinished; {_extract_hint(split)} "
                            "(it resumes where it stopped)")
    _check_model(cfg, meta, store.folder)
    if meta.get("prompt_hash") != prompt_hash(cfg):
        raise VLMCacheError(f"{store.folder} was made with another prompt (hash {meta.get('prompt_hash')} "
                            f"!= {prompt_hash(cfg)}); {_extract_hint(split)}")
    cached_ids = store.ids()
    wanted = np.asarray(ids, dtype=str)
    _check_ids(cached_ids, wanted, allow_subset, store.folder, split)
    features = store.read_features(meta)
    positions = pd.Index(cached_ids).get_indexer(wanted)
    return features[positions]


def _check_model(cfg: Config, meta: dict, folder: Path) -> None:
    if meta.get("model") != cfg.vlm.model:
        raise VLMCacheError(f"{folder} holds features of model '{meta.get('model')}', but this run "
                            f"uses vlm.model='{cfg.vlm.model}'; extract them with this model first")
    try:
        model_dir = resolve_model_dir(cfg.vlm, download=False)  # a check: never a download
    except VLMModelNotFoundError:
        return  # the cache may have been copied from the machine that ran the model
    fingerprint = model_fingerprint(model_dir)
    if meta.get("model_fingerprint") != fingerprint:
        raise VLMCacheError(
            f"{folder} was made by other weights than those now at {model_dir} (fingerprint "
            f"{meta.get('model_fingerprint')} != {fingerprint}); rerun `trajstack vlm --force`"
        )


def _check_ids(cached: np.ndarray, wanted: np.ndarray, allow_subset: bool, folder: Path,
               split: str) -> None:
    cached_set, wanted_set = set(cached.tolist()), set(wanted.tolist())
    missing = [i for i in wanted.tolist() if i not in cached_set]
    extra = [] if allow_subset else sorted(cached_set - wanted_set)
    if missing or extra or len(wanted_set) != len(wanted):
        details = []
        if missing:
            details.append(f"{len(missing)} of the run's IDs are not in it (e.g. {missing[0]!r})")
        if extra:
            details.append(f"it holds {len(extra)} IDs the run does not have (e.g. {extra[0]!r})")
        if len(wanted_set) != len(wanted):
            details.append("the run's IDs contain duplicates")
        raise VLMCacheError(f"the VLM feature cache {folder} does not match this run's {split} IDs: "
                            f"{'; '.join(details)}. The data changed since extraction: rerun "
                            "`trajstack vlm --force`")


def vlm_feature_table(cfg: Config, splits: Sequence[str] = ("train", "test"),
                      prefix: str = "vlm_") -> pd.DataFrame:
    """ID plus one float32 column per feature, over the cached splits (all rows of each).

    The layout stage 1's ``stage1.model.vlm.features`` parquet expects.
    """
    frames = []
    for split in splits:
        store = FeatureCache(cache_folder(cfg, split))
        if store.read_meta() is None:
            raise VLMCacheError(f"no VLM feature cache for {split} at {store.folder}; {_extract_hint(split)}")
        ids = store.ids()
        features = load_vlm_features(cfg, split, ids)
        table = pd.DataFrame(features, columns=[f"{prefix}{j:04d}" for j in range(features.shape[1])])
        table.insert(0, cfg.dataset.id_column, ids)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def vlm_cache_hash(cfg: Config, splits: Sequence[str] = ("train", "test")) -> str:
    """One hash of the caches a run reads (model, weights, prompt, IDs, size): for its signature."""
    identities = []
    for split in splits:
        meta = FeatureCache(cache_folder(cfg, split)).read_meta()
        if meta is None or meta.get("status") != "done":
            raise VLMCacheError(f"no finished VLM feature cache for {split}; {_extract_hint(split)}")
        identities.append({k: meta.get(k) for k in (*IDENTITY_KEYS, "hidden_size", "n_rows")})
    return data_hash(identities)
