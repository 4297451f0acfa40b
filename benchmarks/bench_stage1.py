"""Stage-1 speed on this machine: training rows/s of the configured net, and the loader alone.

The training step is timed on batches collated beforehand (so it excludes loading); the loader
is timed producing the same batches (cache read, flip, augmentation, telemetry encoding,
collate). The loader must be >= 5x faster than the step, so it never starves training.
The bare backbone (same timm model, input size, batch rows, precision, channels_last and
compile) is timed doing forward+backward alone: the step's ratio to it is what the rest of
stage 1 (telemetry, BiLSTM, heads, loss, optimiser, EMA) costs. On CUDA, peak memory is recorded.

    python benchmarks/bench_stage1.py --config demo --data data/demo
    python benchmarks/bench_stage1.py --config gpu --data data/full --device cuda stage1.model.pretrained=false
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from typing import Any

import torch

from stage1_nn.distributed import DistEnv
from stage1_nn.engine import train_one_epoch
from stage1_nn.model import build_model, create_backbone, input_planes_count
from stage1_nn.optim import build_ema, build_optimizer, build_scheduler
from stage1_nn.train import (
    _amp_dtype,
    _cpu_count,
    _peak_memory,
    load_data,
    make_loader,
    prepare_fold,
)
from trajstack.config import Config, load_config

TARGET_LOADER_RATIO = 5.0


def run(cfg: Config, batches: int = 12, warmup: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Rows/s of training steps and of the loader on fold 0 of the config's data.

    Parameters
    ----------
    cfg : resolved config (its `stage1` section and data_dir are used; folds/caches are made
        if missing, as `trajstack stage1` would).
    batches : timed batches for each measurement.
    warmup : untimed passes over the timed batches first. Every row count a batch can have then
        has been seen once: torch.compile graphs and cuDNN/oneDNN plans are made per input
        shape, and a scene batch's row count varies (on an H100 the first pass ran 1/25 of the
        steady speed), so timing first sightings would measure set-up, not steps.
    device : ``"cpu"`` (the figure the README quotes) or ``"cuda"``.

    Returns
    -------
    dict with ``train_rows_per_s``, ``loader_rows_per_s``, ``loader_to_train_ratio`` and the setup.
    """
    s1 = cfg.stage1.model_copy(update={"progress": False})
    cfg = cfg.model_copy(update={"stage1": s1})
    env = DistEnv(device=torch.device(device))
    threads = s1.threads or _cpu_count()
    torch.set_num_threads(threads)
    data = load_data(cfg, env)
    fold = prepare_fold(cfg, data, 0, env)
    loader = make_loader(fold.dataset("train", fold.train_rows, True, s1.augment.flip_p), s1.batch_size,
                         env, cfg, train=True, seed=fold.seed)
    n = batches

    # loader alone: the exact batches training consumes
    started = time.perf_counter()
    cached = list(itertools.islice(iter(loader), n))
    loader_seconds = time.perf_counter() - started
    loader_rows = sum(int(b["mask"].sum()) for b in cached)

    # training steps on pre-collated batches
    model = build_model(s1.model, fold.dims(), channels_last=s1.channels_last).to(env.device)
    ema = build_ema(model, s1.ema)
    if s1.compile:
        model.backbone.compile()
    optimizer = build_optimizer(model, s1.optim)
    scheduler = build_scheduler(optimizer, 10 * n, 0, s1.optim)
    amp = _amp_dtype(s1.precision, env.device)
    step = 0
    for _ in range(warmup):
        _, step = train_one_epoch(model, cached, optimizer, scheduler, ema, s1, env, amp, step, "warmup")
    stats, _ = train_one_epoch(model, cached, optimizer, scheduler, ema, s1, env, amp, step, "bench")
    train_rps = stats["train_rows_per_s"]
    peak_gib = _peak_memory(env).get("peak_memory_gib")  # None on CPU
    del model, ema, optimizer
    frame_hw = tuple(cached[0]["images"].shape[-3:-1])  # native (H, W) when no image_size is set
    bare_rps = bare_backbone_rows_per_s(s1, fold.dims(), frame_hw, env.device, round(loader_rows / n),
                                        batches, warmup=3)  # one shape: a few steps warm it
    loader_rps = loader_rows / loader_seconds
    return {
        "backbone": s1.model.backbone, "mode": s1.mode, "batch_size": s1.batch_size,
        "rows_per_batch": round(loader_rows / n, 1), "device": device, "threads": threads,
        "num_workers": s1.num_workers, "timed_batches": batches,
        "train_rows_per_s": round(train_rps, 1),
        "loader_rows_per_s": round(loader_rps, 1),
        "loader_to_train_ratio": round(loader_rps / train_rps, 1),
        "loader_ok": loader_rps >= TARGET_LOADER_RATIO * train_rps,
        "bare_backbone_rows_per_s": round(bare_rps, 1),
        "step_to_bare_backbone": round(train_rps / bare_rps, 2),
        "peak_memory_gib": None if peak_gib is None else round(peak_gib, 2),
    }


def bare_backbone_rows_per_s(s1: Any, dims: Any, frame_hw: tuple[int, int], device: torch.device,
                             rows: int, batches: int, warmup: int) -> float:
    """Rows/s of the backbone alone, forward+backward on random frames, set up as stage 1 sets it up."""
    in_chans = input_planes_count(s1.model, dims)
    height, width = dims.image_size or frame_hw
    backbone = create_backbone(s1.model.model_copy(update={"pretrained": False}), in_chans).to(device)
    x = torch.randn(rows, in_chans, height, width, device=device)
    if s1.channels_last:
        backbone = backbone.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if s1.compile:
        backbone.compile()
    backbone.train()
    amp = _amp_dtype(s1.precision, device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss = backbone(x).float().mean()
        loss.backward()

    for _ in range(warmup):
        step()
    _sync(device)
    started = time.perf_counter()
    for _ in range(batches):
        step()
    _sync(device)
    return rows * batches / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="demo")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, [f"data_dir={args.data}", *args.overrides])
    print(json.dumps(run(cfg, batches=args.batches, device=args.device), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
