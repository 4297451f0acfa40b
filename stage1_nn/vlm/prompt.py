"""The text side of a VLM row: telemetry rendered into plain English by the configured template.

The template is a Python format string. It can name any telemetry column (raw value: floats as
numbers, booleans as True/False, categories as their level) and any field of
`vlm.prompt.fields` (a column scaled, e.g. m/s -> km/h, or put into words by thresholds).
A missing value prints `vlm.prompt.missing`, whatever format the template asks for.
"""

from __future__ import annotations

import string
from typing import Any

import numpy as np
import pandas as pd

from trajstack.config import ConfigError
from trajstack.spec import DatasetSpec

from .config import PromptConfig, PromptField


class _Missing:
    """Marks a missing value; the formatter prints the configured text for it."""


MISSING = _Missing()


class _PromptFormatter(string.Formatter):
    def __init__(self, missing_text: str):
        super().__init__()
        self.missing_text = missing_text

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is MISSING:
            return self.missing_text  # a format such as :.1f cannot apply to it
        return super().format_field(value, format_spec)


def default_template(spec: DatasetSpec) -> str:
    """A schema-generic template: every telemetry column as ``name: value``."""
    return "Telemetry: " + ", ".join(f"{col}: {{{col}}}" for col in spec.telemetry_columns) + "."


def template_names(template: str) -> list[str]:
    """The field names a format string uses (``{a.b:.1f}`` -> ``a``)."""
    names = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is not None:
            names.append(name.split(".")[0].split("[")[0])
    return names


class PromptRenderer:
    """Renders one prompt per table row and builds the chat messages around the frames.

    Parameters
    ----------
    prompt : the `vlm.prompt` config section.
    spec : the dataset spec (telemetry columns and kinds, frame offsets).

    Raises
    ------
    ConfigError : a template or caption naming an unknown field, or a field on an unknown or
        categorical column; the message lists the valid names.
    """

    def __init__(self, prompt: PromptConfig, spec: DatasetSpec):
        self.prompt = prompt
        self.spec = spec
        self.template = prompt.template or default_template(spec)
        self._formatter = _PromptFormatter(prompt.missing)
        self._check()

    def _check(self) -> None:
        telemetry = self.spec.telemetry
        for field in self.prompt.fields:
            name = field.name
            if field.column not in telemetry:
                raise ConfigError(f"vlm.prompt.fields '{name}': column '{field.column}' is not a telemetry "
                                  f"column; valid: {', '.join(telemetry)}")
            if telemetry[field.column] == "category":
                raise ConfigError(f"vlm.prompt.fields '{name}': '{field.column}' is categorical; name it "
                                  "directly in the template instead")
        known = [*telemetry, *(f.name for f in self.prompt.fields)]
        unknown = [n for n in template_names(self.template) if n not in known]
        if unknown or any(not n for n in template_names(self.template)):
            raise ConfigError(f"vlm.prompt.template names unknown field(s) {unknown or ['{}']}; valid: "
                              f"{', '.join(known)}")
        caption = self.prompt.image_caption or ""
        bad = [n for n in template_names(caption) if n not in ("offset_s", "index")]
        if bad:
            raise ConfigError(f"vlm.prompt.image_caption names {bad}; valid: offset_s, index")

    # ------------------------------------------------------------------ text
    def texts(self, table: pd.DataFrame) -> list[str]:
        """One prompt per row of a typed table (`trajstack.tables.read_table`), in row order."""
        columns = {col: _raw_values(table[col], kind) for col, kind in self.spec.telemetry.items()}
        for field in self.prompt.fields:
            columns[field.name] = _field_values(table[field.column], field)
        names = set(template_names(self.template))
        used = {k: v for k, v in columns.items() if k in names}
        return [self._formatter.format(self.template, **{k: v[i] for k, v in used.items()})
                for i in range(len(table))]

    def messages(self, text: str) -> list[dict[str, Any]]:
        """Chat messages of one row: captioned frames in time order, then the prompt text."""
        content: list[dict[str, Any]] = []
        for index, offset in enumerate(self.spec.frame_offsets_s):
            if self.prompt.image_caption:
                caption = self.prompt.image_caption.format(offset_s=offset, index=index)
                content.append({"type": "text", "text": caption})
            content.append({"type": "image"})
        content.append({"type": "text", "text": text})
        messages = [{"role": "user", "content": content}]
        if self.prompt.system is not None:
            messages.insert(0, {"role": "system", "content": self.prompt.system})
        return messages


def _raw_values(values: pd.Series, kind: str) -> list[Any]:
    if kind == "category":
        return [MISSING if pd.isna(v) else str(v) for v in values]
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(float)
    if kind == "bool":
        return [MISSING if np.isnan(v) else bool(v) for v in numbers]
    return [MISSING if np.isnan(v) else float(v) for v in numbers]


def _field_values(values: pd.Series, field: PromptField) -> list[Any]:
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(float) * field.scale
    if field.absolute:
        numbers = np.abs(numbers)
    if field.words:
        picked = np.digitize(np.nan_to_num(numbers), field.bins)
        return [MISSING if np.isnan(v) else field.words[k] for v, k in zip(numbers, picked, strict=True)]
    return [MISSING if np.isnan(v) else float(v) for v in numbers]
