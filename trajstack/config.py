"""Typed configuration: YAML files (with `base:` inheritance) plus `key=value` overrides.

Every section is a pydantic model that forbids unknown keys, so a typo fails loudly, naming
the key and the valid ones. The resolved config is what every artifact saves next to itself.
"""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ensembling.config import BlendConfig, ReportConfig, TrackingConfig
from features.config import FeaturesConfig
from stage1_nn.config import Stage1Config
from stage1_nn.vlm.config import VLMConfig
from stage2_gbdt.config import Stage2Config
from trajstack.errors import TrajstackError
from trajstack.spec import DatasetSpec, StrictModel

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class ConfigError(TrajstackError, ValueError):
    """A config file or override that cannot be used; the message says what to change."""


def check_axes(axes: Iterable[str], spec: DatasetSpec, option: str) -> None:
    """A ConfigError naming `option` when `axes` holds a name that is not one of `spec.axes`."""
    unknown = [a for a in axes if a not in spec.axes]
    if unknown:
        raise ConfigError(f"{option} names {unknown}, not in dataset.axes {spec.axes}: "
                          "name axes of the dataset")


class FoldsConfig(StrictModel):
    n_splits: int = 5
    seed: int = 42
    # Column of the train table for StratifiedGroupKFold (None: plain GroupKFold on scene).
    stratify_column: str | None = None
    # Continuous columns are cut into this many quantile bins before stratifying.
    stratify_bins: int = 10


class CacheConfig(StrictModel):
    # Where image caches live; None: <output_dir>/cache.
    dir: str | None = None
    workers: int = 2


class Config(StrictModel):
    experiment: str = "default"
    data_dir: str = "data/demo"
    output_dir: str = "outputs"
    seed: int = 42
    dataset: DatasetSpec
    folds: FoldsConfig = FoldsConfig()
    cache: CacheConfig = CacheConfig()
    # Stage sections live beside their code; each forbids unknown keys like the rest.
    stage1: Stage1Config = Stage1Config()
    vlm: VLMConfig = VLMConfig()
    features: FeaturesConfig = FeaturesConfig()
    stage2: Stage2Config = Stage2Config()
    blend: BlendConfig = BlendConfig()
    report: ReportConfig = ReportConfig()
    tracking: TrackingConfig = TrackingConfig()

    @property
    def experiment_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache.dir) if self.cache.dir else Path(self.output_dir) / "cache"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ----------------------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (following `base:` files), apply `key=value` overrides, validate.

    Parameters
    ----------
    path : YAML file; a bare name such as ``demo`` is looked up in the project's ``configs/``.
    overrides : strings ``dotted.key=value``; the value is parsed as YAML (``[0]``, ``true``).
    """
    raw = _read_with_bases(_resolve_path(path or "atmacup18"), seen=())
    for override in overrides or []:
        key, value = parse_override(override)
        _set_dotted(raw, key, value, source=f"override '{override}'")
    return validate_config(raw)


def validate_config(raw: dict[str, Any]) -> Config:
    _check_known_keys(Config, raw, prefix="")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        problems = []
        for e in err.errors():
            key = ".".join(str(p) for p in e["loc"])
            problems.append(f"config key '{key}': {e['msg']} (got {e.get('input')!r})")
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems)) from None


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value (e.g. folds.n_splits=3)")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def _resolve_path(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        return p
    for candidate in (CONFIG_DIR / p, CONFIG_DIR / f"{p}.yaml"):
        if candidate.exists():
            return candidate
    raise ConfigError(f"config file '{path}' not found (looked in . and {CONFIG_DIR})")


def _read_with_bases(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config '{path}' inherits from itself via base:")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config '{path}' is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config '{path}' must be a mapping at the top level")
    bases = data.pop("base", None) or []
    merged: dict[str, Any] = {}
    for base in [bases] if isinstance(bases, str) else bases:
        base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
        merged = deep_merge(merged, _read_with_bases(base_path, seen + (path,)))
    return deep_merge(merged, data)


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """`update` over `base`, mapping by mapping; an empty mapping in `update` clears the base's
    (a child config's `variants: {}` drops the entries it inherits, as `[]` does for a list)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _set_dotted(raw: dict[str, Any], key: str, value: Any, source: str) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `Model` or `Model | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    # Only unions (`Model | None`) hold a section; a dict or list of models is a value.
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _check_known_keys(model: type[BaseModel], raw: Any, prefix: str) -> None:
    if not isinstance(raw, dict):
        return
    fields = model.model_fields
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            where = f"under '{prefix[:-1]}'" if prefix else "at the top level"
            raise ConfigError(
                f"unknown config key '{dotted}'; valid keys {where}: {', '.join(fields)}"
            )
        sub = _model_of(fields[key].annotation)
        if sub is not None:
            _check_known_keys(sub, value, prefix=f"{dotted}.")
