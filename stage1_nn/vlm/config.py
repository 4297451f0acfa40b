"""Config section `vlm:` for the Qwen2-VL feature extractor (issue 8).

Pure pydantic (no torch, no transformers): importing it must stay cheap, since every command
loads the whole config. Nothing here names a dataset column: the prompt's fields and template
come from the YAML preset, which knows the schema.
"""

from __future__ import annotations

from typing import Literal

from pydantic import model_validator

from trajstack.spec import StrictModel


class PromptField(StrictModel):
    """A value the prompt template can name: one telemetry column, scaled or turned into words.

    Without `words` the field is the number ``value * scale`` (``abs`` of it with `absolute`),
    formatted by the template (``{speed_kmh:.0f}``). With `words`, ``np.digitize(value, bins)``
    of that number picks one of them: ``bins=[0.5], words=[off, on]`` reads a boolean column.
    """

    name: str
    column: str
    scale: float = 1.0
    absolute: bool = False
    bins: list[float] = []
    words: list[str] = []

    @model_validator(mode="after")
    def _words_match_bins(self) -> PromptField:
        if self.words and len(self.words) != len(self.bins) + 1:
            raise ValueError(f"a prompt field on '{self.column}' needs len(words) == len(bins) + 1 "
                             f"(got {len(self.words)} words, {len(self.bins)} bins)")
        if not self.words and self.bins:
            raise ValueError(f"a prompt field on '{self.column}' has bins but no words")
        if self.bins != sorted(self.bins):
            raise ValueError(f"a prompt field on '{self.column}' needs increasing bins")
        return self


class PromptConfig(StrictModel):
    # Python format string; names are telemetry columns (raw values) or `fields` below.
    # None: a generic "name: value" list of every telemetry column.
    template: str | None = None
    # A list, not a mapping, so that the config loader checks each field's keys.
    fields: list[PromptField] = []
    # Text written before each frame; may use {offset_s} (dataset.frame_offsets_s) and {index}.
    image_caption: str | None = "Camera frame at t{offset_s:+.1f} s:"
    # None: the chat template's own system prompt.
    system: str | None = None
    # Append the assistant turn opener, so the last token is where the model starts answering.
    add_generation_prompt: bool = True
    missing: str = "unknown"  # written for a missing value, whatever the field's format

    @model_validator(mode="after")
    def _unique_field_names(self) -> PromptConfig:
        names = [f.name for f in self.fields]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"vlm.prompt.fields repeats the name(s) {duplicated}")
        return self


class VLMConfig(StrictModel):
    enabled: bool = False  # stage 1 fuses the cached features when true
    # A local folder, or a hub ID: downloaded into the Hugging Face cache on first use (offline,
    # HF_HUB_OFFLINE=1: read from the cache only).
    model: str = "Qwen/Qwen2-VL-2B-Instruct"
    hf_cache_dir: str | None = None  # None: the default HF cache (HF_HOME / HF_HUB_CACHE)
    prompt: PromptConfig = PromptConfig()
    # Image resize bounds of the processor, in pixels (None: the processor's own).
    min_pixels: int | None = None
    max_pixels: int | None = None
    # -1: the final hidden state (after the last norm); k >= 0: output of hidden_states[k].
    hidden_layer: int = -1
    splits: list[Literal["train", "test"]] = ["train", "test"]
    batch_size: int = 8
    chunk_rows: int = 512  # rows per cache chunk: the unit of resumption
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    attn_implementation: str | None = None  # e.g. sdpa, flash_attention_2 (None: default)
    threads: int | None = None  # torch CPU threads (None: torch's default)
    progress: bool = True

    @model_validator(mode="after")
    def _check(self) -> VLMConfig:
        if self.batch_size < 1 or self.chunk_rows < 1:
            raise ValueError("vlm.batch_size and vlm.chunk_rows must be >= 1")
        if not self.splits:
            raise ValueError("vlm.splits is empty")
        return self
