"""A tiny, randomly initialised Qwen2-VL with its own tokenizer and processor, built offline.

For smoke tests and the CPU benchmark: the real extractor runs on it unchanged, since it is a
genuine `Qwen2VLForConditionalGeneration` with the special tokens, chat template and image
processor of the real checkpoint, only small. `full_arch=True` gives the published
Qwen2-VL-2B sizes (same compute as the real model, random weights) for a GPU benchmark.
Nothing here downloads anything.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

# The special tokens Qwen2-VL's processor and model look for.
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
]

# Qwen2-VL-Instruct's chat template (images and videos as pad tokens between vision markers).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2-VL-2B-Instruct's published config numbers (config.json of the checkpoint).
QWEN2_VL_2B_TEXT = dict(
    vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
    num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
    rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                        "mrope_section": [16, 24, 24]},
    tie_word_embeddings=True,
)
QWEN2_VL_2B_VISION = dict(
    depth=32, embed_dim=1280, hidden_size=1536, mlp_ratio=4, num_heads=16, in_channels=3,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, hidden_act="quick_gelu",
)


def tiny_sizes(hidden_size: int = 64, layers: int = 2, vision_depth: int = 1,
               vision_embed_dim: int = 32) -> tuple[dict[str, Any], dict[str, Any]]:
    """(text, vision) config numbers of a tiny model; mrope sections sum to head_dim / 2."""
    heads = 2
    half = hidden_size // heads // 2
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=1, max_position_embeddings=4096,
                rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope})
    vision = dict(depth=vision_depth, embed_dim=vision_embed_dim, hidden_size=hidden_size,
                  mlp_ratio=2, num_heads=2, in_channels=3, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, hidden_act="quick_gelu")
    return text, vision


def build_tokenizer(texts: Iterable[str] = ()) -> Any:
    """A word-level fast tokenizer over the words of `texts`, single characters and the specials.

    Digits are split one by one and spaces dropped, as Qwen2's BPE roughly does for such text,
    so a prompt costs about as many tokens as with the real tokenizer.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                   pre_tokenizers.Digits(individual_digits=True)])
    words: set[str] = set(string.ascii_letters + string.digits + string.punctuation)
    for text in [CHAT_TEMPLATE, "system user assistant", *texts]:
        for special in SPECIAL_TOKENS:
            text = text.replace(special, " ")
        words.update(piece for piece, _ in pre.pre_tokenize_str(text))
    vocab = {token: i for i, token in enumerate([*SPECIAL_TOKENS, "[UNK]", *sorted(words)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre
    core.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="[UNK]", pad_token="<|endoftext|>",
        eos_token="<|im_end|>", padding_side="right",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
    )


def build_processor(tokenizer: Any, min_pixels: int | None = None,
                    max_pixels: int | None = None) -> Any:
    """Qwen2VLProcessor: the real image processor (patch 14, merge 2) and chat template."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
    # The processor insists on a video processor even though only images are used.
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels), tokenizer=tokenizer,
                            video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)


def build_model(tokenizer: Any, full_arch: bool = False, seed: int = 0, dtype: Any = None,
                device: Any = None, **sizes: Any) -> Any:
    """A randomly initialised Qwen2VLForConditionalGeneration whose token IDs match `tokenizer`.

    Parameters
    ----------
    tokenizer : from `build_tokenizer`; its special-token IDs go into the model config.
    full_arch : the published Qwen2-VL-2B sizes instead of tiny ones.
    seed : torch seed of the random initialisation.
    dtype, device : create the weights directly in this dtype on this device (the 2B model
        would take 9 GB and a minute as fp32 on the CPU first).
    sizes : keyword arguments of `tiny_sizes` (ignored with `full_arch`).
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text, vision = (dict(QWEN2_VL_2B_TEXT), dict(QWEN2_VL_2B_VISION)) if full_arch else tiny_sizes(**sizes)
    if not full_arch:
        text["vocab_size"] = len(tokenizer)
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in (
        ("image_token_id", "<|image_pad|>"), ("video_token_id", "<|video_pad|>"),
        ("vision_start_token_id", "<|vision_start|>"), ("vision_end_token_id", "<|vision_end|>"))}
    text.update(bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                pad_token_id=tokenizer.pad_token_id)
    config = Qwen2VLConfig(text_config=text, vision_config=vision,
                           tie_word_embeddings=bool(text.pop("tie_word_embeddings", False)), **ids)
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    try:
        if dtype is not None:
            torch.set_default_dtype(dtype)
        with torch.device(device or "cpu"):
            return Qwen2VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)


def save_tiny_qwen2_vl(out_dir: str | Path, texts: Iterable[str] = (), seed: int = 0,
                       min_pixels: int | None = None, max_pixels: int | None = None,
                       **sizes: Any) -> Path:
    """Build a tiny Qwen2-VL + processor and save both to `out_dir` (loadable offline).

    Parameters
    ----------
    out_dir : folder to write (`from_pretrained(out_dir, local_files_only=True)` reads it).
    texts : texts whose words get their own token (e.g. the prompt template); others map to UNK.
    seed : initialisation seed: two seeds give two different "models" of the same shape.
    min_pixels, max_pixels : image processor resize bounds.
    sizes : `tiny_sizes` keywords (hidden_size, layers, vision_depth, vision_embed_dim).

    Returns
    -------
    The folder, for ``vlm.model=<folder>``.
    """
    out = Path(out_dir)
    tokenizer = build_tokenizer(texts)
    build_model(tokenizer, seed=seed, **sizes).save_pretrained(out)
    build_processor(tokenizer, min_pixels, max_pixels).save_pretrained(out)
    return out


def prompt_texts(vlm_cfg: Any) -> list[str]:
    """The fixed words of a VLMConfig's prompt (template, captions, field words) for the vocab."""
    prompt = vlm_cfg.prompt
    texts = [prompt.template or "", prompt.image_caption or "", prompt.system or "", prompt.missing]
    texts += [word for field in prompt.fields for word in field.words]
    return [re.sub(r"\{[^}]*\}", " ", t) for t in texts]
