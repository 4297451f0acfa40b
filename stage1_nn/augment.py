"""Augmentations: the label-consistent horizontal flip (spec-driven) and per-row photometric and
small geometric transforms (noise, blur, brightness/contrast, cutout, shift-scale).

The flip acts on a whole sequence at once (every row of a scene), so the BiLSTM never sees a
scene whose rows disagree about left and right. Photometric transforms draw their parameters
once per row and apply them to every frame of that row (albumentations `additional_targets`),
so the frames stay consistent with each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np

from trajstack.spec import DatasetSpec

from .config import AugmentConfig


@dataclass
class FlipRules:
    """Index form of `dataset.flip`: which telemetry columns to negate or swap, target signs.

    `swap_light_classes` is not used here: stage 1 does not read the traffic-light files.
    """

    negate: np.ndarray  # telemetry column indices
    swap: list[tuple[int, int]]
    target_sign: np.ndarray  # (n_targets,)

    @classmethod
    def from_spec(cls, spec: DatasetSpec) -> FlipRules:
        cols = spec.telemetry_columns
        negate = np.array([cols.index(c) for c in spec.flip.negate_columns], dtype=int)
        swap = [(cols.index(a), cols.index(b)) for a, b in spec.flip.swap_columns]
        return cls(negate, swap, np.asarray(spec.flip_target_sign, dtype=np.float32))

    def __call__(self, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A flipped copy of a raw sample: images (T, F, H, W, C), telemetry and next-row
        telemetry (T, n), targets and baseline (T, m)."""
        out = dict(sample)
        out["images"] = sample["images"][..., ::-1, :]  # mirror the width axis
        for key in ("telemetry", "next_telemetry"):  # the next row's telemetry mirrors like the row's
            if key not in sample:
                continue
            tele = sample[key].copy()
            tele[:, self.negate] = -tele[:, self.negate]
            for a, b in self.swap:
                tele[:, [a, b]] = tele[:, [b, a]]
            out[key] = tele
        for key in ("targets", "baseline"):  # the physics baseline mirrors like the targets
            if key in sample:
                out[key] = sample[key] * self.target_sign
        return out


class PhotometricAugment:
    """Gaussian noise, blur or motion blur, brightness/contrast, cutout, a small shift-scale; one
    draw per row, applied identically to all its frames.

    Parameters
    ----------
    cfg : the `stage1.augment` section.
    n_frames : frames per row (each becomes an albumentations target sharing the parameters).
    seed : seed of albumentations' own generators.
    """

    def __init__(self, cfg: AugmentConfig, n_frames: int, seed: int = 0):
        limit = max(3, cfg.blur_limit | 1)  # kernel sizes must be odd
        transforms = [
            A.GaussNoise(std_range=tuple(cfg.noise_std), p=cfg.noise_p),
            A.OneOf([A.Blur(blur_limit=(3, limit)), A.MotionBlur(blur_limit=(3, limit))], p=cfg.blur_p),
            A.RandomBrightnessContrast(brightness_limit=cfg.brightness_limit,
                                       contrast_limit=cfg.contrast_limit, p=cfg.brightness_p),
            A.CoarseDropout(num_holes_range=(1, cfg.cutout_holes),
                            hole_height_range=(0.05, max(0.05, cfg.cutout_size)),
                            hole_width_range=(0.05, max(0.05, cfg.cutout_size)), fill=0, p=cfg.cutout_p),
            A.Affine(translate_px=(-cfg.shift_px, cfg.shift_px),
                     scale=(1 - cfg.scale_limit, 1 + cfg.scale_limit), rotate=0.0,
                     border_mode=cv2.BORDER_REPLICATE, p=cfg.shift_scale_p),
        ]
        self.keys = ["image"] + [f"image{i}" for i in range(1, n_frames)]
        self.transform = A.Compose(transforms, additional_targets={k: "image" for k in self.keys[1:]},
                                   seed=seed)

    @staticmethod
    def wanted(cfg: AugmentConfig) -> bool:
        return max(cfg.noise_p, cfg.blur_p, cfg.brightness_p, cfg.cutout_p, cfg.shift_scale_p) > 0

    def random_state(self) -> list[dict[str, Any]]:
        """The numpy and Python generator states of the pipeline and each transform in it
        (albumentations gives every transform its own pair), for a resumed fold."""
        return [{"numpy": owner.random_generator.bit_generator.state, "python": owner.py_random.getstate()}
                for owner in self._random_owners()]

    def set_random_state(self, states: list[dict[str, Any]]) -> None:
        """Put `random_state` back, in place: the transforms keep their generator objects."""
        owners = self._random_owners()
        if len(owners) != len(states):
            raise ValueError(f"resume: {len(states)} saved augmentation states for {len(owners)} transforms")
        for owner, state in zip(owners, states, strict=True):
            owner.random_generator.bit_generator.state = state["numpy"]
            owner.py_random.setstate(state["python"])

    def _random_owners(self) -> list[Any]:
        owners, pending = [], [self.transform]
        while pending:
            owner = pending.pop(0)
            owners.append(owner)
            pending.extend(getattr(owner, "transforms", []))
        return owners

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """frames (F, H, W, C) uint8 -> augmented copy, same shape."""
        result = self.transform(**{k: np.ascontiguousarray(f) for k, f in zip(self.keys, frames, strict=True)})
        return np.stack([result[k] for k in self.keys])
