"""`trajstack <command> ...`: one entry point; each command lives in the module that owns it.

Every command module exposes `main(argv) -> int`. Commands share the options built by
`common_parser` (--config, --data, --exp and trailing `key=value` overrides).

The one error boundary: a `TrajstackError` raised anywhere below a command (a config mistake,
bad data, an artifact that does not match, missing weights) is printed here as one line,
`trajstack <command>: <message>`, with exit code 2 and no traceback. The console logger is set
up here too (rank 0 only under torchrun); see `trajstack.logs`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from trajstack.config import Config, load_config
from trajstack.errors import TrajstackError, one_line
from trajstack.logs import detach_run_files, get_logger, process_rank, setup_console

logger = get_logger("cli")

# command -> (module with main(argv), one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "validate": ("trajstack.validate", "check a dataset against the spec; exit 2 on problems"),
    "cache": ("trajstack.image_cache", "decode every frame once into the memory-mapped cache"),
    "folds": ("trajstack.folds", "write the experiment's folds.csv (GroupKFold on scene)"),
    "vlm": ("stage1_nn.vlm.cli", "extract Qwen2-VL features into a cache"),
    "stage1": ("stage1_nn.train", "train the stage-1 network with K-fold CV (OOF + embeddings)"),
    "stage2": ("stage2_gbdt.train", "fit one GBDT per target on the feature table"),
    "blend": ("ensembling.blend", "optimise blend weights on OOF and write the submission"),
    "report": ("ensembling.report", "write the HTML report of an experiment"),
    "check-submission": ("ensembling.submission", "validate a submission CSV"),
}


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The options every pipeline command takes; trailing `key=value` are config overrides."""
    parser = argparse.ArgumentParser(prog=f"trajstack {prog}", description=description)
    parser.add_argument("--config", default="atmacup18",
                        help="YAML config file or a name in configs/ (default: atmacup18)")
    parser.add_argument("--data", help="dataset folder (overrides data_dir)")
    parser.add_argument("--exp", help="experiment name (overrides experiment)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, e.g. folds.n_splits=3 stage1.epochs=1")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    cfg = load_config(args.config, list(args.overrides))
    # Set directly, not as overrides: a path such as `2024` or `null` must stay a string.
    if args.data:
        cfg.data_dir = str(args.data)
    if args.exp:
        cfg.experiment = str(args.exp)
    return cfg


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: trajstack <command> [options]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:<17} {text}")
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"trajstack: unknown command {command!r}; choose one of {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    module_name = COMMANDS[command][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f"trajstack {command}: not built yet ({module_name} does not exist)", file=sys.stderr)
        return 2
    setup_console()
    try:
        return int(module.main(rest) or 0)
    except TrajstackError as err:
        # Something the user can fix: say it on one line and stop (bugs keep their traceback).
        message = f"trajstack {command}: {one_line(err)}"
        if process_rank() == 0:
            logger.error(message)  # console (stderr) and the open run's log.txt
        else:
            print(f"[rank {process_rank()}] {message}", file=sys.stderr)
        return 2
    finally:
        detach_run_files()
