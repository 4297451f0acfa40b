"""Find or download Qwen2-VL, load it, and embed rows: `VLMRunner.embed`.

`vlm.model` is a local folder, or a Hugging Face repo id (`Qwen/Qwen2-VL-2B-Instruct`) that the
hub's `snapshot_download` fetches into its cache (the download and cache `from_pretrained`
uses; a cached snapshot is reused). Offline (`HF_HUB_OFFLINE=1`) only the cache is read; when
it lacks the model, `VLMModelNotFoundError` says how to get it. transformers is imported
lazily (the `vlm` extra).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trajstack.errors import TrajstackError
from trajstack.hub import hub_offline
from trajstack.io import data_hash

from .config import VLMConfig

WEIGHT_SUFFIXES = (".safetensors", ".bin")


class VLMModelNotFoundError(TrajstackError, FileNotFoundError):
    """The configured VLM is neither a local folder nor in the local Hugging Face cache."""


def _not_found(model: str, where: str) -> VLMModelNotFoundError:
    name = model if "/" in model and not Path(model).is_absolute() else "Qwen/Qwen2-VL-2B-Instruct"
    folder = name.split("/")[-1]
    return VLMModelNotFoundError(
        f"VLM model '{model}' not found: {where}. With internet, `vlm.model={name}` downloads it "
        f"(unset HF_HUB_OFFLINE). Offline: on a machine with internet run "
        f"`hf download {name} --local-dir /path/to/{folder}` (or `huggingface-cli download ...`), "
        f"copy that folder here and pass `vlm.model=/path/to/{folder}` (or copy the Hugging Face "
        f"cache and set vlm.hf_cache_dir)."
    )


def resolve_model_dir(cfg: VLMConfig, download: bool = True) -> Path:
    """The local folder holding `cfg.model`: the path itself, or its hub snapshot (downloaded
    into the Hugging Face cache unless it is there already, the hub is offline or `download`
    is False).

    Raises
    ------
    VLMModelNotFoundError : not a folder, and the hub can neither serve it from the cache nor
        download it (offline, no network, unknown repo); the message says how to get it.
    """
    path = Path(cfg.model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise _not_found(cfg.model, f"folder {path} has no config.json")
        return path
    if path.is_absolute() or cfg.model.startswith((".", "~")) or cfg.model.count("/") != 1:
        raise _not_found(cfg.model, f"no folder {path}")
    import huggingface_hub
    from huggingface_hub.errors import HFValidationError

    offline = hub_offline() or not download
    try:
        snapshot = Path(huggingface_hub.snapshot_download(cfg.model, cache_dir=cfg.hf_cache_dir,
                                                          local_files_only=offline))
    except (HFValidationError, OSError) as err:  # the hub's lookup and download errors
        where = cfg.hf_cache_dir or "the default Hugging Face cache"
        why = ("HF_HUB_OFFLINE=1 forbids downloading it" if hub_offline()
               else "it was not to be downloaded here" if not download
               else f"the download failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
        raise _not_found(cfg.model, f"not a folder, not in {where}, and {why}") from None
    if not (snapshot / "config.json").is_file():
        raise _not_found(cfg.model, f"the cached snapshot {snapshot} has no config.json")
    return snapshot


def model_fingerprint(model_dir: Path) -> str:
    """Hash of config.json and the weight files' names and sizes: tells two models apart cheaply."""
    config = json.loads((model_dir / "config.json").read_text())
    weights = sorted((p.name, p.stat().st_size) for p in model_dir.iterdir()
                     if p.name.endswith(WEIGHT_SUFFIXES))
    return data_hash({"config": config, "weights": weights})


def pick_device_dtype(cfg: VLMConfig) -> tuple[Any, Any]:
    """(torch device, dtype): bf16 on GPU and fp32 on CPU unless `vlm.precision` says otherwise."""
    import torch

    from trajstack.config import ConfigError

    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("vlm.device=cuda but no CUDA device is visible; use vlm.device=auto or cpu")
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu")
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return device, {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


@dataclass
class VLMRunner:
    """A loaded Qwen2-VL and its processor; `embed` gives one vector per row.

    Parameters
    ----------
    model : a `Qwen2VLForConditionalGeneration` (or anything with `.model` returning hidden states).
    processor : the matching `Qwen2VLProcessor` (chat template, tokenizer, image processor).
    device, dtype : where and in which precision the forward pass runs.
    hidden_layer : -1 for the final hidden state, else an index into ``hidden_states``.
    add_generation_prompt : end each prompt with the assistant turn opener.
    """

    model: Any
    processor: Any
    device: Any
    dtype: Any
    hidden_layer: int = -1
    add_generation_prompt: bool = True

    @classmethod
    def from_pretrained(cls, model_dir: Path, cfg: VLMConfig) -> VLMRunner:
        """Load model and processor from a local folder (``local_files_only=True``)."""
        try:
            from transformers import AutoProcessor, Qwen2VLForConditionalGeneration
        except ImportError as err:
            from trajstack.config import ConfigError

            raise ConfigError("vlm features need the vlm extra (transformers): "
                              "pip install -e '.[vlm]', or `make vlm`, which installs it") from err

        device, dtype = pick_device_dtype(cfg)
        extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
        model = Qwen2VLForConditionalGeneration.from_pretrained(
            model_dir, dtype=dtype, local_files_only=True, **extra).to(device).eval()
        processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        processor.tokenizer.padding_side = "right"  # causal: padding after a row cannot change it
        set_pixel_bounds(processor, cfg.min_pixels, cfg.max_pixels)
        return cls(model, processor, device, dtype, cfg.hidden_layer, cfg.prompt.add_generation_prompt)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.text_config.hidden_size)

    def chat_texts(self, messages: list[list[dict[str, Any]]]) -> list[str]:
        return [self.processor.apply_chat_template(m, tokenize=False,
                                                   add_generation_prompt=self.add_generation_prompt)
                for m in messages]

    def embed(self, messages: list[list[dict[str, Any]]], images: list[list[Any]]) -> np.ndarray:
        """Hidden state of the last prompt token of each row, float32 (rows, hidden).

        Parameters
        ----------
        messages : chat messages per row, one ``{"type": "image"}`` entry per frame.
        images : the frames of each row in time order (PIL images or HWC uint8 arrays).
        """
        import torch

        inputs = self.processor(text=self.chat_texts(messages), images=images, return_tensors="pt",
                                padding=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            # The decoder body only: the LM head's 150k-way logits would be wasted work.
            out = self.model.model(**inputs, use_cache=False,
                                   output_hidden_states=self.hidden_layer != -1)
        hidden = out.last_hidden_state if self.hidden_layer == -1 else out.hidden_states[self.hidden_layer]
        mask = inputs["attention_mask"]
        # Index of each row's last real token, whichever side the padding is on.
        last = mask.shape[1] - 1 - mask.flip(1).argmax(1)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        return hidden[rows, last].float().cpu().numpy()


def set_pixel_bounds(processor: Any, min_pixels: int | None, max_pixels: int | None) -> None:
    """Resize bounds of the image processor, set on it once (per-call bounds are deprecated)."""
    if min_pixels is None and max_pixels is None:
        return
    size = processor.image_processor.size
    processor.image_processor.size = {
        "shortest_edge": min_pixels if min_pixels is not None else size.shortest_edge,
        "longest_edge": max_pixels if max_pixels is not None else size.longest_edge,
    }
