"""Stage-1 features read from a fake stage-1 run written through the artifact store with the
documented files (oof.parquet, oof_emb.npy, test.parquet, fold<k>/test.parquet, test_emb.npy):
this checks the reader against the contract, not against stage 1's code."""

import numpy as np
import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset

from features.build import build_features
from features.stage1 import Stage1MissingError, derived_motion
from trajstack.artifacts import (
    OOF_EMB_FILE,
    OOF_FILE,
    TEST_EMB_FILE,
    TEST_FILE,
    ArtifactStore,
    FoldMismatchError,
)
from trajstack.config import ConfigError, load_config
from trajstack.folds import ensure_folds
from trajstack.tables import read_table


def aux_columns(spec):
    """The 27 aux names of the contract: v{axis}_{k} k=0..4, a{axis}_{k} k=0..3."""
    n = spec.n_horizons
    return ([f"v{a}_{k}" for a in spec.axes for k in range(n - 1)]
            + [f"a{a}_{k}" for a in spec.axes for k in range(n - 2)])


def write_fake_stage1_run(cfg, name="fake", fold_hash=None, noise=0.1, emb_dim=6, seed=0):
    """A finished stage-1 run: predictions = labels + noise (OOF), random for test."""
    spec = cfg.dataset
    folds = ensure_folds(cfg)
    rng = np.random.default_rng(seed)
    train = read_table(cfg.data_dir, spec, "train")
    test = read_table(cfg.data_dir, spec, "test")
    targets, aux = spec.target_columns, aux_columns(spec)
    run = ArtifactStore(cfg.experiment_dir).run(
        "stage1", name, {"stage1": {"fake": True}}, inputs={},
        fold_hash=folds.hash if fold_hash is None else fold_hash)
    run.begin()
    # Rows deliberately not in train-table order: the reader must align by ID.
    order = rng.permutation(len(train))
    ids = train["ID"].to_numpy()[order]
    preds = train[targets].to_numpy()[order] + noise * rng.normal(size=(len(train), len(targets)))
    oof = pd.concat([pd.DataFrame({"ID": ids, "fold": folds.fold_of(ids)}),
                     pd.DataFrame(preds, columns=targets),
                     pd.DataFrame(rng.normal(size=(len(ids), len(aux))), columns=aux)], axis=1)
    run.write_parquet(OOF_FILE, oof)
    run.write_npy(OOF_EMB_FILE, rng.normal(size=(len(ids), emb_dim)).astype(np.float32))
    per_fold = []
    for k in range(folds.n_splits):
        fold_test = pd.concat([test[["ID"]], pd.DataFrame(
            rng.normal(size=(len(test), len(targets) + len(aux))), columns=targets + aux)], axis=1)
        (run.dir / f"fold{k}").mkdir(exist_ok=True)
        run.write_parquet(f"fold{k}/{TEST_FILE}", fold_test)
        run.write_npy(f"fold{k}/{TEST_EMB_FILE}", rng.normal(size=(len(test), emb_dim)).astype(np.float32))
        per_fold.append(fold_test)
    mean = per_fold[0].copy()
    mean[targets + aux] = np.mean([f[targets + aux].to_numpy() for f in per_fold], axis=0)
    run.write_parquet(TEST_FILE, mean)
    run.finish(scores={"mae": float(np.mean(np.abs(preds - train[targets].to_numpy()[order])))})
    return run.dir


@pytest.fixture()
def cfg(tmp_path):
    ds = make_tiny_dataset(tmp_path / "data", n_scenes=9, rows_per_scene=3, n_test_scenes=2, seed=4)
    return load_config("demo", [f"data_dir={ds.root}", f"output_dir={tmp_path / 'out'}",
                                "folds.n_splits=3", "features.builders=[telemetry, stage1]"])


def test_stage1_features_are_oof_for_train_and_fold_mean_for_test(cfg):
    run_dir = write_fake_stage1_run(cfg)
    table = build_features(cfg, ensure_folds(cfg))
    oof = pd.read_parquet(run_dir / OOF_FILE).set_index("ID")
    test = pd.read_parquet(run_dir / TEST_FILE).set_index("ID")
    train_feats = table.train.set_index("ID")
    assert np.allclose(train_feats["s1_x_5"], oof.loc[train_feats.index, "x_5"])
    assert np.allclose(train_feats["s1_vy_2"], oof.loc[train_feats.index, "vy_2"])
    assert np.allclose(table.test.set_index("ID")["s1_z_0"], test.loc[table.test["ID"], "z_0"])
    assert {"s1_dvx_0", "s1_dax_4"} <= set(table.train.columns)
    assert "fold" not in " ".join(table.feature_columns).split()


def test_derived_motion_of_constant_speed_path(cfg):
    spec = cfg.dataset
    pos = np.zeros((1, spec.n_horizons, 3))
    pos[0, :, 0] = 10.0 * np.asarray(spec.horizons_s)  # 10 m/s straight ahead
    motion = derived_motion(pos.reshape(1, -1), spec)
    assert motion["dvx_0"][0] == pytest.approx(10.0) and motion["dvx_5"][0] == pytest.approx(10.0)
    assert motion["dax_3"][0] == pytest.approx(0.0) and motion["dvy_1"][0] == 0.0


def test_embedding_pca_option_is_removed(cfg, tmp_path):
    # Per-network PCA components of the embeddings meant a different thing for every network
    # (features/stage1.py docstring): the option is gone, and a config naming it is refused.
    with pytest.raises(ConfigError, match=r"features\.stage1\.pca_components"):
        load_config("demo", [f"output_dir={tmp_path}", "features.stage1.pca_components=2"])
    write_fake_stage1_run(cfg)
    table = build_features(cfg, ensure_folds(cfg))
    assert not [c for c in table.feature_columns if "emb" in c]


def test_stage1_run_on_other_folds_is_refused(cfg):
    write_fake_stage1_run(cfg, fold_hash="0123456789abcdef")
    with pytest.raises(FoldMismatchError, match="built on folds 0123456789abcdef"):
        build_features(cfg, ensure_folds(cfg))


def test_missing_stage1_says_run_stage1_first(cfg):
    with pytest.raises(Stage1MissingError, match="make stage1.*features.stage1=false"):
        build_features(cfg, ensure_folds(cfg))
    cfg.features.stage1.enabled = False
    assert build_features(cfg, ensure_folds(cfg)).feature_columns[0] == "vEgo"
