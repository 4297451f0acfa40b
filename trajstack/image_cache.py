"""Decode every frame once into a memory-mapped uint8 array; loaders read from it: `trajstack cache`.

One cache per (dataset folder, split, frame names, image size), in its own folder:

    <cache_root>/<data folder name>-<split>-<key>/
        images.npy   uint8 (rows, frames, H, W, channels), rows in the split's CSV order
        ids.npy      the row IDs, same order
        meta.json    fingerprint of the sources and the shape; written last, so it marks the
                     cache complete (a build cut short leaves no meta.json and is redone)

The fingerprint covers (relative path, size, mtime_ns) of the CSV and every frame file: a cache
is rebuilt exactly when one of them changes, and otherwise opened read-only in milliseconds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import re
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageMode
from tqdm import tqdm

from trajstack.cli import common_parser, config_from_args
from trajstack.config import ConfigError
from trajstack.io import atomic_path, data_hash, read_json, write_json_atomic
from trajstack.logs import get_logger
from trajstack.spec import DatasetSpec
from trajstack.tables import DataError, Split, table_path
from trajstack.validate import unsafe_id_reason

logger = get_logger(__name__)

try:  # POSIX only; without it concurrent builders of one cache are not serialised
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

CACHE_FORMAT = 1  # bump when the layout changes: old caches then no longer match
IMAGES_FILE, IDS_FILE, META_FILE, LOCK_FILE = "images.npy", "ids.npy", "meta.json", ".lock"
ROWS_PER_TASK = 64  # big enough to amortise task overhead, small enough for a smooth progress bar
SPLITS: tuple[Split, ...] = ("train", "test")


@dataclass(frozen=True)
class ImageCache:
    """Read-only view of a built cache: ``images[i]`` holds the frames of row ``ids[i]``."""

    path: Path
    ids: np.ndarray
    images: np.ndarray
    fingerprint: str
    built: bool = False  # True when this call (re)built it, False when it was up to date

    def __len__(self) -> int:
        return len(self.ids)

    @cached_property
    def _position_of(self) -> dict[str, int]:
        return {row_id: i for i, row_id in enumerate(self.ids.tolist())}

    def positions(self, ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Row positions of `ids`; KeyError naming the first ID not in the cache."""
        index = self._position_of
        try:
            return np.fromiter((index[row_id] for row_id in ids), dtype=np.int64, count=len(ids))
        except KeyError as err:
            raise KeyError(f"ID {err.args[0]!r} is not in the image cache {self.path}") from None

    def get(self, ids_or_positions: Sequence[str] | Sequence[int] | np.ndarray) -> np.ndarray:
        """Frames of some rows, by ID or by position: uint8 (n, frames, H, W, channels)."""
        keys = np.asarray(ids_or_positions)
        if keys.size == 0:
            return np.empty((0, *self.images.shape[1:]), dtype=self.images.dtype)
        if keys.dtype.kind in "USO":
            keys = self.positions(keys.tolist())
        elif keys.dtype.kind not in "iu":
            raise TypeError(f"ImageCache.get takes IDs or integer positions, got dtype {keys.dtype}")
        return np.asarray(self.images[keys])  # a plain in-memory array, not a memmap subclass


# ----------------------------------------------------------------------------- build or open


def build_or_open_cache(
    data_dir: str | Path,
    spec: DatasetSpec,
    split: Split,
    cache_root: str | Path,
    workers: int = 2,
    progress: bool = True,
) -> ImageCache:
    """Open the split's image cache, building it first when missing or out of date.

    Parameters
    ----------
    data_dir : the dataset folder.
    spec : the dataset spec (frame names, image size and mode, file names).
    split : ``"train"`` or ``"test"``; rows follow that CSV's order.
    cache_root : folder holding caches (``cfg.cache_dir``).
    workers : decoding processes (1: decode in this process).
    progress : show a progress bar while building (on a terminal).

    Returns
    -------
    ImageCache opened read-only; ``built`` tells whether this call built it.

    Raises
    ------
    DataError : a missing, unreadable or wrongly sized frame, or a bad ID, naming file and ID.
    """
    data_dir = Path(data_dir)
    if spec.images_dir is None:
        raise ConfigError(
            "dataset.images_dir is null (a telemetry-only dataset): there are no frames to cache "
            "or train stage 1 on; run stage 2 and the blend with features.stage1=false")
    if spec.frames_folder(data_dir) is None:
        raise DataError(
            f"frames folder {data_dir / spec.images_dir} not found. If this dataset has no frames, "
            "stage 1 cannot run: run stage 2 and the blend with features.stage1=false")
    ids = read_split_ids(data_dir, spec, split)
    folder = cache_folder(data_dir, spec, split, cache_root)
    fingerprint = source_fingerprint(data_dir, spec, split, ids)
    cache = _open_if_current(folder, fingerprint)
    if cache is not None:
        return cache
    folder.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(folder / LOCK_FILE):
        cache = _open_if_current(folder, fingerprint)  # another process may have just built it
        if cache is not None:
            return cache
        _build(folder, data_dir, spec, ids, fingerprint, workers, progress)
    cache = _open_if_current(folder, fingerprint)
    if cache is None:  # pragma: no cover - would mean the files vanished right after the build
        raise RuntimeError(f"image cache {folder} could not be opened after building it")
    return replace(cache, built=True)


def cache_folder(
    data_dir: str | Path, spec: DatasetSpec, split: Split, cache_root: str | Path
) -> Path:
    """Where the cache of this dataset folder, split and frame layout lives."""
    data_dir = Path(data_dir)
    key = data_hash([str(data_dir.resolve()), split, _layout(spec)])[:12]
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", data_dir.resolve().name) or "data"
    return Path(cache_root) / f"{readable}-{split}-{key}"


def read_split_ids(data_dir: Path, spec: DatasetSpec, split: Split) -> list[str]:
    """The split's IDs in CSV order; DataError on a missing, duplicate or unsafe ID."""
    path = table_path(data_dir, spec, split)
    if not path.is_file():
        raise DataError(f"{path}: file not found (is --data the dataset folder?)")
    header = pd.read_csv(path, nrows=0).columns
    if spec.id_column not in header:
        raise DataError(f"{path}: no {spec.id_column} column; {_run_validate(data_dir)}")
    ids = pd.read_csv(path, usecols=[spec.id_column], dtype=str)[spec.id_column]
    if ids.isna().any():
        line = int(np.flatnonzero(ids.isna().to_numpy())[0]) + 2
        raise DataError(f"{path}: line {line} has no {spec.id_column}; {_run_validate(data_dir)}")
    duplicated = ids[ids.duplicated()]
    if len(duplicated):
        raise DataError(f"{path}: duplicate ID {duplicated.iloc[0]!r}; {_run_validate(data_dir)}")
    for row_id in ids:
        reason = unsafe_id_reason(row_id)
        if reason is not None:
            raise DataError(f"{path}: row {row_id!r}: {reason}; {_run_validate(data_dir)}")
    return ids.tolist()


def source_fingerprint(data_dir: Path, spec: DatasetSpec, split: Split, ids: list[str]) -> str:
    """Hash of the frame layout and (relative path, size, mtime_ns) of the CSV and every frame."""
    digest = hashlib.sha256(json.dumps(_layout(spec), sort_keys=True).encode())
    table = table_path(data_dir, spec, split).relative_to(data_dir)
    sources = [(table.as_posix(), None)]
    sources += [(f"{spec.images_dir}/{row_id}/{frame}", row_id) for row_id in ids for frame in spec.frames]
    for relative, row_id in sorted(sources, key=lambda source: source[0]):
        try:
            stat = (data_dir / relative).stat()
        except FileNotFoundError:
            raise DataError(
                f"{data_dir / relative}: frame of row {row_id} not found; {_run_validate(data_dir)}"
            ) from None
        digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _layout(spec: DatasetSpec) -> dict[str, object]:
    return {
        "format": CACHE_FORMAT,
        "frames": list(spec.frames),
        "height": spec.image_height,
        "width": spec.image_width,
        "mode": spec.image_mode,
    }


def _open_if_current(folder: Path, fingerprint: str) -> ImageCache | None:
    """The cache in `folder` when complete and built from these sources, else None."""
    try:
        meta = read_json(folder / META_FILE)
        if meta.get("fingerprint") != fingerprint:
            return None
        images = np.load(folder / IMAGES_FILE, mmap_mode="r")
        ids = np.load(folder / IDS_FILE, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if list(images.shape) != meta.get("shape") or len(ids) != images.shape[0]:
        return None
    return ImageCache(path=folder, ids=ids, images=images, fingerprint=fingerprint)


def _build(
    folder: Path,
    data_dir: Path,
    spec: DatasetSpec,
    ids: list[str],
    fingerprint: str,
    workers: int,
    progress: bool,
) -> None:
    started = time.perf_counter()
    # The old cache stops counting as complete before any of its files change.
    (folder / META_FILE).unlink(missing_ok=True)
    for stale in folder.glob(".tmp-*"):  # left by a killed build; we hold the lock
        stale.unlink(missing_ok=True)
    shape = (len(ids), len(spec.frames), spec.image_height, spec.image_width, _channels(spec))
    with atomic_path(folder / IMAGES_FILE) as tmp:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
        _decode_all(data_dir, spec, ids, tmp, workers, progress)
    with atomic_path(folder / IDS_FILE) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(ids, dtype=str), allow_pickle=False)
    write_json_atomic(folder / META_FILE, {
        "fingerprint": fingerprint,
        "shape": list(shape),
        "data_dir": str(data_dir.resolve()),
        "layout": _layout(spec),
        "build_seconds": round(time.perf_counter() - started, 3),
    })


def _decode_all(
    data_dir: Path, spec: DatasetSpec, ids: list[str], array_path: Path, workers: int, progress: bool
) -> None:
    """Decode every row into the .npy at `array_path`, in worker processes when workers > 1.

    Processes, not threads: for a 128x64 PNG half the time is Python work under the GIL (open,
    chunk parsing), so threads scale poorly. Each worker maps the same file and writes its rows.
    """
    starts = range(0, len(ids), ROWS_PER_TASK)
    tasks = [(array_path, data_dir, spec, start, ids[start:start + ROWS_PER_TASK]) for start in starts]
    bar = tqdm(total=len(ids), desc=f"caching {len(ids)} rows", unit="row",
               disable=None if progress else True)
    with bar:
        if workers <= 1:
            for task in tasks:
                bar.update(_decode_rows_into(*task))
            return
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            pending = {pool.submit(_decode_rows_into, *task) for task in tasks}
            while pending:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    bar.update(future.result())  # re-raises a worker's error
        finally:
            # On an error or Ctrl-C, drop the queued rows instead of decoding them all.
            pool.shutdown(wait=True, cancel_futures=True)


def _decode_rows_into(
    array_path: Path, data_dir: Path, spec: DatasetSpec, start: int, ids: list[str]
) -> int:
    images = np.load(array_path, mmap_mode="r+")
    for offset, row_id in enumerate(ids):
        images[start + offset] = decode_row(data_dir, spec, row_id)
    images.flush()
    return len(ids)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


# ----------------------------------------------------------------------------- decoding


def frame_path(data_dir: Path, spec: DatasetSpec, row_id: str, frame: str) -> Path:
    return Path(data_dir) / spec.images_dir / row_id / frame


def decode_row(data_dir: Path, spec: DatasetSpec, row_id: str) -> np.ndarray:
    """All frames of one row, uint8 (frames, H, W, channels); DataError naming file and ID."""
    return np.stack([
        decode_frame(frame_path(data_dir, spec, row_id, frame), spec, row_id, data_dir)
        for frame in spec.frames
    ])


def decode_frame(path: Path, spec: DatasetSpec, row_id: str, data_dir: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            size, mode = image.size, image.mode
            pixels = np.asarray(image)
    except FileNotFoundError:
        raise DataError(f"{path}: frame of row {row_id} not found; {_run_validate(data_dir)}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"{path}: frame of row {row_id} is unreadable ({err}); {_run_validate(data_dir)}"
        ) from None
    expected = (spec.image_width, spec.image_height)
    if size != expected or mode != spec.image_mode:
        raise DataError(
            f"{path}: frame of row {row_id} is {size[0]}x{size[1]} {mode}, expected "
            f"{expected[0]}x{expected[1]} {spec.image_mode}; {_run_validate(data_dir)}"
        )
    return pixels.reshape(spec.image_height, spec.image_width, -1)


def load_frames_from_png(data_dir: str | Path, spec: DatasetSpec, ids: Sequence[str]) -> np.ndarray:
    """Decode the PNGs of `ids` one sample at a time: the no-cache baseline of the benchmark.

    Returns
    -------
    uint8 array (len(ids), frames, H, W, channels), like ``ImageCache.get``.
    """
    shape = (len(ids), len(spec.frames), spec.image_height, spec.image_width, _channels(spec))
    out = np.empty(shape, dtype=np.uint8)
    for i, row_id in enumerate(ids):
        out[i] = decode_row(Path(data_dir), spec, row_id)
    return out


def _channels(spec: DatasetSpec) -> int:
    return len(ImageMode.getmode(spec.image_mode).bands)


def _run_validate(data_dir: Path) -> str:
    return f"run `trajstack validate --data {data_dir}` to list every problem"


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    """`trajstack cache --config FILE --data DIR [--exp NAME] [key=value ...]`: build both splits.

    Returns 0 when both caches are ready, 2 when the data or config cannot be used.
    """
    args = _parse_args(argv)
    cfg = config_from_args(args)
    for split in SPLITS:
        started = time.perf_counter()
        cache = build_or_open_cache(
            cfg.data_dir, cfg.dataset, split, cfg.cache_dir,
            workers=cfg.cache.workers, progress=not args.no_progress,
        )
        state = "built" if cache.built else "up to date"
        logger.info(f"{split}: {len(cache)} rows, {state} in {time.perf_counter() - started:.1f} s: {cache.path}")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = common_parser("cache", "Decode every frame of both splits once into a memory-mapped cache.")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
