"""Stage-1 toolbox switches, each checked for what it claims: mixup and manifold mixup mix the
labels by the inputs' lambda, pixel normalisation modes, the displacement output, the jerk
penalty and the next-row telemetry aux targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stage1_nn.augment import FlipRules
from stage1_nn.config import LossConfig, MixupConfig, ModelConfig
from stage1_nn.data import (
    SequenceDataset,
    TelemetryEncoder,
    aux_targets,
    collate,
    displacements,
    make_sequences,
    next_row_index,
    path_jerk,
    pixel_statistics,
)
from stage1_nn.losses import stage1_loss
from stage1_nn.mixup import choose_mixup, draw_plan, mix_batch
from stage1_nn.model import ModelDims, build_model
from trajstack.config import load_config

SPEC = load_config("demo").dataset
N_TARGETS = len(SPEC.target_columns)
LENGTHS = (3, 2, 1, 3)  # scenes of a padded batch


def _padded_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """A collated batch of 4 scenes of unequal length: the shapes and keys training sees."""
    rng = np.random.default_rng(seed)
    items = []
    for n in LENGTHS:
        targets = rng.normal(size=(n, N_TARGETS)).astype(np.float32)
        baseline = rng.normal(size=(n, N_TARGETS)).astype(np.float32)
        items.append({
            "rows": np.arange(n), "flipped": False,
            "images": rng.integers(0, 256, size=(n, 3, 32, 32, 3), dtype=np.uint8),
            "telemetry": rng.normal(size=(n, 5)).astype(np.float32),
            "baseline": baseline, "baseline_aux": aux_targets(baseline, SPEC).astype(np.float32),
            "targets": targets, "aux": aux_targets(targets, SPEC).astype(np.float32),
            "next_telemetry": rng.normal(size=(n, 4)).astype(np.float32),
        })
    return collate(items)


def _lambda_of(mixed: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row lambda that makes `mixed` = lam * a + (1 - lam) * b, least squares over the row."""
    d = (a.float() - b.float()).flatten(2)
    return ((mixed.float() - b.float()).flatten(2) * d).sum(-1) / (d * d).sum(-1)


def test_input_mixup_mixes_every_label_by_the_inputs_lambda():
    torch.manual_seed(3)
    batch = _padded_batch()
    plan = draw_plan(batch["mask"], alpha=0.4)
    mixed = mix_batch(batch, plan, inputs=True)
    mask, perm = batch["mask"], plan.perm
    assert torch.equal(mixed["mask"], mask)  # each scene keeps its own rows and length
    both = mask & mask[perm]
    assert not torch.equal(perm, torch.arange(len(perm))) and both.any()
    lam = _lambda_of(mixed["telemetry"], batch["telemetry"], batch["telemetry"][perm])
    assert 0 < float(lam[both][0]) < 1
    for key in ("images", "baseline", "baseline_aux", "targets", "aux", "next_telemetry"):
        got = _lambda_of(mixed[key], batch[key], batch[key][perm])
        torch.testing.assert_close(got[both], lam[both], rtol=1e-4, atol=1e-4, msg=key)
        # exactly the convex combination, not merely the same least-squares lambda
        lam_b = lam[both].view(-1, *[1] * (batch[key].ndim - 2))
        torch.testing.assert_close(mixed[key][both], lam_b * batch[key][both].float()
                                   + (1 - lam_b) * batch[key][perm][both].float(), rtol=1e-4, atol=1e-3)
    # label-consistent: the residual to the mixed baseline is the mix of the residuals, and the
    # mixed aux targets are the velocities/accelerations of the mixed path
    torch.testing.assert_close(mixed["aux"][both], aux_targets(mixed["targets"][both], SPEC), rtol=1e-4, atol=1e-4)
    alone = mask & ~mask[perm]  # rows whose partner scene is shorter: left as they were
    for key in ("images", "telemetry", "targets"):
        torch.testing.assert_close(mixed[key][alone].float(), batch[key][alone].float())


def test_manifold_mixup_mixes_fused_features_and_labels_alike_and_leaves_inputs():
    torch.manual_seed(4)
    batch = _padded_batch(1)
    dims = ModelDims(n_frames=3, channels=3, n_telemetry=5, n_extra=0, n_targets=N_TARGETS, n_aux=27, aux_head=True)
    model = build_model(ModelConfig(backbone="test_convnext", lstm={"enabled": False}), dims).eval()
    plan = draw_plan(batch["mask"], alpha=0.4)
    inputs = {k: batch[k] for k in ("images", "telemetry", "mask")}
    with torch.no_grad():
        plain, mixed = model(**inputs), model(**inputs, mix=plan)
    mask, perm = batch["mask"], plan.perm
    lam = plan.lam[mask][:, None]
    partner = plan.mix_flat(plain["emb"], mask)  # reference: the same mix, computed outside
    torch.testing.assert_close(mixed["emb"], partner)
    both = (mask & mask[perm])[mask]
    emb_partner = torch.zeros(*mask.shape, plain["emb"].shape[1])
    emb_partner[mask] = plain["emb"]
    emb_partner = emb_partner[perm][mask]
    torch.testing.assert_close(mixed["emb"][both], (lam * plain["emb"] + (1 - lam) * emb_partner)[both])
    assert not torch.allclose(mixed["emb"], plain["emb"])
    labels = mix_batch(batch, plan, inputs=False)
    assert torch.equal(labels["images"], batch["images"]) and torch.equal(labels["telemetry"], batch["telemetry"])
    y, y_partner = batch["targets"][mask], batch["targets"][perm][mask]
    torch.testing.assert_close(labels["targets"][mask][both], (lam * y + (1 - lam) * y_partner)[both])


def test_mixup_probabilities_choose_the_kind_and_off_means_never():
    mask = torch.ones(4, 2, dtype=torch.bool)
    torch.manual_seed(0)
    assert choose_mixup(MixupConfig(), mask) == (None, None)
    kinds = [choose_mixup(MixupConfig(p=0.5, manifold_p=0.5), mask)[1] for _ in range(200)]
    assert set(kinds) == {"input", "manifold"}
    assert {choose_mixup(MixupConfig(p=1.0), mask)[1] for _ in range(20)} == {"input"}
    with pytest.raises(ValueError, match="at most one kind"):
        MixupConfig(p=0.7, manifold_p=0.5)


def test_pixel_statistics_come_from_the_training_rows_only():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 3, 4, 6, 3), dtype=np.uint8)
    train_rows, frames = np.array([0, 2, 3, 7]), np.arange(3)
    mean, std = pixel_statistics(images, train_rows, frames)
    expected = images[train_rows].astype(float).transpose(1, 4, 0, 2, 3).reshape(9, -1)  # (F*C, pixels)
    np.testing.assert_allclose(mean, expected.mean(1), rtol=1e-5)
    np.testing.assert_allclose(std, expected.std(1), rtol=1e-4)
    held_out = images.copy()
    held_out[[1, 4, 5, 6, 8, 9]] = 255  # only rows outside the training fold change
    np.testing.assert_array_equal(pixel_statistics(held_out, train_rows, frames)[0], mean)
    in_fold = images.copy()
    in_fold[2] = 255
    assert not np.allclose(pixel_statistics(in_fold, train_rows, frames)[0], mean)


def _normalised_input(mode: str, images: torch.Tensor, **stats) -> torch.Tensor:
    dims = ModelDims(n_frames=3, channels=3, n_telemetry=5, n_extra=0, n_targets=N_TARGETS, n_aux=27, aux_head=False)
    model = build_model(ModelConfig(backbone="test_convnext", pixel_norm=mode), dims)
    if stats:
        model.set_pixel_statistics(**stats)
    model.backbone = nn.Identity()  # what the backbone would receive
    return model.image_features(images), model


def test_pixel_norm_modes_normalise_as_they_say():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 8, 16, 3), generator=g, dtype=torch.uint8)
    x = images.permute(0, 1, 4, 2, 3).reshape(4, 9, 8, 16).float()
    imagenet, _ = _normalised_input("imagenet", images)
    mean, std = torch.arange(9.0) * 10, torch.arange(1.0, 10.0)
    dataset, model = _normalised_input("dataset", images, mean=mean, std=std)
    torch.testing.assert_close(dataset, (x - mean.view(1, 9, 1, 1)) / std.view(1, 9, 1, 1))
    assert "pixel_mean" in model.state_dict()  # the fold's statistics travel with the weights
    sequence, _ = _normalised_input("sequence", images)
    per_colour = sequence.view(4, 3, 3, 8, 16)
    torch.testing.assert_close(per_colour.mean(dim=(1, 3, 4)), torch.zeros(4, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_colour.std(dim=(1, 3, 4)), torch.ones(4, 3), atol=1e-4, rtol=0)
    # a darker, lower-contrast copy of row 0 looks the same after per-sequence normalisation
    dim = images.clone()
    dim[0] = (images[0].float() * 0.5 + 10).to(torch.uint8)
    torch.testing.assert_close(_normalised_input("sequence", dim)[0][0], sequence[0], atol=0.05, rtol=0)
    assert not torch.allclose(_normalised_input("imagenet", dim)[0][0], imagenet[0], atol=0.05)


def test_displacement_head_running_sum_is_its_position_output():
    torch.manual_seed(0)
    dims = ModelDims(n_frames=3, channels=3, n_telemetry=5, n_extra=0, n_targets=N_TARGETS, n_aux=27,
                     aux_head=True, n_axes=len(SPEC.axes))
    model = build_model(ModelConfig(backbone="test_convnext", output="displacements"), dims).eval()
    model.set_target_scaling(torch.rand(N_TARGETS), torch.rand(N_TARGETS) + 0.5, torch.zeros(27), torch.ones(27))
    batch = _padded_batch()
    inputs = {k: batch[k] for k in ("images", "telemetry", "mask", "baseline", "baseline_aux")}
    with torch.no_grad():
        out = model(**inputs)
    n_axes = len(SPEC.axes)
    running = out["disp"].view(len(out["disp"]), -1, n_axes).cumsum(1).view(len(out["disp"]), -1)
    torch.testing.assert_close(out["main"], running + batch["baseline"][batch["mask"]])
    assert not torch.allclose(out["main"] - batch["baseline"][batch["mask"]], out["disp"])
    # the targets' own steps (what the head is scaled to) sum back to the positions
    y = np.random.default_rng(0).normal(size=(5, N_TARGETS))
    np.testing.assert_allclose(displacements(y, SPEC).reshape(5, -1, n_axes).cumsum(1).reshape(5, -1), y)
    positions = build_model(ModelConfig(backbone="test_convnext"), dims).eval()
    with torch.no_grad():
        assert "disp" not in positions(**inputs)


def _path(t: np.ndarray, v: np.ndarray, a: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Positions (rows, horizons * axes), horizon-major, of p = v t + a t^2 / 2 + j t^3 / 6."""
    p = v[:, None] * t[None, :, None] + a[:, None] * t[None, :, None] ** 2 / 2 + j[:, None] * t[None, :, None] ** 3 / 6
    return p.reshape(len(v), -1)


def test_jerk_is_zero_on_constant_acceleration_and_the_third_derivative_otherwise():
    rng = np.random.default_rng(0)
    t = np.asarray(SPEC.horizons_s)
    v, a, j = (rng.normal(size=(4, 3)) for _ in range(3))
    np.testing.assert_allclose(path_jerk(_path(t, v, a, 0 * j), SPEC), 0, atol=1e-9)
    jerk = path_jerk(_path(t, v, a, j), SPEC).reshape(4, -1, 3)
    np.testing.assert_allclose(jerk, np.broadcast_to(j[:, None], jerk.shape), rtol=1e-6)
    uneven = SPEC.model_copy(update={"horizons_s": [0.5, 1.0, 2.0, 2.5, 4.0, 6.0]})  # not evenly spaced
    np.testing.assert_allclose(path_jerk(_path(np.asarray(uneven.horizons_s), v, a, 0 * j), uneven), 0, atol=1e-9)


def test_jerk_weight_adds_its_penalty_and_zero_leaves_the_loss_unchanged():
    rng = np.random.default_rng(1)
    t = np.asarray(SPEC.horizons_s)
    v, a, j = (rng.normal(size=(6, 3)) for _ in range(3))
    targets = torch.tensor(_path(t, v, a, 0 * j), dtype=torch.float32)
    smooth = torch.tensor(_path(t, v + 0.1, a, 0 * j), dtype=torch.float32)
    jerky = torch.tensor(_path(t, v, a, j), dtype=torch.float32)
    aux = aux_targets(targets, SPEC)
    for pred in (smooth, jerky):
        out = {"main": pred, "aux": aux_targets(pred, SPEC) + 0.3}
        base, _ = stage1_loss(out, targets, aux, LossConfig())
        by_hand = (pred - targets).abs().mean() + 0.2 * torch.nn.functional.smooth_l1_loss(out["aux"], aux)
        torch.testing.assert_close(base, by_hand)
        zero, _ = stage1_loss(out, targets, aux, LossConfig(jerk_weight=0.0), spec=SPEC)
        assert float(zero) == float(base)
        weighted, parts = stage1_loss(out, targets, aux, LossConfig(jerk_weight=0.5), spec=SPEC)
        penalty = float(path_jerk(pred, SPEC).abs().mean())
        assert float(weighted) == pytest.approx(float(base) + 0.5 * penalty, rel=1e-5)
        assert (penalty > 0.1) == (pred is jerky) and parts["loss_jerk"] == pytest.approx(penalty)


def _scene_ids(scene: str, times: list[int]) -> list[str]:
    return [f"{scene}_{t}" for t in times]


def test_next_row_telemetry_targets_are_the_next_row_of_the_same_scene():
    a, b = "a" * 32, "b" * 32
    # table order shuffled: time order within a scene must come from the IDs, not the file
    ids = np.array([*_scene_ids(b, [30, 10]), *_scene_ids(a, [20, 0, 10]), *_scene_ids(b, [20])])
    nxt = next_row_index(ids, SPEC)
    expected = {f"{b}_10": f"{b}_20", f"{b}_20": f"{b}_30", f"{a}_0": f"{a}_10", f"{a}_10": f"{a}_20"}
    for i, row_id in enumerate(ids):
        assert (ids[nxt[i]] if nxt[i] >= 0 else None) == expected.get(row_id)  # last rows: -1

    rng = np.random.default_rng(0)
    n_cols = len(SPEC.telemetry)
    raw = rng.normal(size=(len(ids), n_cols))
    cat = list(SPEC.telemetry).index("gearShifter")
    raw[:, cat] = 0
    raw[2, 0] = np.nan  # a missing value in row a_20's telemetry: a_10's target leaves it out
    encoder = TelemetryEncoder.fit(raw, SPEC)
    images = np.zeros((len(ids), 3, 4, 8, 3), np.uint8)
    flip = FlipRules.from_spec(SPEC)
    dataset = SequenceDataset(make_sequences(ids, SPEC, "scene"), images, raw, encoder, SPEC, np.arange(3),
                              next_rows=nxt, flip=flip)
    for index in range(len(dataset)):
        item = dataset.encode(dataset.load(index))
        rows, target = item["rows"], item["next_telemetry"]
        assert target.shape == (len(rows), encoder.n_value_columns)
        for k in range(len(rows) - 1):  # row k's targets are row k+1's encoded values
            np.testing.assert_array_equal(target[k], encoder.values(raw[rows[k + 1]][None])[0])
        assert np.isnan(target[-1]).all()  # the scene's last row has no next row
    item = dataset.encode(dataset.load(0))  # scene a (sorted first): a_10 -> a_20 has the NaN
    assert np.isnan(item["next_telemetry"][1, 0]) and np.isfinite(item["next_telemetry"][1, 1:]).all()
    # the flip mirrors the next row's telemetry as it mirrors the row's
    steer = [c for c in SPEC.telemetry if SPEC.telemetry[c] != "category"].index("steeringAngleDeg")
    flipped = dataset.encode(dataset.load(0, flipped=True), flipped=True)
    plain = dataset.encode(dataset.load(0))
    mean = encoder.mean[list(SPEC.telemetry).index("steeringAngleDeg")]
    std = encoder.std[list(SPEC.telemetry).index("steeringAngleDeg")]
    np.testing.assert_allclose(flipped["next_telemetry"][:-1, steer] * std + mean,
                               -(plain["next_telemetry"][:-1, steer] * std + mean), rtol=1e-5, atol=1e-5)


class _Recorder(nn.Module):
    """A stand-in net: records what the training step feeds it; main = a linear map of telemetry."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(5, N_TARGETS)
        self.register_buffer("main_scale", torch.ones(N_TARGETS))
        self.register_buffer("aux_scale", torch.ones(27))
        self.seen: list[dict] = []

    def forward(self, images, telemetry, mask, extra=None, baseline=None, baseline_aux=None, target_scale=None,
                mix=None):
        self.seen.append({"telemetry": telemetry.clone(), "baseline": baseline.clone(), "mix": mix})
        return {"main": self.head(telemetry[mask]) + baseline[mask]}


@pytest.mark.parametrize("kind", ["input", "manifold", "off"])
def test_training_step_applies_the_mixup_it_draws(kind, monkeypatch):
    import stage1_nn.mixup as mixup_module
    from stage1_nn.config import Stage1Config
    from stage1_nn.distributed import DistEnv
    from stage1_nn.engine import train_one_epoch

    plans = []
    draw = mixup_module.draw_plan
    monkeypatch.setattr(mixup_module, "draw_plan", lambda *a, **k: plans.append(draw(*a, **k)) or plans[-1])
    cfg = Stage1Config(progress=False, loss={"aux": False},
                       mixup={"p": float(kind == "input"), "manifold_p": float(kind == "manifold")})
    torch.manual_seed(0)
    model, batch = _Recorder(), _padded_batch(2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    train_one_epoch(model, [batch], optimizer, scheduler, None, cfg, DistEnv(), None, 0, "test")
    seen, mask = model.seen[0], batch["mask"]
    if kind == "off":
        assert not plans and seen["mix"] is None
        assert torch.equal(seen["telemetry"], batch["telemetry"]) and torch.equal(seen["baseline"], batch["baseline"])
        return
    (plan,) = plans
    both = mask & mask[plan.perm]
    assert both.any() and ((plan.lam[both] > 0) & (plan.lam[both] < 1)).all()
    # the baseline the net adds back is mixed in both kinds: mixed baseline + mixed residual = mixed target
    torch.testing.assert_close(seen["baseline"], plan.mix(batch["baseline"]))
    if kind == "input":  # the net saw telemetry mixed by the same plan, and no plan of its own
        assert seen["mix"] is None
        torch.testing.assert_close(seen["telemetry"], plan.mix(batch["telemetry"]))
        assert not torch.equal(seen["telemetry"], batch["telemetry"])
    else:  # manifold: inputs untouched, the net got the plan to mix its fused features by
        assert seen["mix"] is plan or torch.equal(seen["mix"].lam, plan.lam)
        assert torch.equal(seen["telemetry"], batch["telemetry"])
