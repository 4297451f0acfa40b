"""Config section for the stage 1 network (issue 5). Pure pydantic: importing it must stay cheap (no torch).

Every technique of the recipe is a switch here, so an ablation is a list of `key=value`
overrides (e.g. `stage1.mode=row stage1.model.telemetry.enabled=false`), never a code copy.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trajstack.spec import StrictModel


class TelemetryInputConfig(StrictModel):
    # Telemetry projector: Linear -> [BatchNorm] -> GELU.
    enabled: bool = True
    width: int = 256
    batchnorm: bool = False


class VlmInputConfig(StrictModel):
    # Projector of an extra per-row vector: Linear -> ReLU -> Dropout. The vector is the cached
    # Qwen2-VL features when the top-level `vlm.enabled` is true, else the parquet `features`
    # (ID + one float column per feature, train and test IDs) when set; no vector: no projector.
    features: str | None = None
    width: int = 128
    dropout: float = 0.1


class LstmConfig(StrictModel):
    # BiLSTM over the rows of a scene; off means every row is predicted on its own.
    enabled: bool = True
    hidden: int = 128
    layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.0


class ModelConfig(StrictModel):
    backbone: str = "convnext_tiny"  # any timm model name
    pretrained: bool = False
    # Weights file for `pretrained: true` (.safetensors / .pth; no network needed). None: timm's
    # own source, downloaded through the Hugging Face hub into its cache as timm users expect;
    # offline (HF_HUB_OFFLINE=1) and not cached is an error saying how to get them.
    pretrained_file: str | None = None
    drop_path_rate: float = 0.0
    # Extra keyword arguments for timm.create_model (e.g. dims/depths of a custom ConvNeXt).
    backbone_kwargs: dict[str, Any] = {}
    # Stem surgery for small frames: divide the stride of the backbone's first convolution by
    # this (2: a 64x128 frame keeps twice the resolution in every stage, about 4x the compute).
    # Pretrained weights still load: only the stride changes, not the kernel.
    stem_stride_divisor: int = Field(1, ge=1)
    # Pixel normalisation: imagenet (the backbone's pretrained statistics, ImageNet's for most
    # timm models), dataset (per frame-channel mean/std of the fold's training rows only, saved
    # with the weights) or sequence (each row's own frames: per-colour mean/std over its frames).
    pixel_norm: Literal["imagenet", "dataset", "sequence"] = "imagenet"
    # positions: the main head predicts each horizon's position. displacements: it predicts the
    # step between consecutive horizons (the first from the origin) and the positions are their
    # running sum.
    output: Literal["positions", "displacements"] = "positions"
    # Input planes made inside the model beside the frames' channels (so flips, TTA and the
    # image cache need no change). `coord_channels`: each pixel's row and column in [-1, 1]
    # (CoordConv, Liu et al. 2018), so the net knows where in the frame an edge lies: the
    # horizon's row says the camera's pitch, hence the road's grade. `frame_diffs`: each frame
    # minus the one before it (normalised units), the motion between frames made explicit.
    coord_channels: bool = False
    frame_diffs: bool = False
    telemetry: TelemetryInputConfig = TelemetryInputConfig()
    vlm: VlmInputConfig = VlmInputConfig()
    lstm: LstmConfig = LstmConfig()
    head_dropout: float = 0.0


class LossConfig(StrictModel):
    # L1 on the main head (the metric is MAE); SmoothL1 on the velocity/acceleration head.
    aux: bool = True
    aux_weight: float = 0.2
    aux_beta: float = 1.0
    # Scale targets by their training-fold mean/std inside the model (outputs stay in metres).
    normalize_targets: bool = False
    # Weight of each named axis's main-head terms (unnamed axes: 1), e.g. {z: 2.0}: more of the
    # gradient for an axis only the frames can tell.
    axis_weights: dict[str, float] = {}
    # Mean |third divided difference| of the predicted path per axis (m/s^3): 0 on any
    # constant-acceleration path, so it penalises only jerky, physically implausible ones.
    jerk_weight: float = Field(0.0, ge=0)
    # Aux head for the next row of the scene's telemetry (float and bool columns, encoded as
    # the inputs are); rows with no next row, or a missing value, are left out. 0: no head.
    next_telemetry_weight: float = Field(0.0, ge=0)


class SamConfig(StrictModel):
    # Sharpness-aware minimisation (Foret et al. 2021) around a base optimiser key.
    base: str = "adamw"
    rho: float = Field(0.05, gt=0)  # radius of the weight perturbation
    adaptive: bool = False  # ASAM: the radius scales with each weight's magnitude


class MuonConfig(StrictModel):
    # Muon (Jordan et al. 2024) on the 2-D weights; the rest of the net stays with AdamW.
    ns_steps: int = Field(5, ge=1, lt=100)  # Newton-Schulz iterations of the orthogonalisation
    # Precision of Newton-Schulz. torch.optim.Muon hard-codes bfloat16, ~20x slower than float32
    # on CPUs without bf16 matrix units (here 0.21 s vs 0.010 s for a 512x128 matrix).
    # auto: float32 on CPU, bfloat16 on GPUs.
    ns_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # How each matrix's lr is scaled (torch's adjust_lr_fn). match_rms_adamw gives the update the
    # RMS of an AdamW update (0.2 * sqrt(max dim)), so the AdamW learning rates of the groups carry
    # over; original (sqrt(max(1, rows / cols))) needs lr ~10-30x the AdamW one.
    adjust_lr: Literal["match_rms_adamw", "original"] = "match_rms_adamw"


class OptimConfig(StrictModel):
    # Optimiser key of `stage1_nn.optim.OPTIMIZERS`: adamw | sgd | sam | muon.
    name: str = "adamw"
    lr: float = 1e-3  # telemetry, LSTM, heads
    backbone_lr: float = 2e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)  # adamw (and sam around adamw)
    eps: float = 1e-8
    momentum: float | None = None  # sgd (nesterov) and muon; None: 0.9 for sgd, 0.95 for muon
    sam: SamConfig = SamConfig()
    muon: MuonConfig = MuonConfig()
    # Schedule key of `stage1_nn.optim.SCHEDULES`: cosine (warmup + cosine) | hold (warmup,
    # hold at the peak, linear cool-down over the last `cooldown_fraction` of the steps).
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    cooldown_fraction: float = Field(0.2, ge=0, le=1)
    min_lr_ratio: float = 0.01  # the schedule ends at lr * min_lr_ratio
    grad_clip: float = 1.0  # max grad norm; 0 disables clipping


class EmaConfig(StrictModel):
    # timm ModelEmaV3; the EMA weights are the ones evaluated and saved.
    enabled: bool = True
    decay: float = 0.999
    warmup: bool = True  # ramp the decay up from 0: needed for short runs


class AugmentConfig(StrictModel):
    # Label-consistent horizontal flip of a whole sequence (dataset.flip rules).
    flip_p: float = 0.5
    # Photometric (albumentations), the same parameters for every frame of a row.
    noise_p: float = 0.0
    noise_std: tuple[float, float] = (0.02, 0.08)  # fraction of the pixel range
    blur_p: float = 0.0  # Blur or MotionBlur, one of the two
    blur_limit: int = 5
    brightness_p: float = 0.0
    brightness_limit: float = 0.2
    contrast_limit: float = 0.2
    # Geometric, still one draw per row for all its frames: coarse dropout (cutout) of
    # `cutout_holes` (max) rectangles of `cutout_size` (fraction of each side, max), and a small
    # shift of up to `shift_px` pixels with scale 1 +- `scale_limit`, no rotation. A shift moves
    # the horizon as a pitch would: keep it to a few pixels.
    cutout_p: float = 0.0
    cutout_holes: int = Field(4, ge=1)
    cutout_size: float = Field(0.15, gt=0, le=1)
    shift_scale_p: float = 0.0
    shift_px: int = Field(3, ge=0)
    scale_limit: float = Field(0.05, ge=0, lt=1)


class MixupConfig(StrictModel):
    # Mixup for regression: with probability `p` a batch is mixed with a permutation of itself
    # (scene mode: scene with scene, row k with row k; rows without a partner stay as they are)
    # by lambda ~ Beta(alpha, alpha): frames, telemetry, extra vector, physics baseline, targets
    # and aux targets, all by the same lambda. `manifold_p`: the same, but on the fused features
    # before the LSTM (the inputs stay as they are). A batch gets at most one of the two.
    p: float = Field(0.0, ge=0, le=1)
    manifold_p: float = Field(0.0, ge=0, le=1)
    alpha: float = Field(0.4, gt=0)

    @model_validator(mode="after")
    def _one_kind_per_batch(self) -> MixupConfig:
        if self.p + self.manifold_p > 1:
            raise ValueError(f"stage1.mixup.p + stage1.mixup.manifold_p = {self.p + self.manifold_p} > 1: "
                             "a batch gets at most one kind of mixup")
        return self


class Stage1Config(StrictModel):
    name: str = "convnext_bilstm"  # run folder: outputs/<exp>/stage1/<name>/
    # scene: the rows of a scene as one padded sequence; row: every row on its own.
    mode: Literal["scene", "row"] = "scene"
    frames: list[str] | None = None  # subset of dataset.frames stacked as channels (None: all)
    image_size: tuple[int, int] | None = None  # (H, W) to resize to on the device; None: native
    folds: list[int] | None = None  # train only these folds (None: all)
    epochs: int = 10
    # Sequences per step: scenes in scene mode, rows in row mode (per process under DDP).
    batch_size: int = 16
    eval_batch_size: int | None = None  # None: 2 x batch_size
    num_workers: int = 0
    # torch CPU threads per process (None: cores / processes); split among the fold workers
    threads: int | None = None
    # Folds trained at once on CPU, each in its own spawned process with `threads // N` torch
    # threads: a small net at 32x64 keeps ~1.3 of 2 cores busy on one fold (python overhead,
    # the scene LSTM), two folds at once keep both. auto: as many as the threads allow, at most
    # the folds left to train; 1 on GPU and under DDP (where N > 1 is refused).
    fold_workers: Literal["auto"] | int = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    channels_last: bool = False
    compile: bool = False  # torch.compile the backbone
    # Which epoch's weights each fold keeps; never chosen on the scored fold. last: the final
    # (EMA) weights. holdout: the epoch with the lowest MAE on `select_fraction` of the fold's
    # training scenes (seeded, scene-grouped), which the net then does not train on.
    select: Literal["last", "holdout"] = "last"
    select_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    tta_flip: bool = False  # average plain and flipped-back predictions
    # physics: the heads learn the residual to the kinematic forecast of features.physics
    # (its residual_baseline model and vehicle), which the net adds back to its outputs; the
    # net then spends its capacity on what telemetry kinematics miss (the road ahead, traffic).
    baseline: Literal["none", "physics"] = "none"
    # Axes whose (residual) targets the heads learn per metre travelled, as stage2.per_metre_axes
    # does (`trajstack.physics.per_metre_scale`: z is the road's grade times the distance
    # driven); the outputs are multiplied back, so predictions stay in metres.
    per_metre_axes: list[str] = []
    progress: bool = True
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    ema: EmaConfig = EmaConfig()
    augment: AugmentConfig = AugmentConfig()
    mixup: MixupConfig = MixupConfig()
    seed_offset: int = Field(0, description="added to the global seed (bagging)")

    @field_validator("select", mode="before")
    @classmethod
    def _no_best(cls, value: Any) -> Any:
        if value == "best":
            raise ValueError("select=best chose the epoch on the scored fold, which made the OOF "
                             "score optimistic; use select=last (the final EMA weights) or "
                             "select=holdout (an inner holdout of training scenes)")
        return value

    @model_validator(mode="after")
    def _check(self) -> Stage1Config:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("stage1.epochs and stage1.batch_size must be >= 1")
        if self.folds is not None and not self.folds:
            raise ValueError("stage1.folds is empty; use null for all folds")
        if self.fold_workers != "auto" and self.fold_workers < 1:
            raise ValueError(f"stage1.fold_workers={self.fold_workers}: use auto or a number >= 1")
        return self
