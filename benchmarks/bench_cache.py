"""Image cache benchmark: build rows/s, then loader samples/s from the cache vs decoding PNGs.

Both loaders read random batches of the same rows with the files in the page cache, so the
ratio measures decoding work saved, not disk speed. The cache must be >= 10x faster.

    python benchmarks/bench_cache.py --data data/demo
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trajstack.config import load_config
from trajstack.image_cache import build_or_open_cache, cache_folder, load_frames_from_png

TARGET_SPEEDUP = 10.0


def run(
    data_dir: str | Path,
    cache_root: str | Path,
    config: str = "atmacup18",
    split: str = "train",
    batch_size: int = 32,
    cache_batches: int = 50,
    png_batches: int = 5,
    repeats: int = 5,
    workers: int = 2,
    seed: int = 0,
) -> dict[str, float | int | str | bool]:
    """Time a fresh cache build and both loaders; rates are medians over `repeats`.

    Parameters
    ----------
    data_dir : dataset folder.
    cache_root : where the cache is built; this split's existing cache there is deleted first.
    config : config whose dataset spec describes the files.
    split : ``"train"`` or ``"test"``.
    batch_size : samples per random batch.
    cache_batches, png_batches : batches per timed repeat (PNG decoding is slow, so fewer).
    repeats : timed repeats per loader.
    workers : decoding threads for the build.
    seed : seed of the random batches.

    Returns
    -------
    dict with ``build_rows_per_s``, ``cache_samples_per_s``, ``png_samples_per_s``, ``speedup``.
    """
    spec = load_config(config).dataset
    data_dir = Path(data_dir)
    shutil.rmtree(cache_folder(data_dir, spec, split, cache_root), ignore_errors=True)
    started = time.perf_counter()
    cache = build_or_open_cache(data_dir, spec, split, cache_root, workers=workers, progress=False)
    build_seconds = time.perf_counter() - started

    rng = np.random.default_rng(seed)
    batches = [
        cache.ids[rng.choice(len(cache), size=min(batch_size, len(cache)), replace=False)].tolist()
        for _ in range(max(cache_batches, png_batches))
    ]
    cache_rate = _median_rate(lambda b: cache.get(b), batches[:cache_batches], repeats)
    png_rate = _median_rate(lambda b: load_frames_from_png(data_dir, spec, b), batches[:png_batches], repeats)
    return {
        "split": split,
        "rows": len(cache),
        "frames_per_row": len(spec.frames),
        "workers": workers,
        "build_seconds": round(build_seconds, 3),
        "build_rows_per_s": round(len(cache) / build_seconds, 1),
        "batch_size": batch_size,
        "cache_samples_per_s": round(cache_rate, 1),
        "png_samples_per_s": round(png_rate, 1),
        "speedup": round(cache_rate / png_rate, 1),
        "speedup_target_met": cache_rate / png_rate >= TARGET_SPEEDUP,
    }


def _median_rate(load: Callable[[list[str]], np.ndarray], batches: list[list[str]], repeats: int) -> float:
    """Samples per second of `load` over all batches, median of `repeats` (after one warm-up)."""
    load(batches[0])  # warm-up: page cache, lazily built ID index
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        samples = sum(len(load(batch)) for batch in batches)
        rates.append(samples / (time.perf_counter() - started))
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--cache-root", help="where to build the cache (default: a temporary folder)")
    parser.add_argument("--config", default="atmacup18")
    parser.add_argument("--split", default="train", choices=["train", "test"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as scratch:
        result = run(args.data, args.cache_root or scratch, config=args.config, split=args.split,
                     repeats=args.repeats, workers=args.workers)
    print(json.dumps(result, indent=2))
    return 0 if result["speedup_target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
