"""A learner's parameters: `configs/stage2/<key>.yaml`, overridden by `stage2.params.<key>`.

The file holds the library's constructor arguments; an experiment config (or a command-line
override such as `stage2.params.lightgbm.num_leaves=15`) changes single keys on top of it.
Each run saves the merged result, so its config.yaml says exactly what was fitted.
"""

from __future__ import annotations

import copy
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from stage2_gbdt.learners import LEARNERS
from trajstack.artifacts import Stage
from trajstack.config import CONFIG_DIR, Config, ConfigError, check_axes, deep_merge

PARAMS_DIR = CONFIG_DIR / "stage2"
# The stage, with the config sections that can change its result (stage 1 reaches it through
# the digests of its outputs among the inputs). Version 2: early stopping on an inner holdout.
STAGE = Stage("stage2", sections=("seed", "dataset", "folds", "features", "stage2"), version=2,
              rebuild="trajstack stage2 --learner {run}")


def params_file(key: str) -> Path:
    return PARAMS_DIR / f"{key}.yaml"


def learner_params(cfg: Config, key: str) -> dict[str, Any]:
    """Merged library params of learner `key` (file defaults, then config overrides)."""
    LEARNERS.get(key)  # unknown key: error listing the valid ones
    unknown = [k for k in cfg.stage2.params if k not in LEARNERS]
    if unknown:
        raise ConfigError(f"stage2.params names unknown learners {unknown}; valid: "
                          f"{', '.join(LEARNERS.keys())}")
    path = params_file(key)
    base = yaml.safe_load(path.read_text()) if path.exists() else {}
    if not isinstance(base or {}, dict):
        raise ConfigError(f"{path} must be a mapping of {key} parameters")
    return deep_merge(base or {}, cfg.stage2.params.get(key, {}))


def target_params(cfg: Config, key: str, targets: list[str]) -> list[dict[str, Any]] | None:
    """Per-target overrides of learner `key`'s params from `stage2.axis_params`, one mapping per
    name of `targets` (target columns of the dataset spec); None when none is set for `key`.

    A learner key or axis the config names that does not exist, or per-axis params for a learner
    that fits every target at once, is a ConfigError.
    """
    spec, axis_params = cfg.dataset, cfg.stage2.axis_params
    unknown = [k for k in axis_params if k not in LEARNERS]
    if unknown:
        raise ConfigError(f"stage2.axis_params names unknown learners {unknown}; valid: "
                          f"{', '.join(LEARNERS.keys())}")
    for learner, per_axis in axis_params.items():
        check_axes(per_axis, spec, f"stage2.axis_params.{learner}")
    per_axis = axis_params.get(key, {})
    if not any(per_axis.values()):
        return None
    if LEARNERS.get(key).multi_output:
        raise ConfigError(f"stage2.axis_params.{key}: {key} fits every target in one model, so its "
                          "params cannot differ by axis; use a learner with one model per target")
    axis_of = dict(zip(spec.target_columns, spec.target_axes, strict=True))
    return [dict(per_axis.get(axis_of[t], {})) for t in targets]


def target_columns(cfg: Config, key: str, targets: list[str], columns: list[str]
                   ) -> list[np.ndarray | None] | None:
    """Per name of `targets`, the indices of `columns` its models see under
    `stage2.axis_drop_columns` (None: every column); None when no axis drops any, or when
    learner `key` fits every target in one model.

    An axis the config names that is not one of the dataset's is a ConfigError.
    """
    spec, drops = cfg.dataset, cfg.stage2.axis_drop_columns
    check_axes(drops, spec, "stage2.axis_drop_columns")
    if not any(drops.values()) or LEARNERS.get(key).multi_output:
        return None
    axis_of = dict(zip(spec.target_columns, spec.target_axes, strict=True))

    def kept(axis: str) -> np.ndarray | None:
        patterns = drops.get(axis, [])
        keep = [j for j, c in enumerate(columns) if not any(fnmatchcase(c, p) for p in patterns)]
        return None if len(keep) == len(columns) else np.asarray(keep)

    per_axis = {axis: kept(axis) for axis in spec.axes}
    return [per_axis[axis_of[t]] for t in targets]


def run_config(cfg: Config, key: str, params: dict[str, Any],
               variant: str | None = None) -> dict[str, Any]:
    """The resolved config of one learner's run: only that learner, with its merged params.

    Keeping other learners' params out means editing xgboost's file does not invalidate a
    finished lightgbm run (nor does editing a `stage2.variants` entry). Other stages' sections
    are left out too: downstream ones (blend, report, ...) cannot change stage 2, and stage 1 (with its VLM inputs) enters through its
    run's signature in the feature hash.
    """
    resolved = STAGE.run_config(copy.deepcopy(cfg.to_dict()))
    resolved["stage2"]["learners"] = [key]
    resolved["stage2"]["params"] = {key: params}
    # Only this learner's per-axis params; none: no key at all, so that runs made before the
    # option existed keep their signature.
    own_axes = resolved["stage2"].pop("axis_params", {}).get(key)
    if own_axes:
        resolved["stage2"]["axis_params"] = {key: own_axes}
    if not any(resolved["stage2"].get("axis_drop_columns", {}).values()):
        resolved["stage2"].pop("axis_drop_columns", None)  # as for axis_params: old runs stay fresh
    # Which learners also run without stage 1 is not this run's business: those runs differ in
    # their features (and folder), so adding one must not make every finished run look stale.
    resolved["stage2"].pop("without_stage1", None)
    # Only this run's variant (if any): adding or editing another variant leaves it alone.
    variants = resolved["stage2"].pop("variants", {})
    if variant is not None:
        resolved["stage2"]["variant"] = {variant: variants[variant]}
    return resolved
