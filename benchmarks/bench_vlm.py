"""VLM extractor benchmark: rows/s (and peak GPU memory) of Qwen2-VL feature extraction.

Rows are synthetic but real-shaped: frames of the dataset spec's size and prompts rendered
from telemetry by the configured template, through the extractor's own `embed_rows`. The model
is randomly initialised, never downloaded: the tiny one by default (CPU smoke figure), or with
`--full-arch` the published Qwen2-VL-2B sizes (same compute as the real model; meant for a GPU).

    python benchmarks/bench_vlm.py                      # tiny model, CPU
    python benchmarks/bench_vlm.py --full-arch --device cuda --batch-size 32
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np
import pandas as pd

from stage1_nn.vlm.extractor import embed_rows
from stage1_nn.vlm.model import VLMRunner, pick_device_dtype, set_pixel_bounds
from stage1_nn.vlm.prompt import PromptRenderer
from stage1_nn.vlm.tiny import build_model, build_processor, build_tokenizer, prompt_texts
from trajstack.config import load_config
from trajstack.spec import DatasetSpec


def synthetic_rows(spec: DatasetSpec, n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """A typed telemetry table and uint8 frames (n, F, H, W, 3) shaped like the spec's data."""
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    for col, kind in spec.telemetry.items():
        if kind == "bool":
            columns[col] = (rng.random(n) < 0.3).astype(float)
        elif kind == "category":
            columns[col] = pd.Categorical(rng.choice(spec.categories[col], n), spec.categories[col])
        else:
            columns[col] = rng.normal(5.0, 5.0, n)
    frames = rng.integers(0, 256, (n, len(spec.frames), spec.image_height, spec.image_width, 3),
                          dtype=np.uint8)
    return pd.DataFrame(columns), frames


def run(rows: int = 64, batch_size: int = 8, full_arch: bool = False, config: str = "atmacup18",
        device: str = "auto", precision: str = "auto", threads: int = 2, warmup_batches: int = 1,
        min_pixels: int | None = None, max_pixels: int | None = None,
        seed: int = 0) -> dict[str, Any]:
    """Time `embed_rows` over `rows` synthetic rows after `warmup_batches` untimed batches.

    Parameters
    ----------
    rows, batch_size : rows timed and rows per forward pass.
    full_arch : Qwen2-VL-2B sizes (random weights) instead of the tiny model.
    config : config whose dataset spec (frame count and size) and prompt template are used.
    device, precision : as `vlm.device` / `vlm.precision` (auto: bf16 on GPU, fp32 on CPU).
    threads : torch CPU threads.
    min_pixels, max_pixels : image resize bounds (None: the processor's defaults).

    Returns
    -------
    dict of rows/s, seconds, tokens per row, device name, peak GPU memory (GiB) and settings.
    """
    import torch

    torch.set_num_threads(threads)
    cfg = load_config(config, [f"vlm.device={device}", f"vlm.precision={precision}"])
    dev, dtype = pick_device_dtype(cfg.vlm)
    tokenizer = build_tokenizer(prompt_texts(cfg.vlm))
    processor = build_processor(tokenizer)
    set_pixel_bounds(processor, min_pixels, max_pixels)
    t0 = time.perf_counter()
    model = build_model(tokenizer, full_arch=full_arch, seed=seed, dtype=dtype, device=dev)
    build_s = time.perf_counter() - t0
    runner = VLMRunner(model, processor, dev, dtype)
    renderer = PromptRenderer(cfg.vlm.prompt, cfg.dataset)
    table, frames = synthetic_rows(cfg.dataset, rows + warmup_batches * batch_size, seed)
    texts = renderer.texts(table)

    def batches(start: int, stop: int):
        for i in range(start, stop, batch_size):
            j = min(i + batch_size, stop)
            yield texts[i:j], frames[i:j]

    for batch_texts, batch_frames in batches(rows, len(texts)):  # warm-up (kernels, allocator)
        embed_rows(runner, renderer, batch_texts, batch_frames)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for batch_texts, batch_frames in batches(0, rows):
        out = embed_rows(runner, renderer, batch_texts, batch_frames)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    one = processor(text=runner.chat_texts([renderer.messages(texts[0])]),
                    images=[[frame for frame in frames[0]]], return_tensors="pt")
    return {
        "model": "Qwen2-VL-2B architecture, random weights" if full_arch else "tiny Qwen2-VL, random weights",
        "parameters_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({threads} threads)",
        "dtype": str(dtype).removeprefix("torch."),
        "rows": rows, "batch_size": batch_size, "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 2),
        "tokens_per_row": int(one["input_ids"].shape[1]),
        "image_tokens_per_row": int((one["input_ids"] == tokenizer.convert_tokens_to_ids("<|image_pad|>")).sum()),
        "frame_size": [cfg.dataset.image_height, cfg.dataset.image_width],
        "hidden_size": int(out.shape[1]),
        "peak_gpu_memory_GiB": (round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
                                if dev.type == "cuda" else None),
        "model_build_s": round(build_s, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--full-arch", action="store_true",
                        help="Qwen2-VL-2B sizes, random weights (about 4.4 GB in bf16: use a GPU)")
    parser.add_argument("--config", default="atmacup18")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-pixels", type=int)
    parser.add_argument("--max-pixels", type=int)
    args = parser.parse_args(argv)
    result = run(rows=args.rows, batch_size=args.batch_size, full_arch=args.full_arch,
                 config=args.config, device=args.device, precision=args.precision,
                 threads=args.threads, min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
