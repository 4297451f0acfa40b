"""`trajstack vlm`: extract Qwen2-VL features of every configured split into the cache.

Exit codes: 0 done, 2 when the config, data, model or an existing cache cannot be used (the
message says what to do). Ctrl-C keeps the finished chunks; rerunning resumes.
"""

from __future__ import annotations

import sys

from trajstack.cli import common_parser, config_from_args
from trajstack.io import write_parquet_atomic
from trajstack.logs import get_logger

logger = get_logger(__name__)


def main(argv: list[str] | None = None) -> int:
    """Extract the features of `vlm.splits`; optionally export them as one parquet table."""
    parser = common_parser("vlm", "Extract Qwen2-VL last-token features into a resumable cache.")
    parser.add_argument("--force", action="store_true",
                        help="move aside a cache made with another model, prompt or IDs")
    parser.add_argument("--export", metavar="PARQUET",
                        help="also write ID + features of all splits (stage1.model.vlm.features)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    # Imported here so that `trajstack vlm --help` works without torch/transformers loaded.
    from .extractor import extract_split
    from .features import vlm_feature_table

    if cfg.vlm.threads:
        import torch

        torch.set_num_threads(cfg.vlm.threads)
    for split in cfg.vlm.splits:
        result = extract_split(cfg, split, force=args.force)
        speed = f", {result.rows_per_s:.1f} rows/s" if result.rows_per_s else ""
        state = (f"computed {result.computed_chunks}/{result.total_chunks} chunks"
                 if result.computed_chunks else "up to date")
        logger.info(f"{split}: {result.n_rows} rows, {state} in {result.seconds:.1f} s{speed}: {result.folder}")
    if args.export:
        write_parquet_atomic(args.export, vlm_feature_table(cfg, cfg.vlm.splits))
        logger.info(f"exported {args.export}")
    return 0


if __name__ == "__main__":
    from trajstack.cli import main as cli_main

    sys.exit(cli_main(["vlm", *sys.argv[1:]]))
