"""What every feature builder shares: the build context and the builder registry.

A builder is a named function of the validated tables (and earlier artifacts) returning one
frame per split, keyed by ID, in the tables' row order. It declares which config section and
which extra inputs (files, artifacts) its output depends on: that is its cache key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd

from trajstack.registry import Registry

if TYPE_CHECKING:
    from trajstack.config import Config
    from trajstack.folds import Folds
    from trajstack.spec import DatasetSpec

SplitFrames = tuple[pd.DataFrame, pd.DataFrame]


@dataclass
class BuildContext:
    """Inputs a builder may read: config, typed tables, their file hashes, the folds."""

    cfg: Config
    train: pd.DataFrame
    test: pd.DataFrame
    input_hashes: dict[str, str] = field(default_factory=dict)
    folds: Folds | None = None

    @property
    def spec(self) -> DatasetSpec:
        return self.cfg.dataset

    def split(self, name: str) -> pd.DataFrame:
        return self.train if name == "train" else self.test


@dataclass(frozen=True)
class FeatureBuilder:
    """A registered builder: `build(ctx) -> (train, test)` and what its output depends on."""

    name: str
    build: Callable[[BuildContext], SplitFrames]
    # The config values that change the output (hashed into the cache key).
    config_of: Callable[[Config], Any]
    # Extra input hashes beyond the train/test files (e.g. a stage-1 run's signature).
    extra_inputs: Callable[[BuildContext], dict[str, str]] = lambda ctx: {}
    # Where the builder's clashing columns come from and what to change (for the error message).
    clash_hint: Callable[[BuildContext, list[str]], str] | None = None
    # Whether its columns come from the frames (a network's or image statistics): left out of a
    # telemetry-only reference, which measures what the frames add.
    reads_frames: bool = False


BUILDERS: Registry[FeatureBuilder] = Registry("feature builder")


def register_builder(
    name: str,
    config_of: Callable[[Config], Any] = lambda cfg: None,
    extra_inputs: Callable[[BuildContext], dict[str, str]] | None = None,
    clash_hint: Callable[[BuildContext, list[str]], str] | None = None,
    reads_frames: bool = False,
) -> Callable[[Callable[[BuildContext], SplitFrames]], Callable[[BuildContext], SplitFrames]]:
    """Decorator registering `fn(ctx) -> (train, test)` as builder `name`."""

    def add(fn: Callable[[BuildContext], SplitFrames]) -> Callable[[BuildContext], SplitFrames]:
        BUILDERS.register(name)(FeatureBuilder(
            name, fn, config_of, extra_inputs or (lambda ctx: {}), clash_hint, reads_frames))
        return fn

    return add


def per_split(fn: Callable[[pd.DataFrame, BuildContext], pd.DataFrame]
              ) -> Callable[[BuildContext], SplitFrames]:
    """Lift a one-table function to a builder: each split is computed from itself alone."""

    def build(ctx: BuildContext) -> SplitFrames:
        return fn(ctx.train, ctx), fn(ctx.test, ctx)

    build.__doc__ = fn.__doc__
    return build


def id_frame(table: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    """A frame holding only the ID column, the start of every builder's output."""
    return pd.DataFrame({spec.id_column: table[spec.id_column].to_numpy()})
