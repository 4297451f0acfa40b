"""Stage 1 end to end on tiny data: the real demo config, shrunk by overrides (1 epoch, tiny net).

Covers: OOF coverage and fold exclusion, artifact layout, checkpoint reload, fold-level resume,
NaN telemetry, and DDP with two CPU processes (gloo) matching one process.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from dataset_factory import make_tiny_dataset

import stage1_nn.train as train_module
from stage1_nn.data import aux_target_names
from stage1_nn.predict import predict_checkpoint
from stage1_nn.resume import RESUME_FILE
from trajstack.artifacts import (
    CHECKPOINT_FILE,
    OOF_EMB_FILE,
    OOF_FILE,
    TEST_EMB_FILE,
    TEST_FILE,
    TRAIN_IDS_FILE,
    ArtifactError,
)
from trajstack.config import load_config
from trajstack.folds import assign_folds, load_folds
from trajstack.physics import per_metre_scale, physics_baseline
from trajstack.tables import read_table

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
N_SPLITS = 3
SHRINK = [
    "stage1.model.backbone=test_convnext", "stage1.epochs=1", "stage1.batch_size=2",
    "stage1.progress=false", "stage1.threads=1", f"folds.n_splits={N_SPLITS}", "cache.workers=1",
]


def _overrides(data_root: Path, out: Path, exp: str) -> list[str]:
    return [f"data_dir={data_root}", f"output_dir={out}", f"experiment={exp}", *SHRINK]


@contextlib.contextmanager
def counting_fit_fold():
    """Record which folds `run_stage1` trains (module-level patch, restored on exit)."""
    calls: list[int] = []
    original = train_module.fit_fold

    def counting(cfg, data, fold, run, env):
        calls.append(fold)
        return original(cfg, data, fold, run, env)

    train_module.fit_fold = counting
    try:
        yield calls
    finally:
        train_module.fit_fold = original


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One full 3-fold run on a tiny dataset whose telemetry has NaN holes."""
    root = tmp_path_factory.mktemp("stage1_train")
    data = make_tiny_dataset(root / "data", n_scenes=6, rows_per_scene=2, seed=3, n_test_scenes=2)
    table = data.read_table("train")
    spec = data.spec
    # NaN in a float, a bool and the category column of some rows: imputed, never a crash
    for col in (spec.columns_of_kind("float")[0], spec.columns_of_kind("bool")[0],
                spec.columns_of_kind("category")[0]):
        table.loc[[1, 4], col] = ""
    data.write_table("train", table)
    cfg = load_config("demo", _overrides(data.root, root / "out", "tiny"))
    with counting_fit_fold() as calls:
        run = train_module.run_stage1(cfg)
    return {"root": root, "data": data, "cfg": cfg, "run": run, "calls": calls}


def test_oof_covers_every_train_id_once_from_the_model_that_excluded_it(trained):
    cfg, run, data = trained["cfg"], trained["run"], trained["data"]
    spec = cfg.dataset
    assert trained["calls"] == list(range(N_SPLITS))
    oof = pd.read_parquet(run.dir / OOF_FILE)
    assert list(oof.columns) == ["ID", "fold", *spec.target_columns, *aux_target_names(spec)]
    assert oof["ID"].tolist() == sorted(data.train_ids)  # each train ID exactly once, sorted
    assert np.isfinite(oof[spec.target_columns].to_numpy()).all()
    folds = load_folds(cfg.experiment_dir / "folds.csv")
    np.testing.assert_array_equal(oof["fold"].to_numpy(), folds.fold_of(oof["ID"].to_numpy()))
    for k in range(N_SPLITS):
        seen = set(np.load(run.dir / f"fold{k}" / TRAIN_IDS_FILE).tolist())
        predicted = set(oof.loc[oof["fold"] == k, "ID"])
        assert seen.isdisjoint(predicted)  # fold k's model never trained on what it predicted
        assert seen | predicted == set(data.train_ids)
    emb = np.load(run.dir / OOF_EMB_FILE)
    assert emb.shape[0] == len(oof) and np.isfinite(emb).all()


def test_artifacts_and_scores(trained):
    cfg, run, data = trained["cfg"], trained["run"], trained["data"]
    spec = cfg.dataset
    test = pd.read_parquet(run.dir / TEST_FILE)
    assert test["ID"].tolist() == sorted(data.test_ids)
    assert list(test.columns) == ["ID", *spec.target_columns, *aux_target_names(spec)]
    per_fold = [pd.read_parquet(run.dir / f"fold{k}" / TEST_FILE) for k in range(N_SPLITS)]
    mean = np.mean([p[spec.target_columns].to_numpy() for p in per_fold], axis=0)
    np.testing.assert_allclose(test[spec.target_columns].to_numpy(), mean, rtol=1e-6)
    for k in range(N_SPLITS):
        fold_dir = run.dir / f"fold{k}"
        assert np.load(fold_dir / TEST_EMB_FILE).shape[0] == len(data.test_ids)
        assert (fold_dir / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
        record = json.loads((fold_dir / "metrics.jsonl").read_text().splitlines()[-1])
        assert {"epoch", "train_loss", "val_mae", "lr_head", "lr_backbone"} <= set(record)
    meta = json.loads((run.dir / "meta.json").read_text())
    assert meta["status"] == "done" and meta["fold_hash"]
    assert set(meta["scores"]["per_fold"]) == {f"fold{k}" for k in range(N_SPLITS)}
    assert np.isfinite(meta["scores"]["mae"])


def test_checkpoint_reloads_to_identical_predictions(trained):
    run = trained["run"]
    ckpt = run.dir / "fold0" / CHECKPOINT_FILE
    payload = torch.load(ckpt, weights_only=True)
    assert {"state_dict", "model_config", "dims", "encoder", "config"} <= set(payload)
    oof = pd.read_parquet(run.dir / OOF_FILE)
    fold0 = oof[oof["fold"] == 0].reset_index(drop=True)
    frame, emb = predict_checkpoint(ckpt, split="train", ids=fold0["ID"].tolist())
    assert frame["ID"].tolist() == fold0["ID"].tolist()
    cols = [c for c in frame.columns if c != "ID"]
    np.testing.assert_allclose(frame[cols].to_numpy(), fold0[cols].to_numpy(), atol=1e-5)
    np.testing.assert_allclose(emb, np.load(run.dir / OOF_EMB_FILE)[(oof["fold"] == 0).to_numpy()], atol=1e-5)
    test_frame, _ = predict_checkpoint(ckpt, split="test")
    np.testing.assert_allclose(test_frame[cols].to_numpy(),
                               pd.read_parquet(run.dir / "fold0" / TEST_FILE)[cols].to_numpy(), atol=1e-5)


def test_resume_skips_done_folds(trained):
    cfg, run = trained["cfg"], trained["run"]
    with counting_fit_fold() as calls:
        train_module.run_stage1(cfg)  # finished run: nothing is trained
        assert calls == []
        # an interrupted run: fold 1 never finished and the run is not marked done
        (run.dir / "fold1" / "done.json").unlink()
        meta = json.loads((run.dir / "meta.json").read_text())
        (run.dir / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
        again = train_module.run_stage1(cfg)
        assert calls == [1]
        assert again.is_done()
    oof = pd.read_parquet(run.dir / OOF_FILE)
    assert oof["ID"].is_unique and len(oof) == len(trained["data"].train_ids)


def test_ddp_two_cpu_processes_match_one_process_coverage(trained):
    root, data = trained["root"], trained["data"]
    args = ["--config", "demo", *_overrides(data.root, root / "out", "tiny_ddp"), "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "stage1_nn.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)  # a hang guard only
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    single = pd.read_parquet(trained["run"].dir / OOF_FILE)
    ddp_dir = root / "out" / "tiny_ddp" / "stage1" / trained["cfg"].stage1.name
    ddp = pd.read_parquet(ddp_dir / OOF_FILE)
    assert ddp["ID"].tolist() == single["ID"].tolist()  # every ID once: no loss, no duplicates
    np.testing.assert_array_equal(ddp["fold"].to_numpy(), single["fold"].to_numpy())
    assert pd.read_parquet(ddp_dir / TEST_FILE)["ID"].tolist() == sorted(data.test_ids)


KILLED_IN_EPOCH_2 = """
import sys
import stage1_nn.train as train
original, calls = train.train_one_epoch, []
def one_epoch(*args, **kwargs):  # every rank dies at the start of its second epoch
    calls.append(1)
    if len(calls) == 2:
        raise SystemExit(3)
    return original(*args, **kwargs)
train.train_one_epoch = one_epoch
sys.exit(train.main(sys.argv[1:]))
"""


def test_a_killed_ddp_fold_resumes_each_rank_after_the_last_finished_epoch(trained):
    """Two processes (gloo) killed at the start of the second epoch: the rerun resumes both ranks
    (each with its own generators) after the first and writes bitwise what an unbroken
    two-process run writes."""
    root, data = trained["root"], trained["data"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    extra = ["stage1.folds=[0]", "stage1.epochs=2", "stage1.augment.noise_p=1.0"]

    def stage1(exp: str, *launch: str) -> subprocess.CompletedProcess:
        args = ["--config", "demo", *_overrides(data.root, root / "out", exp), *extra]
        launch = launch or ("-m", "stage1_nn.train", "--nproc", "2")
        return subprocess.run([sys.executable, *launch, *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=900)  # a hang guard only

    unbroken = stage1("ddp_unbroken")
    assert unbroken.returncode == 0, unbroken.stderr[-3000:]
    script = root / "killed_in_epoch_2.py"
    script.write_text(KILLED_IN_EPOCH_2)
    killed = stage1("ddp_killed", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script))
    assert killed.returncode != 0
    run_dirs = [root / "out" / exp / "stage1" / trained["cfg"].stage1.name for exp in ("ddp_unbroken", "ddp_killed")]
    assert torch.load(run_dirs[1] / "fold0" / RESUME_FILE, weights_only=True)["epoch"] == 1
    resumed = stage1("ddp_killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stage1 fold 0: resuming after epoch 1" in (run_dirs[1] / "log.txt").read_text()
    assert not (run_dirs[1] / "fold0" / RESUME_FILE).exists()
    for name in (OOF_FILE, TEST_FILE):
        pd.testing.assert_frame_equal(pd.read_parquet(run_dirs[1] / name), pd.read_parquet(run_dirs[0] / name))


def test_other_switches_train_and_predict(trained):
    """The switches the demo leaves off: TTA, photometric aug, no EMA, last epoch, BatchNorm, resize,
    SAM with the warmup/hold/cool-down schedule, cutout and shift-scale, stem surgery."""
    root, data = trained["root"], trained["data"]
    cfg = load_config("demo", [*_overrides(data.root, root / "out", "tiny_switches"), "stage1.folds=[0]",
                               "stage1.tta_flip=true", "stage1.augment.noise_p=1.0", "stage1.augment.blur_p=1.0",
                               "stage1.augment.brightness_p=1.0", "stage1.ema.enabled=false", "stage1.select=last",
                               "stage1.model.telemetry.batchnorm=true", "stage1.image_size=[32,64]",
                               "stage1.loss.normalize_targets=false", "stage1.optim.grad_clip=0",
                               "stage1.mode=row", "stage1.loss.aux=false", "stage1.channels_last=false",
                               "stage1.optim.name=sam", "stage1.optim.schedule=hold",
                               "stage1.augment.cutout_p=1.0", "stage1.augment.shift_scale_p=1.0",
                               "stage1.model.stem_stride_divisor=2"])
    run = train_module.run_stage1(cfg)
    oof = pd.read_parquet(run.dir / OOF_FILE)
    assert set(oof["fold"]) == {0} and np.isfinite(oof.drop(columns=["ID", "fold"]).to_numpy()).all()
    frame, _ = predict_checkpoint(run.dir / "fold0" / CHECKPOINT_FILE, split="train", ids=oof["ID"].tolist())
    np.testing.assert_allclose(frame.drop(columns="ID").to_numpy(), oof.drop(columns=["ID", "fold"]).to_numpy(),
                               atol=1e-5)


TOOLBOX_SWITCHES = {
    # input mixup mixes the physics baseline with the targets; dataset pixel statistics; the
    # next-row telemetry aux head
    "mixup_dataset_norm_next": (["stage1.mixup.p=1.0", "stage1.baseline=physics", "stage1.model.pixel_norm=dataset",
                                 "stage1.loss.next_telemetry_weight=0.5"], {"train_loss_next"}),
    # manifold mixup before the LSTM; per-sequence pixel statistics; displacement output + jerk
    "manifold_sequence_norm_disp_jerk": (["stage1.mixup.manifold_p=1.0", "stage1.model.pixel_norm=sequence",
                                          "stage1.model.output=displacements", "stage1.loss.jerk_weight=0.1"],
                                         {"train_loss_jerk"}),
    # row mode (no LSTM sequences): both mixups, displacements with the physics baseline, the
    # backbone's own pixel statistics (the demo's default is per-sequence)
    "row_mode_both_mixups": (["stage1.mode=row", "stage1.mixup.p=0.5", "stage1.mixup.manifold_p=0.5",
                              "stage1.model.pixel_norm=imagenet",
                              "stage1.model.output=displacements", "stage1.baseline=physics",
                              "stage1.loss.next_telemetry_weight=0.2"], {"train_loss_next"}),
}


@pytest.mark.parametrize("name", TOOLBOX_SWITCHES)
def test_toolbox_switches_train_and_reload(trained, name):
    """The stage-1 toolbox switches (issue 16) run through `trajstack stage1` on a tiny config,
    log their loss terms, and the checkpoint predicts what the run's OOF holds."""
    root, data = trained["root"], trained["data"]
    switches, logged = TOOLBOX_SWITCHES[name]
    cfg = load_config("demo", [*_overrides(data.root, root / "out", f"tiny_{name}"), "stage1.folds=[0]", *switches])
    run = train_module.run_stage1(cfg)
    oof = pd.read_parquet(run.dir / OOF_FILE)
    assert set(oof["fold"]) == {0} and np.isfinite(oof.drop(columns=["ID", "fold"]).to_numpy()).all()
    record = json.loads((run.dir / "fold0" / "metrics.jsonl").read_text().splitlines()[-1])
    assert logged <= set(record) and all(np.isfinite(record[k]) and record[k] > 0 for k in logged)
    frame, _ = predict_checkpoint(run.dir / "fold0" / CHECKPOINT_FILE, split="train", ids=oof["ID"].tolist())
    np.testing.assert_allclose(frame.drop(columns="ID").to_numpy(), oof.drop(columns=["ID", "fold"]).to_numpy(),
                               atol=1e-5)


def test_physics_baseline_run_reloads_and_records_its_vehicle(trained):
    """`stage1.baseline=physics`: the checkpoint adds the same baseline back when it predicts, and
    the vehicle model the baseline came from is part of the run's signature."""
    root, data = trained["root"], trained["data"]
    overrides = [*_overrides(data.root, root / "out", "tiny_physics"), "stage1.folds=[0]",
                 "stage1.baseline=physics", "stage1.tta_flip=true"]
    run = train_module.run_stage1(load_config("demo", overrides))
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["features"]["physics"]["wheelbase_m"] == 2.7
    oof = pd.read_parquet(run.dir / OOF_FILE)
    frame, _ = predict_checkpoint(run.dir / "fold0" / CHECKPOINT_FILE, split="train", ids=oof["ID"].tolist())
    np.testing.assert_allclose(frame.drop(columns="ID").to_numpy(), oof.drop(columns=["ID", "fold"]).to_numpy(),
                               atol=1e-5)
    other_vehicle = load_config("demo", [*overrides, "features.physics.wheelbase_m=3.1"])
    with pytest.raises(ArtifactError, match="another config"):
        train_module.run_stage1(other_vehicle)


def test_per_metre_axes_run_scales_targets_predicts_metres_and_is_in_the_signature(trained):
    """`stage1.per_metre_axes=[z]`: the heads are normalised to the fold's per-metre residuals, the
    OOF / test predictions are in metres (the checkpoint, flip TTA included, predicts the same),
    and the option is part of the run's signature."""
    root, data = trained["root"], trained["data"]
    overrides = [*_overrides(data.root, root / "out", "tiny_per_metre"), "stage1.folds=[0]",
                 "stage1.baseline=physics", "stage1.tta_flip=true", "stage1.per_metre_axes=[z]"]
    cfg = load_config("demo", overrides)
    run = train_module.run_stage1(cfg)
    spec = cfg.dataset
    assert yaml.safe_load((run.dir / "config.yaml").read_text())["stage1"]["per_metre_axes"] == ["z"]
    # The z heads' standardisation: mean / std of (target - baseline) / distance on fold 0's training rows.
    table = read_table(cfg.data_dir, spec, "train")
    trained_on = table[spec.id_column].isin(np.load(run.dir / "fold0" / TRAIN_IDS_FILE)).to_numpy()
    per_metre = ((table[spec.target_columns].to_numpy() - physics_baseline(table, spec, cfg.features.physics))
                 / per_metre_scale(table, spec, cfg.features.physics, ["z"]))[trained_on]
    state = torch.load(run.dir / "fold0" / CHECKPOINT_FILE, weights_only=True)["state_dict"]
    np.testing.assert_allclose(state["main_shift"].numpy(), np.nanmean(per_metre, 0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["main_scale"].numpy(), np.nanstd(per_metre, 0) + 1e-6, rtol=1e-4)
    oof = pd.read_parquet(run.dir / OOF_FILE)
    frame, _ = predict_checkpoint(run.dir / "fold0" / CHECKPOINT_FILE, split="train", ids=oof["ID"].tolist())
    np.testing.assert_allclose(frame.drop(columns="ID").to_numpy(), oof.drop(columns=["ID", "fold"]).to_numpy(),
                               atol=1e-5)
    test_frame, _ = predict_checkpoint(run.dir / "fold0" / CHECKPOINT_FILE, split="test")
    np.testing.assert_allclose(test_frame.drop(columns="ID").to_numpy(),
                               pd.read_parquet(run.dir / "fold0" / TEST_FILE).drop(columns="ID").to_numpy(), atol=1e-5)
    with pytest.raises(ArtifactError, match="another config"):
        train_module.run_stage1(load_config("demo", [*overrides[:-1], "stage1.per_metre_axes=[]"]))


def test_rows_without_labels_leave_loss_and_score_and_still_get_oof(tmp_path):
    """Missing train labels: two rows with none and one with some; training, OOF and scores go on."""
    data = make_tiny_dataset(tmp_path / "data", n_scenes=6, rows_per_scene=2, seed=3, n_test_scenes=1)
    table = data.read_table("train")
    spec = data.spec
    table.loc[[0, 5], spec.target_columns] = ""
    table.loc[7, spec.target_columns[:4]] = ""  # partly labelled: its known values still train
    data.write_table("train", table)
    unlabelled = set(table.loc[[0, 5, 7], "ID"])
    run = train_module.run_stage1(load_config("demo", _overrides(data.root, tmp_path / "out", "nan_labels")))
    oof = pd.read_parquet(run.dir / "oof.parquet")
    assert oof["ID"].tolist() == sorted(data.train_ids)  # unlabelled rows are predicted too
    assert np.isfinite(oof[spec.target_columns].to_numpy()).all()
    for k in range(N_SPLITS):
        record = json.loads((run.dir / f"fold{k}" / "metrics.jsonl").read_text().splitlines()[-1])
        assert np.isfinite([record["train_loss"], record["val_mae"]]).all()
    scores = json.loads((run.dir / "meta.json").read_text())["scores"]
    truth = read_table(data.root, spec, "train").set_index("ID").loc[oof["ID"], spec.target_columns]
    truth = truth.to_numpy(float)
    scored = ~oof["ID"].isin(unlabelled).to_numpy()
    expected = np.abs(truth[scored] - oof.loc[scored, spec.target_columns].to_numpy()).mean()
    assert scores["mae"] == pytest.approx(expected)
    assert scores["n_rows"] == len(oof) - 3 and scores["n_unlabelled"] == 3
    assert all(np.isfinite(v) for v in scores["per_fold"].values())


@pytest.mark.parametrize("select", ["last", "holdout"])
def test_no_scored_row_reaches_epoch_selection(trained, monkeypatch, select):
    """The rows each epoch's weights are judged on (the selection metric) are never the scored
    fold's, and with `holdout` they are whole training scenes the net did not train on. And the
    scored fold's labels cannot move the fold's predictions: changing them leaves the kept
    weights bitwise the same."""
    root = trained["root"]
    offered: list[np.ndarray | None] = []
    original = train_module.EpochChoice.offer

    def recording(self, epoch, model, selection, targets):
        offered.append(None if selection is None else selection["rows"].copy())
        return original(self, epoch, model, selection, targets)

    monkeypatch.setattr(train_module.EpochChoice, "offer", recording)
    predictions = []
    for shift in (0.0, 5.0):
        data = make_tiny_dataset(root / f"data_sel_{select}_{shift}", n_scenes=6, rows_per_scene=2,
                                 seed=3, n_test_scenes=2)
        cfg = load_config("demo", [*_overrides(data.root, root / "out", f"sel_{select}_{shift}"),
                                   "stage1.folds=[0]", "stage1.epochs=2", f"stage1.select={select}",
                                   "stage1.select_fraction=0.3"])
        table = data.read_table("train")
        # Folds depend on the scenes only: those of the unchanged table are the run's.
        fold_of = assign_folds(read_table(data.root, cfg.dataset, "train"), cfg.dataset, cfg.folds)
        scored = (fold_of.set_index("ID").loc[table["ID"], "fold"] == 0).to_numpy()
        targets = cfg.dataset.target_columns
        for col in targets:  # fold-0 labels only
            table[col] = table[col].astype(float) + np.where(scored, shift, 0.0)
        data.write_table("train", table)
        offered.clear()
        run = train_module.run_stage1(cfg)
        assert len(offered) == 2  # every epoch is offered to the one choice
        train_ids = set(np.load(run.dir / "fold0" / TRAIN_IDS_FILE).tolist())
        folds = load_folds(cfg.experiment_dir / "folds.csv")
        assert ((folds.fold_of(table["ID"]) == 0) == scored).all()
        scenes = folds.scene_of(table["ID"].to_numpy(str))
        for rows in offered:
            if select == "last":
                assert rows is None  # nothing scored: the final weights are kept
                continue
            assert len(rows) and not scored[rows].any()
            assert train_ids.isdisjoint(table["ID"].to_numpy(str)[rows])
            assert set(scenes[rows]).isdisjoint(scenes[np.isin(table["ID"], list(train_ids))])
        oof = pd.read_parquet(run.dir / OOF_FILE)
        predictions.append(oof[targets].to_numpy())
    np.testing.assert_array_equal(predictions[0], predictions[1])


def test_select_best_is_refused_with_the_reason():
    with pytest.raises(Exception, match="scored fold"):
        load_config("demo", ["stage1.select=best"])


def test_folds_in_worker_processes_match_the_sequential_run(trained):
    """`stage1.fold_workers=2`: the folds train two at a time in spawned processes (one torch
    thread each, as the sequential fixture run had) and every output is bitwise the same; the
    setting stays out of the run's signature."""
    root, data, single = trained["root"], trained["data"], trained["run"]
    cfg = load_config("demo", [*_overrides(data.root, root / "out", "tiny_workers"),
                               "stage1.threads=2", "stage1.fold_workers=2"])
    assert train_module.fold_workers(cfg, train_module.setup("cpu"), N_SPLITS) == 2
    run = train_module.run_stage1(cfg)
    assert run.is_done() and run.config_hash == single.config_hash
    for name in (OOF_FILE, TEST_FILE, *(f"fold{k}/{f}" for k in range(N_SPLITS) for f in (TEST_EMB_FILE,))):
        a, b = run.dir / name, single.dir / name
        if name.endswith(".npy"):
            np.testing.assert_array_equal(np.load(a), np.load(b))
        else:
            pd.testing.assert_frame_equal(pd.read_parquet(a), pd.read_parquet(b))
    np.testing.assert_array_equal(np.load(run.dir / OOF_EMB_FILE), np.load(single.dir / OOF_EMB_FILE))
    log = (run.dir / "log.txt").read_text()  # the workers' lines reach the run's log, whole
    for k in range(N_SPLITS):
        assert f"stage1 fold {k}: kept epoch 1" in log and f"fold {k} epoch 1: train loss" in log
        assert (run.dir / f"fold{k}" / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    # a worker's checkpoint predicts the test rows as the run wrote them
    test_frame, _ = predict_checkpoint(run.dir / "fold1" / CHECKPOINT_FILE, split="test")
    written = pd.read_parquet(run.dir / "fold1" / TEST_FILE)
    np.testing.assert_allclose(test_frame.drop(columns="ID").to_numpy(), written.drop(columns="ID").to_numpy(),
                               atol=1e-5)


def test_a_failing_fold_in_a_worker_names_itself_and_the_others_are_kept(trained):
    """Fold 1 cannot write its folder (a file stands in its place): the error says fold 1 and why,
    fold 0, trained beside it, keeps its files, and a rerun trains fold 1 alone."""
    root, data = trained["root"], trained["data"]
    cfg = load_config("demo", [*_overrides(data.root, root / "out", "tiny_fail"), "stage1.folds=[0,1]",
                               "stage1.threads=2", "stage1.fold_workers=2"])
    run_dir = cfg.experiment_dir / "stage1" / cfg.stage1.name
    run_dir.mkdir(parents=True)
    (run_dir / "fold1").write_text("in the way")
    with pytest.raises(FileExistsError) as failure:
        train_module.run_stage1(cfg)
    note = " ".join(getattr(failure.value, "__notes__", []))
    assert "stage1 fold 1 failed" in note and "folds [0] finished and are kept" in note
    assert (run_dir / "fold0" / "done.json").exists() and (run_dir / "fold0" / OOF_FILE).exists()
    assert json.loads((run_dir / "meta.json").read_text())["status"] == "running"
    kept = (run_dir / "fold0" / OOF_FILE).stat().st_mtime_ns
    (run_dir / "fold1").unlink()
    run = train_module.run_stage1(cfg)
    assert run.is_done() and (run_dir / "fold0" / OOF_FILE).stat().st_mtime_ns == kept
    assert set(pd.read_parquet(run_dir / OOF_FILE)["fold"]) == {0, 1}


def test_fold_workers_auto_follows_the_threads_and_is_one_on_a_gpu_or_under_ddp():
    from stage1_nn.distributed import DistEnv
    from trajstack.config import ConfigError

    cpu, ddp, gpu = DistEnv(), DistEnv(rank=0, world=2), DistEnv(device=torch.device("cuda"))
    assert train_module.fold_workers(load_config("demo", ["stage1.threads=2"]), cpu, 5) == 2
    assert train_module.fold_workers(load_config("demo", ["stage1.threads=8"]), cpu, 5) == 5  # folds left
    assert train_module.fold_workers(load_config("demo", ["stage1.threads=1"]), cpu, 5) == 1
    assert train_module.fold_workers(load_config("demo", ["stage1.threads=2"]), cpu, 1) == 1
    for env in (ddp, gpu):
        assert train_module.fold_workers(load_config("demo", ["stage1.threads=8"]), env, 5) == 1
        with pytest.raises(ConfigError, match="stage1.fold_workers=2 .* use stage1.fold_workers=auto or 1"):
            train_module.fold_workers(load_config("demo", ["stage1.fold_workers=2"]), env, 5)
    with pytest.raises(ValueError, match="fold_workers"):
        load_config("demo", ["stage1.fold_workers=0"])


def _watch_a_parent(parent: int, seconds: float) -> None:
    """Child process: watch `parent` (every 50 ms) and sleep; exits 0 unless the watch exits it."""
    train_module.exit_when_parent_dies(parent, interval_s=0.05)
    time.sleep(seconds)


def test_a_fold_worker_exits_when_its_parent_is_gone_and_not_before():
    # A killed `trajstack stage1` must not leave its spawned fold workers training on: the
    # watcher exits its process once the parent is no longer the one it started under.
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    kept = context.Process(target=_watch_a_parent, args=(os.getpid(), 1.0))
    orphaned = context.Process(target=_watch_a_parent, args=(-1, 60.0))  # -1: never its parent
    kept.start(), orphaned.start()
    try:
        orphaned.join(timeout=30)
        kept.join(timeout=30)
    finally:
        for process in (kept, orphaned):
            if process.is_alive():
                process.kill()
    assert orphaned.exitcode == 1      # gone within the watch interval, not after its 60 s sleep
    assert kept.exitcode == 0          # its parent is alive: it slept its second and returned


class _Killed(Exception):
    """Stands in for a kill in the middle of an epoch."""


def test_a_killed_fold_resumes_after_its_last_finished_epoch_and_matches_an_unbroken_run(trained, monkeypatch):
    """Killed in its third epoch, a fold keeps its first two (`resume.pt`); the rerun trains the
    third alone and writes bitwise what an unbroken run writes (augmentation, mixup, EMA and the
    holdout epoch choice included), then removes the file. A file of another signature, or of
    another number of processes, is not resumed: the fold starts over and says why."""
    root, data = trained["root"], trained["data"]
    extra = ["stage1.folds=[0]", "stage1.epochs=3", "stage1.select=holdout", "stage1.select_fraction=0.3",
             "stage1.augment.noise_p=1.0", "stage1.augment.brightness_p=0.5",
             "stage1.augment.shift_scale_p=0.5", "stage1.mixup.p=0.5"]
    unbroken = train_module.run_stage1(load_config("demo", [*_overrides(data.root, root / "out", "unbroken"),
                                                            *extra]))
    cfg = load_config("demo", [*_overrides(data.root, root / "out", "killed"), *extra])
    fold_dir = cfg.experiment_dir / "stage1" / cfg.stage1.name / "fold0"
    original, epochs = train_module.train_one_epoch, []

    def train_until(kill_at: int | None):
        def one_epoch(*args, **kwargs):
            epochs.append(kwargs["desc"])
            if len(epochs) == kill_at:
                raise _Killed
            return original(*args, **kwargs)
        epochs.clear()
        monkeypatch.setattr(train_module, "train_one_epoch", one_epoch)

    train_until(kill_at=3)
    with pytest.raises(_Killed):
        train_module.run_stage1(cfg)
    saved = torch.load(fold_dir / RESUME_FILE, weights_only=True)
    assert saved["epoch"] == 2 and not (fold_dir / "done.json").exists()
    assert len((fold_dir / "metrics.jsonl").read_text().splitlines()) == 2

    # the same state under another signature, or saved by two processes: not resumed
    for tampered, why in (({"signature": "another config"}, "is of another run signature"),
                          ({"layout": {**saved["layout"], "processes": 2}}, "was saved with")):
        torch.save({**saved, **tampered}, fold_dir / RESUME_FILE)
        train_until(kill_at=1)
        with pytest.raises(_Killed):
            train_module.run_stage1(cfg)
        assert epochs == ["fold 0 epoch 1/3"]  # started over
        assert not (fold_dir / "metrics.jsonl").exists()  # a fresh log: no epoch finished yet
        assert f"stage1 fold 0: {RESUME_FILE} {why}" in (fold_dir.parent / "log.txt").read_text()

    torch.save(saved, fold_dir / RESUME_FILE)
    train_until(kill_at=None)
    run = train_module.run_stage1(cfg)
    assert epochs == ["fold 0 epoch 3/3"] and run.is_done()
    assert not (fold_dir / RESUME_FILE).exists()
    assert "stage1 fold 0: resuming after epoch 2" in (run.dir / "log.txt").read_text()
    pd.testing.assert_frame_equal(pd.read_parquet(run.dir / OOF_FILE), pd.read_parquet(unbroken.dir / OOF_FILE))
    pd.testing.assert_frame_equal(pd.read_parquet(run.dir / TEST_FILE), pd.read_parquet(unbroken.dir / TEST_FILE))
    np.testing.assert_array_equal(np.load(run.dir / OOF_EMB_FILE), np.load(unbroken.dir / OOF_EMB_FILE))
    curves = [[json.loads(line) for line in (r.dir / "fold0" / "metrics.jsonl").read_text().splitlines()]
              for r in (run, unbroken)]
    for key in ("epoch", "train_loss", "val_mae", "select_mae", "step"):
        assert [r[key] for r in curves[0]] == [r[key] for r in curves[1]]
    kept = [json.loads((r.dir / "fold0" / "done.json").read_text())["kept_epoch"] for r in (run, unbroken)]
    assert kept[0] == kept[1]
