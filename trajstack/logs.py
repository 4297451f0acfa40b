"""One logger for every stage: stdlib `logging` under the name `trajstack`.

- Console: the bare message, INFO to stdout and WARNING and up to stderr, on rank 0 only
  (torchrun's `RANK`), set up once per command by `setup_console` (the CLI does it).
- Run files: `Run.begin` attaches the run's `log.txt` (timestamped lines) until the next run
  is opened or the command ends, so everything a stage says about a run lands in that run's
  file as well as on the console.
- Worker processes (stage 1's folds at once): `send_records_to(queue)` in each worker and
  `relay_records(queue)` in the parent, so that the parent's console and run file stay the only
  writers (whole lines, never two processes' output interleaved).
tqdm progress bars stay as they are (stderr, disabled off a terminal).
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = "trajstack"
FILE_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"
# `log.info(msg, extra=FILE_ONLY)`: a detail for the run's log.txt that the console leaves out.
FILE_ONLY = {"file_only": True}

_root = logging.getLogger(ROOT)
_root.setLevel(logging.INFO)  # INFO reaches the run files even when no console is set up


def get_logger(name: str) -> logging.Logger:
    """The project logger of a module: `get_logger(__name__)` (under `trajstack.`)."""
    return logging.getLogger(name if name == ROOT or name.startswith(f"{ROOT}.") else f"{ROOT}.{name}")


def process_rank() -> int:
    """This process's rank under torchrun (`RANK`), 0 otherwise."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class ConsoleHandler(logging.Handler):
    """Writes the bare message to the *current* sys.stdout / sys.stderr (so redirection and
    pytest's capture see it): INFO and below to stdout, WARNING and up to stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "file_only", False):
            return
        try:
            stream = sys.stderr if record.levelno >= logging.WARNING else sys.stdout
            stream.write(self.format(record) + "\n")
            stream.flush()
        except Exception:  # pragma: no cover - logging's own contract
            self.handleError(record)


class RunFileHandler(logging.FileHandler):
    """A run's `log.txt` (appended to: a resumed run keeps its earlier lines)."""


def setup_console(rank: int | None = None, level: int = logging.INFO) -> None:
    """Give the project logger one console handler, on rank 0 only (idempotent).

    Parameters
    ----------
    rank : the process's rank; None reads torchrun's `RANK` (0 without torchrun).
    level : the lowest level shown.
    """
    for handler in [h for h in _root.handlers if isinstance(h, ConsoleHandler)]:
        _root.removeHandler(handler)
    if (process_rank() if rank is None else rank) == 0:
        handler = ConsoleHandler(level)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _root.addHandler(handler)


def attach_run_file(path: str | Path) -> None:
    """Send the project's log lines to `path` too (replacing any other run's file)."""
    detach_run_files()
    handler = RunFileHandler(path, mode="a", encoding="utf-8", delay=True)
    handler.setFormatter(logging.Formatter(FILE_FORMAT, DATE_FORMAT))
    _root.addHandler(handler)


def detach_run_files() -> None:
    """Close and remove every run file handler (a run's logging period is over)."""
    for handler in [h for h in _root.handlers if isinstance(h, RunFileHandler)]:
        _root.removeHandler(handler)
        handler.close()


def send_records_to(queue: Any) -> None:
    """In a worker process: put every project log record on `queue` instead of writing it."""
    for handler in list(_root.handlers):
        _root.removeHandler(handler)
    _root.addHandler(logging.handlers.QueueHandler(queue))


@contextlib.contextmanager
def relay_records(queue: Any, around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                  ) -> Iterator[None]:
    """In the parent, for the block: hand each record workers put on `queue` to this process's
    handlers (console, the open run's log.txt) as if it were logged here.

    Parameters
    ----------
    queue : a multiprocessing queue the workers were given (`send_records_to`).
    around : context entered around each write, e.g. `tqdm.external_write_mode` so that a
        progress bar is cleared and redrawn instead of garbled.
    """
    def relay() -> None:
        while (record := queue.get()) is not None:
            with around():
                logging.getLogger(record.name).handle(record)

    thread = threading.Thread(target=relay, name="log-relay", daemon=True)
    thread.start()
    try:
        yield
    finally:
        queue.put(None)  # after every worker's records: the queue is first in, first out
        thread.join()
