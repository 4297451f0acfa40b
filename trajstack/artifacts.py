"""The artifact store: one folder per run, `outputs/<experiment>/<stage>/<run>/`.

Each run folder holds `config.yaml` (the resolved config), `meta.json` (input hashes, fold
hash, versions, wall time, scores, status, the content hash of every output) and the stage's
files. A run is *done* when its meta says so and its signature matches the one asked for: then
the stage skips it.

The chain is content-addressed. A run's signature hashes the result-changing part of its
config (`Stage.result_config`: the one rule, each stage declaring its sections beside its
name), its stage's code version, the fold hash and its inputs; an input that is another run is
keyed `run:<stage>/<name>` and valued by that run's *output digest* (the hash of its outputs'
contents, `RunResult.output_digest`), never by that run's config. So a rerun upstream that
changes bytes changes every signature downstream, and one that writes the same bytes changes
none. A finished run whose config matches but whose inputs changed is stale: `begin` moves it
aside and the stage redoes it; a finished run of another *config* is never overwritten
silently (`--force`).
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
    file_hash,
    read_json,
    write_json_atomic,
    write_parquet_atomic,
    write_yaml_atomic,
)
from trajstack.logs import FILE_ONLY, attach_run_file, detach_run_files, get_logger

logger = get_logger(__name__)

# Config keys that say where things are, not what is computed: they do not change a result.
LOCATION_KEYS = ("experiment", "data_dir", "output_dir", "cache")
# Settings, in any section, that say how a result is computed (parallelism, display), not what:
# changing them must not make a finished run look like another one. (Thread and loader-worker
# counts can reorder float sums or reseed augmentation streams: results then differ in noise,
# not in kind, and a run is not redone for it.)
NON_RESULT_KEYS = frozenset({"n_jobs", "threads", "executor", "ray_address", "num_workers",
                             "fold_workers", "progress"})

# Artifact file names, defined once: every stage, reader and test uses these.
OOF_FILE = "oof.parquet"
TEST_FILE = "test.parquet"
OOF_EMB_FILE = "oof_emb.npy"
TEST_EMB_FILE = "test_emb.npy"
TRAIN_IDS_FILE = "train_ids.npy"
CHECKPOINT_FILE = "model.pt"
PREDICTION_FILES = (OOF_FILE, TEST_FILE)
# The outputs whose content hashes meta.json records (glob patterns inside a run folder).
HASHED_OUTPUTS = (OOF_FILE, TEST_FILE, OOF_EMB_FILE, *(f"fold*/{name}" for name in (
    OOF_FILE, TEST_FILE, OOF_EMB_FILE, TEST_EMB_FILE)))


def fold_dir_name(fold: int) -> str:
    """Folder of fold `fold` inside a run (per-fold predictions, checkpoint, curve)."""
    return f"fold{fold}"


def run_input_key(stage: str, name: str) -> str:
    """Key of an upstream run among a run's inputs (its value: the run's output digest)."""
    return f"run:{stage}/{name}"


@dataclass(frozen=True)
class Stage:
    """A stage of the chain as the artifact store sees it.

    Parameters
    ----------
    name : folder under the experiment (`outputs/<exp>/<name>/<run>/`).
    sections : top-level config sections that can change its result (None: all); with
        `NON_RESULT_KEYS` and `LOCATION_KEYS` dropped, they make the run's signature.
    version : the stage's code version; bump it when its code changes what it outputs.
    rebuild : command that rebuilds one of its runs (`{run}`: the run name), for notes.
    """

    name: str
    sections: tuple[str, ...] | None = None
    version: int = 0
    rebuild: str = "trajstack {stage}"

    def result_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """The part of a resolved config that can change this stage's result: the one rule."""
        kept = {k: v for k, v in config.items()
                if k not in LOCATION_KEYS and (self.sections is None or k in self.sections)}
        return _without_keys(kept, NON_RESULT_KEYS)

    def run_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """What a run saves as config.yaml: its sections, and where things are."""
        return {k: v for k, v in config.items()
                if k in LOCATION_KEYS or self.sections is None or k in self.sections}

    def rebuild_command(self, run: str) -> str:
        return self.rebuild.format(stage=self.name, run=run)


def _without_keys(value: Any, keys: frozenset[str]) -> Any:
    if isinstance(value, dict):
        return {k: _without_keys(v, keys) for k, v in value.items() if k not in keys}
    return value
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


def output_hashes(run_dir: Path) -> dict[str, str]:
    """Content hash of every output of a run folder (`HASHED_OUTPUTS`), by relative path."""
    paths = sorted({p for pattern in HASHED_OUTPUTS for p in run_dir.glob(pattern) if p.is_file()})
    return {p.relative_to(run_dir).as_posix(): file_hash(p) for p in paths}


@dataclass
class Run:
    """One run folder of a stage; create with `ArtifactStore.run`."""

    dir: Path
    stage_spec: Stage
    name: str
    config: dict[str, Any]
    inputs: dict[str, str] = field(default_factory=dict)
    fold_hash: str | None = None

    @property
    def stage(self) -> str:
        return self.stage_spec.name

    @property
    def config_hash(self) -> str:
        """Hash of what this run computes apart from its inputs: result config and code version."""
        return data_hash({"config": self.stage_spec.result_config(self.config),
                          "version": self.stage_spec.version})

    @property
    def signature(self) -> str:
        return data_hash({"config": self.config_hash, "inputs": self.inputs, "folds": self.fold_hash})

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
            stale = meta.get("config_hash") == self.config_hash  # same config, inputs changed
            if meta.get("status") == "done" and not force and not stale:
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
                         wall_time_s=round(wall, 2), scores=scores or {},
                         outputs=output_hashes(self.dir),
                         rebuild=self.stage_spec.rebuild_command(self.name), **extra)

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
            "code_version": self.stage_spec.version, "config_hash": self.config_hash,
            "inputs": self.inputs,
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

    @property
    def output_digest(self) -> str:
        """One hash of the contents of every output (what a downstream signature records).

        A run made before outputs were hashed falls back to its signature."""
        outputs = self.meta.get("outputs")
        return data_hash(outputs) if outputs else str(self.meta.get("signature"))

    @property
    def input_key(self) -> str:
        return run_input_key(self.meta["stage"], self.meta["run"])

    def oof(self) -> pd.DataFrame:
        return pd.read_parquet(self.dir / OOF_FILE)

    def test(self) -> pd.DataFrame:
        return pd.read_parquet(self.dir / TEST_FILE)


class ArtifactStore:
    """The runs of one experiment: `<output_dir>/<experiment>/<stage>/<run>/`."""

    def __init__(self, experiment_dir: str | Path):
        self.root = Path(experiment_dir)

    def run(self, stage: Stage | str, name: str, config: dict[str, Any], inputs: dict[str, str],
            fold_hash: str | None) -> Run:
        """A run of `stage`; `config` is saved as config.yaml, its stage sections make the signature."""
        spec = stage if isinstance(stage, Stage) else Stage(stage)
        _check_name(spec.name, "stage")
        _check_name(name, "run name")
        detach_run_files()  # the previous run's lines are over; this one's file opens at begin
        return Run(self.root / spec.name / name, spec, name, config, dict(inputs), fold_hash)

    def stale_inputs(self, run: RunResult) -> list[str]:
        """The upstream runs (`run:<stage>/<name>` inputs) whose outputs changed, or that are no
        longer finished, since `run` was made; [] when every input is current."""
        stale = []
        for key, digest in run.meta.get("inputs", {}).items():
            if not key.startswith("run:"):
                continue
            upstream = self.root / key[len("run:"):]
            meta = read_json(upstream / "meta.json") if (upstream / "meta.json").exists() else {}
            current = RunResult(upstream, meta, {}).output_digest if meta.get("status") == "done" else None
            if current != digest:
                stale.append(key[len("run:"):])
        return stale

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
