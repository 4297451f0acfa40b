"""A fold's training state after each epoch, so that a killed run resumes at its last finished
epoch instead of retraining the fold from scratch (a full-scale CPU epoch is several minutes).

`fold<k>/resume.pt` holds the net, its EMA, the optimiser, the schedule, the epoch history, the
epoch choice and every random generator the next epoch draws from; it is written atomically
after each epoch but the last and removed once the fold is done. A file of another run
signature (the config or inputs changed) is ignored: the fold starts over.

Each rank keeps its own generators. With `stage1.num_workers: 0` a resumed fold is bitwise the
uninterrupted one; with loader workers the resumed epochs' augmentation draws differ from the
ones an unbroken run would have made (the workers start anew): as valid, not the same bits. A
file saved with another number of processes or steps per epoch is not resumed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from trajstack.io import atomic_path

from .model import cpu_state_dict

if TYPE_CHECKING:
    from .train import FoldModel

RESUME_FILE = "resume.pt"


@dataclass
class EpochState:
    """What a fold's loop carries from one epoch to the next (beyond the net's own state).

    epoch : the last finished epoch (0: nothing trained yet).
    step : optimiser steps taken so far (the EMA warmup and the schedule read it).
    history : one metrics record per finished epoch, as `metrics.jsonl` holds them.
    choice : `EpochChoice`'s kept epoch, score and weights (None weights under `last`).
    """

    epoch: int = 0
    step: int = 0
    history: list[dict] = field(default_factory=list)
    choice: dict[str, Any] = field(default_factory=dict)


def save_epoch_state(path: Path, signature: str, state: EpochState, fm: FoldModel,
                     randoms: list[dict[str, Any]], world: int) -> None:
    """Write the fold's state after `state.epoch` (atomically: a kill mid-write keeps the last one).

    `randoms` are every rank's `random_state`, in rank order (`gather` them on all ranks first).
    """
    payload = {
        "signature": signature, "epoch": state.epoch, "step": state.step,
        "history": json.loads(json.dumps(state.history, default=float)),  # plain floats: a weights-only load
        "choice": state.choice, "model": cpu_state_dict(fm.model),
        "ema": cpu_state_dict(fm.ema.module) if fm.ema is not None else None,
        "optimizer": fm.optimizer.state_dict(), "scheduler": fm.scheduler.state_dict(),
        "random": randoms, "layout": _layout(fm, world),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_epoch_state(path: Path, signature: str, fm: FoldModel, rank: int, world: int
                     ) -> tuple[EpochState | None, str]:
    """Restore a saved fold state into the freshly built `fm` (this rank's generators); the state,
    or None with the reason there is none to resume (no file, another run signature, another
    number of processes or steps per epoch, whose schedule would not fit the saved step)."""
    if not path.exists():
        return None, "no saved epoch"
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("signature") != signature:
        return None, f"{path.name} is of another run signature"
    if payload["layout"] != _layout(fm, world):
        return None, f"{path.name} was saved with {payload['layout']}, this run has {_layout(fm, world)}"
    fm.model.load_state_dict(payload["model"])
    if fm.ema is not None:
        fm.ema.module.load_state_dict(payload["ema"])
    fm.optimizer.load_state_dict(payload["optimizer"])
    fm.scheduler.load_state_dict(payload["scheduler"])
    set_random_state(fm.train_loader, payload["random"][rank])
    state = EpochState(epoch=payload["epoch"], step=payload["step"], history=payload["history"],
                       choice=payload["choice"])
    return state, f"resuming after epoch {state.epoch}"


def random_state(loader: DataLoader) -> dict[str, Any]:
    """Every generator the next epoch draws from: the global ones (torch, CUDA, numpy, Python),
    the loader's shuffling generator (`make_loader` always gives one) and the `SequenceDataset`'s
    flip and photometric generators."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,  # this rank's device
        "numpy": _numpy_legacy_state(np.random.get_state()),
        "python": random.getstate(),
        "loader": loader.generator.get_state(),
        "dataset": loader.dataset.random_state(),
    }


def set_random_state(loader: DataLoader, state: dict[str, Any]) -> None:
    """Put back what `random_state` took (CUDA's only where this rank has a GPU)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    loader.generator.set_state(state["loader"])
    loader.dataset.set_random_state(state["dataset"])


def _layout(fm: FoldModel, world: int) -> dict[str, int]:
    # the schedule and the EMA warmup count steps: a resume must take as many a epoch
    return {"processes": world, "steps_per_epoch": len(fm.train_loader)}


def _numpy_legacy_state(state: tuple) -> tuple:
    # the key is an ndarray, which a weights-only load refuses: store it as a tensor
    kind, key, pos, has_gauss, gauss = state
    return kind, torch.from_numpy(np.asarray(key, dtype=np.int64)), int(pos), int(has_gauss), float(gauss)
