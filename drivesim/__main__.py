"""`python -m drivesim --out DIR --train-scenes N --test-scenes M --seed S [--workers W]`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from drivesim.writer import generate
from trajstack.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m drivesim",
        description="Write a driving dataset in the atmaCup #18 layout, with an oracle/ folder "
        "(test labels, hidden state, irreducible-error floor) that the pipeline never reads.",
    )
    parser.add_argument("--out", required=True, help="dataset folder to write")
    parser.add_argument("--train-scenes", type=int, default=400)
    parser.add_argument("--test-scenes", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes (same bytes for any value)")
    parser.add_argument("--config", default="atmacup18", help="config whose dataset spec to write")
    parser.add_argument("--no-images", action="store_true", help="tables and oracle only (fast)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.train_scenes < 0 or args.test_scenes < 0 or args.workers < 1:
        parser.error("scene counts must be >= 0 and --workers >= 1")
    spec = load_config(args.config).dataset
    t0 = time.perf_counter()
    report = generate(args.out, args.train_scenes, args.test_scenes, args.seed, spec,
                      workers=args.workers, render=not args.no_images, progress=not args.quiet)
    summary = {k: report[k] for k in ("train_rows", "n_rows", "floor_mae", "constant_velocity_mae",
                                      "constant_velocity_ratio_to_floor")}
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(summary), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
