"""The stage-1 network: timm backbone on stacked frames + telemetry (+ extra vector) -> BiLSTM -> heads.

Inputs come as padded sequences (batch, time, ...) with a mask; the backbone and projectors
run only on real rows, the LSTM on the packed sequences, and every output is flat over the real
rows in mask order: (n_rows, ...). Outputs are in target units; optional per-target scaling
lives in buffers, so a checkpoint carries it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from trajstack.errors import TrajstackError
from trajstack.hub import hub_offline
from trajstack.io import atomic_path

from .config import ModelConfig
from .mixup import MixPlan


@dataclass
class ModelDims:
    """Sizes the data decides (not the config): saved in the checkpoint to rebuild the net."""

    n_frames: int
    channels: int
    n_telemetry: int
    n_extra: int
    n_targets: int
    n_aux: int
    aux_head: bool
    image_size: tuple[int, int] | None = None
    n_axes: int = 1  # targets are horizon-major over this many axes (the displacement output sums per axis)
    n_next: int = 0  # next-row telemetry values the aux head predicts (0: no such head)


class PretrainedWeightsError(TrajstackError, FileNotFoundError):
    """The backbone's pretrained weights cannot be had here; the message says what to do."""


def cached_pretrained_file(backbone: str) -> str | None:
    """The weights file timm would fetch for `backbone`, when the local Hugging Face cache holds it."""
    from huggingface_hub import try_to_load_from_cache

    repo = getattr(timm.models.get_pretrained_cfg(backbone), "hf_hub_id", None)
    for filename in ("model.safetensors", "pytorch_model.bin") if repo else ():
        cached = try_to_load_from_cache(repo, filename)
        if isinstance(cached, str):
            return cached
    return None


def _how_to_get(backbone: str) -> str:
    return (f"on a machine with internet run `python -c \"import timm; timm.create_model('{backbone}', "
            f"pretrained=True)\"` and copy its Hugging Face cache (HF_HOME) here, or set "
            f"stage1.model.pretrained_file=PATH to a weights file, or stage1.model.pretrained=false")


def pretrained_overlay(cfg: ModelConfig) -> dict[str, str] | None:
    """Where timm takes the backbone's weights from: a local file, or its own source.

    `stage1.model.pretrained_file` wins and needs no network. Otherwise timm downloads as usual
    (the Hugging Face hub, into its cache; read from there once cached). Offline
    (`HF_HUB_OFFLINE=1`) and not cached: a `PretrainedWeightsError` before any attempt.
    """
    if not cfg.pretrained:
        return None
    if cfg.pretrained_file:
        if not Path(cfg.pretrained_file).is_file():
            raise PretrainedWeightsError(
                f"stage1.model.pretrained_file={cfg.pretrained_file} does not exist; "
                f"point it at the backbone's weights (.safetensors / .pth)")
        return {"file": cfg.pretrained_file}
    if hub_offline() and cached_pretrained_file(cfg.backbone) is None:
        raise PretrainedWeightsError(
            f"pretrained weights for backbone {cfg.backbone!r} are not in the local Hugging Face "
            f"cache and HF_HUB_OFFLINE=1 forbids downloading them: unset HF_HUB_OFFLINE, or "
            f"{_how_to_get(cfg.backbone)}")
    return None


def create_backbone(cfg: ModelConfig, in_chans: int) -> nn.Module:
    """`timm.create_model` for the backbone, pretrained as configured (see `pretrained_overlay`)."""
    overlay = pretrained_overlay(cfg)
    try:
        return timm.create_model(
            cfg.backbone, pretrained=cfg.pretrained, pretrained_cfg_overlay=overlay,
            in_chans=in_chans, num_classes=0, drop_path_rate=cfg.drop_path_rate,
            **cfg.backbone_kwargs,
        )
    except OSError as err:  # the hub's and urllib's download errors are OSErrors
        if not cfg.pretrained or overlay is not None:
            raise
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise PretrainedWeightsError(
            f"could not download pretrained weights for backbone {cfg.backbone!r} "
            f"({type(err).__name__}: {reason}); {_how_to_get(cfg.backbone)}") from err


def reduce_stem_stride(backbone: nn.Module, divisor: int) -> None:
    """Divide the stride of the backbone's first convolution by `divisor`, in place.

    The first `nn.Conv2d` in module order is the stem of every timm CNN (ConvNeXt's patchify
    conv, ResNet's conv1, EfficientNet's conv_stem); its kernel and weights stay as they are.
    """
    if divisor == 1:
        return
    stem = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if stem is None:
        raise ValueError("stage1.model.stem_stride_divisor: the backbone has no Conv2d stem")
    if any(s % divisor for s in stem.stride):
        raise ValueError(f"stage1.model.stem_stride_divisor={divisor} does not divide the stem's "
                         f"stride {tuple(stem.stride)}; use a divisor of it")
    stem.stride = tuple(s // divisor for s in stem.stride)
    # Pad so that the map is exactly `divisor` times larger: ceil((kernel - stride) / 2) per side
    # (ConvNeXt's 4x4 patchify conv at stride 2 needs 1; ResNet's 7x7 at stride 1 keeps its 3).
    if isinstance(stem.padding, tuple):
        stem.padding = tuple(max(p, (k - s + 1) // 2)
                             for p, k, s in zip(stem.padding, stem.kernel_size, stem.stride, strict=True))


def input_planes_count(cfg: ModelConfig, dims: ModelDims) -> int:
    """Channels of the backbone's input: frames x channels, plus the planes `cfg` adds."""
    frames = dims.channels * dims.n_frames
    diffs = dims.channels * (dims.n_frames - 1) if cfg.frame_diffs else 0
    return frames + diffs + (2 if cfg.coord_channels else 0)


def coordinate_planes(n: int, h: int, w: int, device: torch.device | None = None,
                      dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(n, 2, h, w): each pixel's row (top -1 .. bottom +1), then its column (left -1 .. right +1).

    Made after any flip of the frames, so the column plane is never mirrored: it says where a
    pixel is in the frame, not where it was before augmentation.
    """
    rows = torch.linspace(-1.0, 1.0, h, device=device, dtype=dtype).view(h, 1).expand(h, w)
    cols = torch.linspace(-1.0, 1.0, w, device=device, dtype=dtype).view(1, w).expand(h, w)
    return torch.stack([rows, cols]).expand(n, 2, h, w)


class TrajectoryNet(nn.Module):
    """Multi-frame image backbone + telemetry projector + optional extra input, fused -> LSTM -> heads.

    Parameters
    ----------
    cfg : the `stage1.model` section.
    dims : input and output sizes (`ModelDims`).
    channels_last : keep image tensors in channels-last memory format (faster convs).
    """

    def __init__(self, cfg: ModelConfig, dims: ModelDims, channels_last: bool = False):
        super().__init__()
        self.dims, self.channels_last = dims, channels_last
        self.coord_channels, self.frame_diffs = cfg.coord_channels, cfg.frame_diffs
        in_chans = dims.channels * dims.n_frames
        # timm adapts the pretrained first conv to the input planes (frames x channels + extras).
        self.backbone = create_backbone(cfg, input_planes_count(cfg, dims))
        reduce_stem_stride(self.backbone, cfg.stem_stride_divisor)
        # Normalise with the backbone's own pretrained statistics, repeated for every frame; with
        # `pixel_norm: dataset` the fold's own statistics replace them and travel in the weights.
        self.pixel_norm, self.output = cfg.pixel_norm, cfg.output
        if cfg.output == "displacements" and dims.n_targets % dims.n_axes:
            raise ValueError(f"stage1.model.output=displacements: {dims.n_targets} targets are not "
                             f"horizons x {dims.n_axes} axes")
        data_cfg = resolve_data_config({}, model=self.backbone)
        mean = torch.tensor(data_cfg["mean"] * dims.n_frames)[:in_chans] * 255.0
        std = torch.tensor(data_cfg["std"] * dims.n_frames)[:in_chans] * 255.0
        persistent = cfg.pixel_norm == "dataset"
        self.register_buffer("pixel_mean", mean.view(1, -1, 1, 1), persistent=persistent)
        self.register_buffer("pixel_std", std.view(1, -1, 1, 1), persistent=persistent)
        fused = self.backbone.num_features

        self.telemetry = None
        if cfg.telemetry.enabled:
            width = cfg.telemetry.width
            layers: list[nn.Module] = [nn.Linear(dims.n_telemetry, width)]
            if cfg.telemetry.batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.GELU())
            self.telemetry = nn.Sequential(*layers)
            fused += width

        self.extra = None
        if dims.n_extra > 0:
            self.extra = nn.Sequential(nn.Linear(dims.n_extra, cfg.vlm.width), nn.ReLU(),
                                       nn.Dropout(cfg.vlm.dropout))
            fused += cfg.vlm.width

        self.lstm = None
        if cfg.lstm.enabled:
            self.lstm = nn.LSTM(fused, cfg.lstm.hidden, num_layers=cfg.lstm.layers, batch_first=True,
                                bidirectional=cfg.lstm.bidirectional,
                                dropout=cfg.lstm.dropout if cfg.lstm.layers > 1 else 0.0)
            fused = cfg.lstm.hidden * (2 if cfg.lstm.bidirectional else 1)
        self.embedding_dim = fused
        self.dropout = nn.Dropout(cfg.head_dropout)
        self.main_head = nn.Linear(fused, dims.n_targets)
        self.aux_head = nn.Linear(fused, dims.n_aux) if dims.aux_head else None
        self.next_head = nn.Linear(fused, dims.n_next) if dims.n_next else None
        for name, n in (("main", dims.n_targets), ("aux", dims.n_aux)):
            self.register_buffer(f"{name}_shift", torch.zeros(n))
            self.register_buffer(f"{name}_scale", torch.ones(n))
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def set_target_scaling(self, main_mean, main_std, aux_mean, aux_std) -> None:
        """Heads predict standardised targets; outputs are mapped back to target units."""
        for name, value in (("main_shift", main_mean), ("main_scale", main_std),
                            ("aux_shift", aux_mean), ("aux_scale", aux_std)):
            getattr(self, name).copy_(torch.as_tensor(value, dtype=torch.float32))

    def set_pixel_statistics(self, mean, std) -> None:
        """Per stacked channel mean/std (0-255 scale) for `pixel_norm: dataset`."""
        self.pixel_mean.copy_(torch.as_tensor(mean, dtype=torch.float32).view_as(self.pixel_mean))
        self.pixel_std.copy_(torch.as_tensor(std, dtype=torch.float32).view_as(self.pixel_std))

    def input_planes(self, images: torch.Tensor) -> torch.Tensor:
        """images (n, F, H, W, C), uint8 or float on the 0-255 scale -> the backbone's input
        (n, planes, h, w): the frames' normalised channels (oldest first), then frame differences
        and coordinates if enabled."""
        n, f, h, w, c = images.shape
        x = images.permute(0, 1, 4, 2, 3).reshape(n, f * c, h, w).float()
        if self.pixel_norm == "sequence":  # each row's frames by their own per-colour mean/std
            per_colour = x.view(n, f, c, h, w)
            mean = per_colour.mean(dim=(1, 3, 4), keepdim=True)
            std = per_colour.std(dim=(1, 3, 4), keepdim=True).clamp_min(1.0)
            x = ((per_colour - mean) / std).view(n, f * c, h, w)
        else:
            x = (x - self.pixel_mean) / self.pixel_std
        if self.dims.image_size is not None and tuple(self.dims.image_size) != (h, w):
            x = F.interpolate(x, size=tuple(self.dims.image_size), mode="bilinear", align_corners=False)
        planes = [x]
        if self.frame_diffs:
            frames = x.unflatten(1, (f, c))
            planes.append((frames[:, 1:] - frames[:, :-1]).flatten(1, 2))
        if self.coord_channels:
            planes.append(coordinate_planes(n, *x.shape[-2:], x.device, x.dtype))
        x = torch.cat(planes, dim=1) if len(planes) > 1 else x
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (n, F, H, W, C), uint8 or float on the 0-255 scale -> backbone features (n, num_features)."""
        return self.backbone(self.input_planes(images))

    def forward(self, images: torch.Tensor, telemetry: torch.Tensor, mask: torch.Tensor,
                extra: torch.Tensor | None = None, baseline: torch.Tensor | None = None,
                baseline_aux: torch.Tensor | None = None, target_scale: torch.Tensor | None = None,
                mix: MixPlan | None = None) -> dict[str, torch.Tensor]:
        """Padded batch (B, T, ...) + mask (B, T) -> flat outputs over real rows in mask order.

        `baseline` (B, T, n_targets) and `baseline_aux` (B, T, n_aux), when given, are added to
        the heads' outputs: the heads then predict the residual to that baseline.
        `target_scale` (B, T, n_targets), when given, multiplies the main head's output first:
        the head then predicts the (residual) target divided by it (`stage1.per_metre_axes`),
        and ``main`` stays in target units. `mix` (manifold
        mixup, training only) mixes the fused features before the LSTM; the caller mixes the
        labels and baselines by the same plan (`stage1_nn.mixup.mix_batch`).

        Returns
        -------
        dict with ``main`` (n, n_targets), ``aux`` (n, n_aux) or absent, ``emb`` (n, embedding_dim),
        ``disp`` (n, n_targets) with `output: displacements` (``main`` is their running sum
        plus the baseline), ``next`` (n, n_next) with a next-row telemetry head.
        """
        parts = [self.image_features(images[mask])]
        if self.telemetry is not None:
            parts.append(self.telemetry(telemetry[mask]))
        if self.extra is not None:
            parts.append(self.extra(extra[mask]))
        emb = torch.cat([p.float() for p in parts], dim=1)
        if mix is not None:
            emb = mix.mix_flat(emb, mask)
        if self.lstm is not None:
            emb = self._sequence(emb, mask)
        hidden = self.dropout(emb)
        out = {"emb": emb, "main": self.main_head(hidden).float() * self.main_scale + self.main_shift}
        if self.output == "displacements":  # positions = running sum of the steps, per axis
            out["disp"] = out["main"]
            steps = out["disp"].view(len(out["disp"]), -1, self.dims.n_axes)
            out["main"] = steps.cumsum(dim=1).view(len(out["disp"]), -1)
        if self.aux_head is not None:
            out["aux"] = self.aux_head(hidden).float() * self.aux_scale + self.aux_shift
        if self.next_head is not None:
            out["next"] = self.next_head(hidden).float()
        if target_scale is not None:
            out["main"] = out["main"] * target_scale[mask].float()
        if baseline is not None:
            out["main"] = out["main"] + baseline[mask].float()
            if "aux" in out and baseline_aux is not None:
                out["aux"] = out["aux"] + baseline_aux[mask].float()
        return out

    def _sequence(self, flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t = mask.shape
        seq = flat.new_zeros(b, t, flat.shape[1])
        seq[mask] = flat
        lengths = mask.sum(dim=1).cpu()
        # Packed, so the backward direction starts at each scene's last real row, not at padding.
        packed = pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=t)
        return out[mask]


def build_model(cfg: ModelConfig, dims: ModelDims, channels_last: bool = False) -> TrajectoryNet:
    """The network for a config and the data's sizes (timm resolves the backbone name)."""
    return TrajectoryNet(cfg, dims, channels_last=channels_last)


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s weights and buffers, detached, on the CPU: what a checkpoint stores."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_checkpoint(path: str | Path, model: nn.Module, model_cfg: ModelConfig, dims: ModelDims,
                    **extra: Any) -> None:
    """State dict + everything needed to rebuild the net; loadable with ``weights_only=True``."""
    payload = {"state_dict": cpu_state_dict(model),
               "model_config": model_cfg.model_dump(mode="json"),
               "dims": {**asdict(dims), "image_size": list(dims.image_size) if dims.image_size else None},
               **extra}
    with atomic_path(path) as tmp:  # an interrupted save leaves no half checkpoint
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[TrajectoryNet, dict[str, Any]]:
    """Rebuild the net of a checkpoint (no download: `pretrained` is ignored) and load its weights."""
    payload = torch.load(path, map_location=device, weights_only=True)
    cfg = ModelConfig.model_validate({**payload["model_config"], "pretrained": False})
    dims_raw = dict(payload["dims"])
    dims_raw["image_size"] = tuple(dims_raw["image_size"]) if dims_raw.get("image_size") else None
    model = build_model(cfg, ModelDims(**dims_raw))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload
