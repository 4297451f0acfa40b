"""The artifact store: one folder per run, `outputs/<experiment>/<stage>/<run>/`.

Each run folder holds `config.yaml` (the resolved config), `meta.json` (input hashes, fold
hash, versions, wall time, scores, status) and the stage's files. A run is *done* when its
meta says so and its signature (config + input hashes) matches the one asked for: then the
stage skips it. A finished run with another signature is never overwritten silently.
"""

from __future__ import annotations

import datetime as dt
import platform
import shutil
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from trajstack.errors import TrajstackError
from trajstack.io import (
    atomic_path,
    data_hash,
    read_json,
    write_json_atomic,
    write_parquet_atomic,
    write_yaml_atomic,
)
from trajstack.logs import FILE_ONLY, attach_run_file, detach_run_files, get_logger

logger = get_logger(__name__)

# Config keys that say where things are, not what is computed: they do not change a result.
LOCATION_KEYS = ("experiment", "data_dir", "output_dir", "cache")
# (section, key) pairs that only change what is shown: turning a progress bar off must not make
# a finished run look like another one.
DISPLAY_KEYS = (("stage1", "progress"), ("vlm", "progress"))
VERSIONED_PACKAGES = (
    "trajstack", "numpy", "pandas", "polars", "scikit-learn", "torch", "timm", "lightgbm",
    "xgboost", "catboost",
)


class ArtifactError(TrajstackError, RuntimeError):
    """An artifact that cannot be used as asked; the message says what to do."""


class FoldMismatchError(ArtifactError):
    """An input artifact was built on another fold assignment."""


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def result_config(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that can change a result (paths and display switches dropped)."""
    kept = {k: v for k, v in config.items() if k not in LOCATION_KEYS}
    for section, key in DISPLAY_KEYS:
        if isinstance(kept.get(section), dict) and key in kept[section]:
            kept[section] = {k: v for k, v in kept[section].items() if k != key}
    return kept


@dataclass
class Run:
    """One run folder of a stage; create with `ArtifactStore.run`."""

    dir: Path
    stage: str
    name: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    fold_hash: str | None = None

    @property
    def signature(self) -> str:
        return data_hash({"config": result_config(self.config), "inputs": self.inputs,
                          "folds": self.fold_hash})

    @property
    def meta_path(self) -> Path:
        return self.dir / "meta.json"

    def read_meta(self) -> dict[str, Any] | None:
        return read_json(self.meta_path) if self.meta_path.exists() else None

    def is_done(self) -> bool:
        meta = self.read_meta()
        return bool(meta and meta.get("status") == "done" and meta.get("signature") == self.signature)

    def begin(self, force: bool = False) -> None:
        """Prepare the folder: refuse (or, with `force`, archive) a finished run of another signature.

        A run left unfinished with the same signature is resumed: its done parts stay.
        """
        meta = self.read_meta()
        if meta is not None and meta.get("signature") != self.signature:
            if meta.get("status") == "done" and not force:
                raise ArtifactError(
                    f"{self.dir} holds a finished run made with another config or inputs "
                    f"(signature {meta.get('signature')} != {self.signature}). Use another run "
                    f"name or experiment (EXP=...), or pass --force to move the old run aside."
                )
            self._archive()
        self.dir.mkdir(parents=True, exist_ok=True)
        attach_run_file(self.path("log.txt"))  # until another run is opened or the command ends
        write_yaml_atomic(self.dir / "config.yaml", self.config)
        self._write_meta(status="running", started=_now())
        self._t0 = time.perf_counter()

    def finish(self, scores: dict[str, Any] | None = None, **extra: Any) -> None:
        wall = time.perf_counter() - getattr(self, "_t0", time.perf_counter())
        meta = self.read_meta() or {}
        self._write_meta(status="done", started=meta.get("started"), finished=_now(),
                         wall_time_s=round(wall, 2), scores=scores or {}, **extra)

    def path(self, name: str) -> Path:
        return self.dir / name

    # ------------------------------------------------------------------ writers (atomic)
    def write_parquet(self, name: str, frame: pd.DataFrame) -> Path:
        write_parquet_atomic(self.path(name), frame)
        return self.path(name)

    def write_json(self, name: str, data: Any) -> Path:
        write_json_atomic(self.path(name), data)
        return self.path(name)

    def write_npy(self, name: str, array: np.ndarray) -> Path:
        with atomic_path(self.path(name)) as tmp, open(tmp, "wb") as f:
            np.save(f, array)
        return self.path(name)

    def log(self, message: str) -> None:
        """A line for this run's log.txt only (detail the stage also summarises on the console)."""
        logger.info(message, extra=FILE_ONLY)

    # ------------------------------------------------------------------ resumable parts
    def part_done(self, part: str) -> bool:
        """Whether a part (e.g. `fold0`) finished under this run's signature."""
        marker = self.dir / part / "done.json"
        return marker.exists() and read_json(marker).get("signature") == self.signature

    def mark_part_done(self, part: str, **info: Any) -> None:
        write_json_atomic(self.dir / part / "done.json", {"signature": self.signature, **info})

    # ------------------------------------------------------------------ internals
    def _write_meta(self, **fields: Any) -> None:
        write_json_atomic(self.meta_path, {
            "stage": self.stage, "run": self.name, "signature": self.signature,
            "config_hash": data_hash(result_config(self.config)), "inputs": self.inputs,
            "fold_hash": self.fold_hash, "versions": package_versions(), **fields,
        })

    def _archive(self) -> None:
        if not self.dir.exists():
            return
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        target = self.dir.with_name(f"{self.dir.name}.old-{stamp}")
        shutil.move(str(self.dir), str(target))


@dataclass
class RunResult:
    """A finished run read back: its meta, config and prediction tables."""

    dir: Path
    meta: dict[str, Any]
    config: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.meta['stage']}/{self.meta['run']}"

    @property
    def fold_hash(self) -> str | None:
        return self.meta.get("fold_hash")

    def oof(self) -> pd.DataFrame:
        return pd.read_parquet(self.dir / "oof.parquet")

    def test(self) -> pd.DataFrame:
        return pd.read_parquet(self.dir / "test.parquet")


class ArtifactStore:
    """The runs of one experiment: `<output_dir>/<experiment>/<stage>/<run>/`."""

    def __init__(self, experiment_dir: str | Path):
        self.root = Path(experiment_dir)

    def run(self, stage: str, name: str, config: dict[str, Any], inputs: dict[str, str],
            fold_hash: str | None) -> Run:
        _check_name(stage, "stage")
        _check_name(name, "run name")
        detach_run_files()  # the previous run's lines are over; this one's file opens at begin
        return Run(self.root / stage / name, stage, name, config, dict(inputs), fold_hash)

    def finished_runs(self, stage: str | None = None) -> list[RunResult]:
        stages = [self.root / stage] if stage else sorted(p for p in self.root.glob("*") if p.is_dir())
        results = []
        for stage_dir in stages:
            for meta_path in sorted(stage_dir.glob("*/meta.json")):
                meta = read_json(meta_path)
                if meta.get("status") == "done" and ".old-" not in meta_path.parent.name:
                    results.append(self.load(meta_path.parent))
        return results

    def load(self, run_dir: str | Path, expect_fold_hash: str | None = None) -> RunResult:
        """Read a finished run; refuse it when it was built on other folds."""
        run_dir = Path(run_dir)
        meta_path = run_dir / "meta.json"
        if not meta_path.exists():
            raise ArtifactError(f"{run_dir}: no meta.json; run that stage first")
        meta = read_json(meta_path)
        if meta.get("status") != "done":
            raise ArtifactError(f"{run_dir}: the run did not finish; rerun its stage to resume it")
        if expect_fold_hash is not None and meta.get("fold_hash") != expect_fold_hash:
            raise FoldMismatchError(
                f"{run_dir} was built on folds {meta.get('fold_hash')}, but this run uses folds "
                f"{expect_fold_hash}. Rerun that stage with the current folds.csv, or use the "
                f"experiment whose folds it was built on."
            )
        config = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
        return RunResult(run_dir, meta, config)


def _check_name(name: str, what: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith(".") or ".." in name:
        raise ArtifactError(f"{what} {name!r} is not a safe folder name")


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")
