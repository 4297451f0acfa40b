"""Stage 1 pieces without training: telemetry encoding, aux targets, flip, dataset, model shapes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from dataset_factory import make_tiny_dataset

from stage1_nn.augment import FlipRules, PhotometricAugment
from stage1_nn.config import ModelConfig
from stage1_nn.data import (
    SequenceDataset,
    TelemetryEncoder,
    aux_sign,
    aux_target_names,
    aux_targets,
    collate,
    extra_vectors,
    frame_indices,
    make_sequences,
    raw_telemetry,
    read_extra_vectors,
    target_baseline,
    target_scale,
)
from stage1_nn.model import ModelDims, PretrainedWeightsError, build_model, input_planes_count
from trajstack.config import ConfigError, load_config
from trajstack.errors import TrajstackError
from trajstack.image_cache import build_or_open_cache
from trajstack.physics import per_metre_scale
from trajstack.tables import read_table

TINY = ["stage1.model.backbone=test_convnext", "stage1.progress=false"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1_unit")
    data = make_tiny_dataset(root / "data", n_scenes=3, rows_per_scene=3, seed=1)
    cfg = load_config("demo", [f"data_dir={data.root}", f"output_dir={root / 'out'}", *TINY])
    table = read_table(cfg.data_dir, cfg.dataset, "train")
    cache = build_or_open_cache(cfg.data_dir, cfg.dataset, "train", cfg.cache_dir, workers=1, progress=False)
    return cfg, table, cache


def make_dataset(cfg, table, cache, mode="scene", **kwargs):
    spec = cfg.dataset
    raw = raw_telemetry(table, spec)
    ids = table[spec.id_column].to_numpy(str)
    return SequenceDataset(make_sequences(ids, spec, mode), cache.images, raw, TelemetryEncoder.fit(raw, spec),
                           spec, frame_indices(spec, None), targets=table[spec.target_columns].to_numpy(np.float32),
                           flip=FlipRules.from_spec(spec), **kwargs)


def test_aux_targets_are_finite_differences():
    spec = load_config("demo").dataset
    names = aux_target_names(spec)
    assert len(names) == 27 and names[:3] == ["vx_0", "vy_0", "vz_0"] and names[-1] == "az_3"
    t = np.asarray(spec.horizons_s)
    # x = t^2 (constant acceleration 2), y = 3t (constant velocity 3), z = 0
    targets = np.stack([t**2, 3 * t, 0 * t], axis=1).reshape(1, -1)
    aux = aux_targets(targets, spec)[0]
    vel, acc = aux[:15].reshape(5, 3), aux[15:].reshape(4, 3)
    np.testing.assert_allclose(vel[:, 1], 3.0)
    np.testing.assert_allclose(acc[:, 0], 2.0)
    np.testing.assert_allclose(aux_targets(torch.as_tensor(targets), spec).numpy(), aux[None], rtol=1e-6)
    assert aux_sign(spec).tolist().count(-1.0) == 9  # vy_0..4 and ay_0..3


def test_encoder_imputes_nan_and_flags_it(tiny):
    cfg, table, _ = tiny
    spec = cfg.dataset
    raw = raw_telemetry(table, spec)
    raw[0, :] = np.nan
    encoder = TelemetryEncoder.fit(raw[1:], spec)  # the NaN row is not in the "training fold"
    out = encoder.transform(raw)
    assert out.shape == (len(raw), encoder.n_features) and np.isfinite(out).all()
    flags = out[:, -len(spec.telemetry):]
    assert flags[0].all() and not flags[1:].any()
    again = TelemetryEncoder.from_state(encoder.state_dict()).transform(raw)
    np.testing.assert_array_equal(out, again)


def test_flip_twice_is_identity_and_flips_labels(tiny):
    cfg, table, cache = tiny
    spec = cfg.dataset
    ds = make_dataset(cfg, table, cache)
    flip = FlipRules.from_spec(spec)
    plain = ds.load(0)
    flipped = ds.load(0, flipped=True)
    twice = flip(flipped)
    for key in ("images", "telemetry", "targets"):
        np.testing.assert_array_equal(twice[key], plain[key])
    np.testing.assert_array_equal(flipped["images"], plain["images"][:, :, :, ::-1])
    cols = spec.telemetry_columns
    for col in spec.flip.negate_columns:
        np.testing.assert_array_equal(flipped["telemetry"][:, cols.index(col)], -plain["telemetry"][:, cols.index(col)])
    for a, b in spec.flip.swap_columns:
        np.testing.assert_array_equal(flipped["telemetry"][:, cols.index(a)], plain["telemetry"][:, cols.index(b)])
    for j, name in enumerate(spec.target_columns):
        sign = -1 if name.split("_")[0] in spec.flip.negate_axes else 1
        np.testing.assert_array_equal(flipped["targets"][:, j], sign * plain["targets"][:, j])
    # the aux targets of the encoded sample follow: vy / ay negated, the rest unchanged
    enc_plain, enc_flip = ds.encode(plain), ds.encode(flipped, flipped=True)
    np.testing.assert_allclose(enc_flip["aux"], enc_plain["aux"] * aux_sign(spec), atol=1e-5)


def test_photometric_same_params_for_all_frames(tiny):
    cfg, table, cache = tiny
    aug_cfg = cfg.stage1.augment.model_copy(update={"brightness_p": 1.0, "blur_p": 1.0})
    frames = np.repeat(cache.images[0][:1], 3, axis=0)  # three identical frames
    out = PhotometricAugment(aug_cfg, n_frames=3, seed=0)(frames)
    assert out.shape == frames.shape and out.dtype == np.uint8
    assert not np.array_equal(out[0], frames[0])
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_cutout_blanks_the_same_rectangles_in_every_frame(tiny):
    cfg, _, cache = tiny
    aug_cfg = cfg.stage1.augment.model_copy(update={"cutout_p": 1.0, "cutout_holes": 2})
    frames = np.repeat(cache.images[0][:1], 3, axis=0)
    frames = np.maximum(frames, 1)  # no black pixels before: every 0 after is a hole
    out = PhotometricAugment(aug_cfg, n_frames=3, seed=1)(frames)
    holes = (out == 0).all(axis=-1)
    assert 0 < holes[0].mean() < 0.5
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])
    np.testing.assert_array_equal(out[0][~holes[0]], frames[0][~holes[0]])  # only the holes change


def test_shift_moves_every_frame_by_the_same_few_pixels(tiny):
    cfg, _, _ = tiny
    h, w = 64, 128
    frame = np.zeros((h, w, 3), np.uint8)
    frame[30:34, 60:64] = 255  # a bright square, far from the borders
    aug_cfg = cfg.stage1.augment.model_copy(update={"shift_scale_p": 1.0, "shift_px": 3,
                                                    "scale_limit": 0.0})
    shifts = set()
    for seed in range(8):
        out = PhotometricAugment(aug_cfg, n_frames=3, seed=seed)(np.stack([frame] * 3))
        np.testing.assert_array_equal(out[0], out[2])
        rows, cols = np.nonzero(out[0, :, :, 0] > 127)
        dy, dx = rows.mean() - 31.5, cols.mean() - 61.5
        assert abs(dy) <= 3.5 and abs(dx) <= 3.5  # a few pixels at most, no rotation
        shifts.add((round(dy), round(dx)))
    assert len(shifts) > 1  # it does move


@pytest.mark.parametrize("mode,lstm,vlm", [("scene", True, False), ("scene", True, True), ("row", False, False),
                                           ("row", False, True)])
def test_model_output_shapes(tiny, mode, lstm, vlm):
    cfg, table, cache = tiny
    spec = cfg.dataset
    extra = np.random.default_rng(0).normal(size=(len(table), 7)).astype(np.float32) if vlm else None
    ds = make_dataset(cfg, table, cache, mode=mode, extra=extra)
    batch = collate([ds[i] for i in range(len(ds))])
    n_rows = int(batch["mask"].sum())
    assert n_rows == len(table)
    assert batch["images"].shape[:2] == batch["mask"].shape
    model_cfg = cfg.stage1.model.model_copy(update={
        "lstm": cfg.stage1.model.lstm.model_copy(update={"enabled": lstm}),
    })
    dims = ModelDims(n_frames=len(spec.frames), channels=3, n_telemetry=ds.encoder.n_features,
                     n_extra=7 if vlm else 0, n_targets=18, n_aux=27, aux_head=True)
    model = build_model(model_cfg, dims).eval()
    with torch.no_grad():
        out = model(batch["images"], batch["telemetry"], batch["mask"], batch.get("extra"))
    assert out["main"].shape == (n_rows, 18)
    assert out["aux"].shape == (n_rows, 27)
    # The embedding is the LSTM's output, or without the LSTM the fused inputs side by side:
    # the backbone's features, the telemetry projection and the extra projection.
    if lstm:
        width = model_cfg.lstm.hidden * (2 if model_cfg.lstm.bidirectional else 1)
    else:
        with torch.no_grad():
            image_width = model.image_features(batch["images"][batch["mask"]]).shape[1]
        width = image_width + model_cfg.telemetry.width + (model_cfg.vlm.width if vlm else 0)
    assert out["emb"].shape == (n_rows, width)
    assert model.embedding_dim == width


def test_vlm_features_align_to_ids(tmp_path):
    ids = ["a_20", "b_20", "c_20"]
    path = tmp_path / "vlm.parquet"
    pd.DataFrame({"ID": ["c_20", "a_20", "b_20"], "f0": [3.0, 1.0, np.nan], "f1": [30.0, 10.0, 20.0]}).to_parquet(path)
    values = read_extra_vectors(path, ids, "ID")
    np.testing.assert_array_equal(values, [[1, 10], [0, 20], [3, 30]])
    with pytest.raises(ValueError, match="d_20"):
        read_extra_vectors(path, [*ids, "d_20"], "ID")


def test_extra_vectors_are_refused_under_flips(tiny, tmp_path):
    # The vectors describe the unmirrored row and none exist for mirrored rows: a flipped sample
    # would carry a contradicting vector, so the combination is refused, naming the keys.
    cfg, table, _ = tiny
    ids = table["ID"].to_numpy(str)
    path = tmp_path / "extra.parquet"
    pd.DataFrame({"ID": ids, "f0": np.arange(len(ids), dtype=float)}).to_parquet(path)
    base = [f"data_dir={cfg.data_dir}", f"output_dir={cfg.output_dir}", *TINY]
    for source in (f"stage1.model.vlm.features={path}", "vlm.enabled=true"):
        for flips, named in ((["stage1.augment.flip_p=0.5"], r"stage1\.augment\.flip_p=0\.5"),
                             (["stage1.augment.flip_p=0", "stage1.tta_flip=true"], r"stage1\.tta_flip=true")):
            flipping = load_config("demo", [*base, source, *flips])
            with pytest.raises(ConfigError, match=rf"{source.split('=')[0]}.*{named}.*flip_p=0.*tta_flip=false"):
                extra_vectors(flipping, "train", ids)
    plain = load_config("demo", [*base, f"stage1.model.vlm.features={path}", "stage1.augment.flip_p=0",
                                 "stage1.tta_flip=false"])
    np.testing.assert_array_equal(extra_vectors(plain, "train", ids)[:, 0], np.arange(len(ids)))
    # Flips without extra vectors stay allowed.
    assert extra_vectors(load_config("demo", [*base, "stage1.tta_flip=true"]), "train", ids) is None


def test_gpu_config_composes_the_full_recipe():
    cfg = load_config("gpu")
    s1 = cfg.stage1
    assert timm.is_model(s1.model.backbone) and s1.model.pretrained
    assert s1.mode == "scene" and s1.model.lstm.enabled and s1.loss.aux and s1.ema.enabled
    assert s1.augment.flip_p > 0 and s1.augment.noise_p > 0
    assert s1.precision == "bf16" and s1.channels_last and s1.compile


def test_frame_subset_is_configurable(tiny):
    cfg, table, cache = tiny
    spec = cfg.dataset
    last = spec.frames[-1]
    assert frame_indices(spec, [last]).tolist() == [len(spec.frames) - 1]
    with pytest.raises(ValueError, match="not in dataset.frames"):
        frame_indices(spec, ["nope.png"])
    raw = raw_telemetry(table, spec)
    ds = SequenceDataset(make_sequences(table[spec.id_column].to_numpy(str), spec, "row"), cache.images, raw,
                         TelemetryEncoder.fit(raw, spec), spec, frame_indices(spec, [last]))
    np.testing.assert_array_equal(ds[0]["images"][:, 0], cache.images[ds.sequences[0], -1])


TINY_CONVNEXT = {"dims": [8, 16, 32, 64], "depths": [1, 1, 1, 1]}


PRETRAINED_DIMS = ModelDims(n_frames=3, channels=3, n_telemetry=4, n_extra=0, n_targets=18, n_aux=27,
                            aux_head=True)
DEEP_KEY = "stages.3.blocks.0.conv_dw.weight"


def _tiny_pretrained(tmp_path):
    """A 3-channel "pretrained" tiny ConvNeXt, saved as .pth and .safetensors, and its config."""
    from safetensors.torch import save_file

    source = timm.create_model("convnext_atto", **TINY_CONVNEXT)
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors")
    cfg = ModelConfig(backbone="convnext_atto", pretrained=True, backbone_kwargs=TINY_CONVNEXT)
    return source.state_dict(), cfg


def _no_network(monkeypatch):
    import timm.models._hub as timm_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args} {kwargs}")

    monkeypatch.setattr(timm_hub, "hf_hub_download", refuse)


def test_pretrained_file_is_read_with_no_network(tmp_path, monkeypatch):
    source, cfg = _tiny_pretrained(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    _no_network(monkeypatch)
    model = build_model(cfg.model_copy(update={"pretrained_file": str(tmp_path / "weights.pth")}),
                        PRETRAINED_DIMS)
    loaded = model.backbone.state_dict()
    # Deeper layers are the file's; the stem is adapted from 3 to 9 input channels by timm.
    torch.testing.assert_close(loaded[DEEP_KEY], source[DEEP_KEY])
    assert loaded["stem.0.weight"].shape[1] == 9
    with pytest.raises(PretrainedWeightsError, match="pretrained_file=.*does not exist"):
        build_model(cfg.model_copy(update={"pretrained_file": str(tmp_path / "nope.pth")}), PRETRAINED_DIMS)


def test_pretrained_downloads_through_timm_and_the_hub(tmp_path, monkeypatch):
    # Online (no HF_HUB_OFFLINE), `pretrained: true` is timm.create_model(pretrained=True): timm asks
    # the hub for its weights file. The hub call is recorded and served from a local file here.
    import huggingface_hub
    import timm.models._hub as timm_hub

    source, cfg = _tiny_pretrained(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def fake_download(repo_id, filename, **kwargs):
        calls.append((repo_id, filename))
        if not filename.endswith(".safetensors"):
            raise huggingface_hub.errors.EntryNotFoundError(filename)
        return str(tmp_path / "model.safetensors")

    monkeypatch.setattr(timm_hub, "hf_hub_download", fake_download)
    model = build_model(cfg, PRETRAINED_DIMS)
    repo = timm.models.get_pretrained_cfg("convnext_atto").hf_hub_id
    assert calls and calls[0] == (repo, "model.safetensors")
    torch.testing.assert_close(model.backbone.state_dict()[DEEP_KEY], source[DEEP_KEY])

    # A failed download (no network, no cache) is a one-line PretrainedWeightsError saying what to do.
    def failing_download(repo_id, filename, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot reach huggingface.co\nsecond line")

    monkeypatch.setattr(timm_hub, "hf_hub_download", failing_download)
    with pytest.raises(PretrainedWeightsError, match="could not download.*pretrained_file=PATH") as err:
        build_model(cfg, PRETRAINED_DIMS)
    assert "\n" not in str(err.value)


def test_pretrained_offline_without_cache_fails_before_any_download(tmp_path, monkeypatch):
    import huggingface_hub

    _, cfg = _tiny_pretrained(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    _no_network(monkeypatch)
    with pytest.raises(PretrainedWeightsError, match="HF_HUB_OFFLINE=1.*pretrained_file=PATH") as err:
        build_model(cfg, PRETRAINED_DIMS)
    assert "\n" not in str(err.value) and isinstance(err.value, TrajstackError)


def test_physics_baseline_flips_like_the_targets_and_the_net_adds_it_back(tiny):
    cfg, table, cache = tiny
    cfg = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"baseline": "physics"})})
    spec = cfg.dataset
    baseline = target_baseline(cfg, table)
    assert baseline.shape == (len(table), 18) and np.abs(baseline).max() > 1.0  # not a zero forecast
    ds = make_dataset(cfg, table, cache, baseline=baseline)
    # The flipped sample's baseline is the forecast of the mirrored drive (steering negated, blinkers
    # swapped): training on flipped scenes teaches the same residual as on plain ones.
    mirrored = table.copy()
    for col in spec.flip.negate_columns:
        mirrored[col] = -mirrored[col]
    for a, b in spec.flip.swap_columns:
        mirrored[[a, b]] = mirrored[[b, a]].to_numpy()
    rows = ds.sequences[0]
    flipped = ds.load(0, flipped=True)
    np.testing.assert_allclose(flipped["baseline"], target_baseline(cfg, mirrored)[rows], atol=1e-5)
    assert np.abs(flipped["baseline"][:, 1::3]).max() > 0  # the turn model moves sideways

    # Heads that output 0 leave exactly the baseline (and its velocities/accelerations).
    batch = collate([ds[i] for i in range(len(ds))])
    dims = ModelDims(n_frames=len(spec.frames), channels=3, n_telemetry=ds.encoder.n_features,
                     n_extra=0, n_targets=18, n_aux=27, aux_head=True)
    model = build_model(cfg.stage1.model, dims).eval()
    for head in (model.main_head, model.aux_head):
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    with torch.no_grad():
        out = model(**{k: batch[k] for k in ("images", "telemetry", "mask", "baseline", "baseline_aux")})
    real_rows = batch["rows"][batch["mask"]].numpy()
    np.testing.assert_allclose(out["main"].numpy(), baseline[real_rows], atol=1e-5)
    np.testing.assert_allclose(out["aux"].numpy(), aux_targets(baseline[real_rows], spec), atol=1e-4)


def test_per_metre_axes_heads_learn_per_metre_and_the_net_predicts_metres(tiny):
    # `stage1.per_metre_axes: [z]`: the main head's output is multiplied by the distance to each
    # horizon on z (1 on x and y) before the baseline is added, and the loss divides each error
    # by the same distance, so the head learns z per metre while predictions stay in metres.
    from stage1_nn.config import LossConfig
    from stage1_nn.losses import stage1_loss

    cfg, table, cache = tiny
    cfg = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(
        update={"baseline": "physics", "per_metre_axes": ["z"]})})
    spec = cfg.dataset
    scale, baseline = target_scale(cfg, table), target_baseline(cfg, table)
    np.testing.assert_allclose(scale, per_metre_scale(table, spec, cfg.features.physics, ["z"]))
    z = [spec.target_columns.index(f"z_{k}") for k in range(len(spec.horizons_s))]
    others = [j for j in range(len(spec.target_columns)) if j not in z]
    assert (scale[:, others] == 1).all() and scale[:, z].max() > 5  # metres driven, not a no-op
    ds = make_dataset(cfg, table, cache, baseline=baseline, scale=scale)
    rows = ds.sequences[0]
    np.testing.assert_array_equal(ds.load(0, flipped=True)["target_scale"], scale[rows])  # a distance: unflipped

    batch = collate([ds[i] for i in range(len(ds))])
    dims = ModelDims(n_frames=len(spec.frames), channels=3, n_telemetry=ds.encoder.n_features,
                     n_extra=0, n_targets=18, n_aux=27, aux_head=True)
    model = build_model(cfg.stage1.model, dims).eval()
    torch.nn.init.zeros_(model.main_head.weight)
    torch.nn.init.constant_(model.main_head.bias, 0.25)  # a head saying 0.25 (per metre on z)
    keys = ("images", "telemetry", "mask", "baseline", "baseline_aux", "target_scale")
    with torch.no_grad():
        out = model(**{k: batch[k] for k in keys})
    real_rows = batch["rows"][batch["mask"]].numpy()
    np.testing.assert_allclose(out["main"].numpy(), baseline[real_rows] + 0.25 * scale[real_rows], rtol=1e-5)

    # The loss of a prediction off by 0.5 m per metre travelled is that of 0.5 m without scaling.
    targets = torch.zeros(len(real_rows), 18)
    per_metre = torch.as_tensor(scale[real_rows])
    off = {"main": 0.5 * per_metre}
    scaled, _ = stage1_loss(off, targets, None, LossConfig(aux=False), target_scale=per_metre)
    plain, _ = stage1_loss({"main": torch.full((len(real_rows), 18), 0.5)}, targets, None, LossConfig(aux=False))
    assert scaled.item() == pytest.approx(plain.item())

    wrong = cfg.model_copy(update={"stage1": cfg.stage1.model_copy(update={"per_metre_axes": ["w"]})})
    with pytest.raises(ConfigError, match=r"stage1\.per_metre_axes names \['w'\]"):
        target_scale(wrong, table)


def test_loss_leaves_out_missing_labels():
    # Rows without labels (NaN) add nothing to the loss or its gradient: the loss over a batch
    # with them equals the loss over the labelled rows alone.
    from stage1_nn.config import LossConfig
    from stage1_nn.losses import stage1_loss

    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(4, 18, generator=gen, requires_grad=True)
    aux_pred = torch.randn(4, 27, generator=gen)
    targets, aux = torch.randn(4, 18, generator=gen), torch.randn(4, 27, generator=gen)
    targets[2:] = float("nan")
    aux[2:] = float("nan")
    cfg = LossConfig()
    loss, _ = stage1_loss({"main": pred, "aux": aux_pred}, targets, aux, cfg)
    labelled, _ = stage1_loss({"main": pred[:2], "aux": aux_pred[:2]}, targets[:2], aux[:2], cfg)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(labelled.item())
    loss.backward()
    assert torch.all(pred.grad[2:] == 0) and torch.any(pred.grad[:2] != 0)


def test_axis_weights_weigh_only_the_named_axis_and_refuse_unknown_axes():
    # `stage1.loss.axis_weights: {z: 3}`: an error on z counts three times, one on x or y once.
    from stage1_nn.config import LossConfig
    from stage1_nn.losses import stage1_loss

    spec = load_config("demo").dataset
    cfg = LossConfig(aux=False, axis_weights={"z": 3.0})
    targets = torch.zeros(2, 18)
    for axis, weight in (("x", 1.0), ("y", 1.0), ("z", 3.0)):
        off = torch.zeros(2, 18)
        off[:, spec.target_columns.index(f"{axis}_2")] = 1.0
        loss, _ = stage1_loss({"main": off}, targets, None, cfg, spec=spec)
        assert loss.item() == pytest.approx(weight / 18)
    with pytest.raises(ConfigError, match=r"stage1\.loss\.axis_weights names \['w'\]"):
        stage1_loss({"main": targets}, targets, None, LossConfig(aux=False, axis_weights={"w": 2.0}), spec=spec)


@pytest.mark.parametrize("backbone", ["test_convnext", "resnet10t"])
def test_stem_surgery_doubles_the_backbone_output_map(backbone):
    cfg = load_config("demo", [f"stage1.model.backbone={backbone}"]).stage1.model
    dims = ModelDims(n_frames=3, channels=3, n_telemetry=4, n_extra=0, n_targets=18, n_aux=27,
                     aux_head=False)
    x = torch.zeros(1, input_planes_count(cfg, dims), 64, 128)  # the demo's frames + coordinates
    plain = build_model(cfg, dims).backbone.forward_features(x).shape
    cut = build_model(cfg.model_copy(update={"stem_stride_divisor": 2}), dims)
    shape = cut.backbone.forward_features(x).shape
    assert shape[1] == plain[1] and (shape[2], shape[3]) == (2 * plain[2], 2 * plain[3])
    # Same parameters: a pretrained checkpoint still loads.
    assert [p.shape for p in cut.parameters()] == [p.shape for p in build_model(cfg, dims).parameters()]
    with pytest.raises(ValueError, match="does not divide"):
        build_model(cfg.model_copy(update={"stem_stride_divisor": 3}), dims)


def test_coordinate_and_frame_difference_planes_follow_the_frames():
    cfg = load_config("demo", ["stage1.model.backbone=test_convnext", "stage1.model.coord_channels=false",
                               "stage1.model.frame_diffs=false"]).stage1.model
    dims = ModelDims(n_frames=3, channels=3, n_telemetry=4, n_extra=0, n_targets=18, n_aux=27,
                     aux_head=False, image_size=(32, 64))
    images = torch.randint(0, 256, (2, 3, 64, 128, 3), dtype=torch.uint8)
    plain = build_model(cfg, dims).input_planes(images)
    both = build_model(cfg.model_copy(update={"coord_channels": True, "frame_diffs": True}), dims)
    x = both.input_planes(images)
    # 9 frame channels, 6 differences (frames 1-0 and 2-1), 2 coordinates; at the model's size.
    assert plain.shape == (2, 9, 32, 64) and x.shape == (2, 17, 32, 64)
    torch.testing.assert_close(x[:, :9], plain)
    torch.testing.assert_close(x[:, 9:12], plain[:, 3:6] - plain[:, 0:3])
    torch.testing.assert_close(x[:, 12:15], plain[:, 6:9] - plain[:, 3:6])
    rows, cols = x[0, 15], x[0, 16]
    assert rows[0, 0] == -1 and rows[-1, 0] == 1 and torch.all(rows[:, 0] == rows[:, -1])
    assert cols[0, 0] == -1 and cols[0, -1] == 1 and torch.all(cols[0] == cols[-1])
    assert torch.equal(x[1, 15:], x[0, 15:])  # the same for every row of the batch
    # The backbone's stem takes the extra planes and the whole model runs.
    stem = next(m for m in both.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    assert stem.in_channels == 17
    assert both.image_features(images).shape[0] == 2
