"""Hugging Face hub settings shared by the stages that fetch weights (stage-1 backbone, VLM)."""

from __future__ import annotations

import os


def hub_offline() -> bool:
    """Whether the Hugging Face hub is told not to use the network (`HF_HUB_OFFLINE=1`).

    Read from the environment at call time as well as from the hub's constant (which the hub
    reads once, at import).
    """
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(constants.HF_HUB_OFFLINE) or flag.strip().upper() in {"1", "ON", "YES", "TRUE"}
