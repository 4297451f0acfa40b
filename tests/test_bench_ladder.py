"""The ladder benchmark: share captured per axis on CV and test, read from finished runs of three
experiments on the same folds; refused across folds; the camera state's absence explained."""

import json

import numpy as np
import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset

from benchmarks.bench_ladder import (
    LadderError,
    camera_state_path,
    collect_ladder,
    experiment_names,
    ladder_commands,
    share_captured,
    to_markdown,
)
from trajstack.artifacts import ArtifactStore, FoldMismatchError
from trajstack.config import load_config
from trajstack.folds import ensure_folds
from trajstack.tables import read_table

# Per-axis prediction offsets (x, y, z): the MAE of each target is exactly the offset.
OFFSETS = {
    "telemetry": {"cv": (0.4, 0.3, 0.2), "test": (0.6, 0.3, 0.2)},
    "stage1": {"cv": (0.5, 0.5, 0.5), "test": (0.5, 0.5, 0.5)},
    "stack": {"cv": (0.3, 0.2, 0.2), "test": (0.3, 0.3, 0.1)},
    "perception": {"cv": (0.2, 0.1, 0.0), "test": (0.3, 0.1, 0.2)},
}


def test_share_captured():
    assert share_captured(0.4, 0.3, 0.2) == pytest.approx(0.5)
    assert share_captured(0.4, 0.4, 0.2) == 0.0
    assert share_captured(0.4, 0.2, 0.2) == pytest.approx(1.0)
    assert share_captured(0.4, 0.5, 0.2) == pytest.approx(-0.5)  # a stack worse than telemetry
    assert share_captured(0.2, 0.1, 0.2) is None  # the camera adds nothing: no share to capture
    assert share_captured(0.2, 0.1, 0.3) is None


@pytest.fixture()
def data(tmp_path):
    ds = make_tiny_dataset(tmp_path / "data", n_scenes=9, rows_per_scene=3, n_test_scenes=2, seed=5)
    spec = ds.spec
    rng = np.random.default_rng(0)
    labels = pd.DataFrame(rng.normal(size=(len(ds.test_ids), len(spec.target_columns))),
                          columns=spec.target_columns)
    labels.insert(0, "ID", ds.test_ids)
    (ds.root / "oracle").mkdir()
    labels.to_csv(ds.root / "oracle" / "test_labels.csv", index=False)
    (ds.root / "oracle" / "floor.json").write_text(json.dumps(
        {"floor_mae": 0.05, "floor_mae_per_axis": {"x": 0.08, "y": 0.05, "z": 0.02}}))
    return ds, labels


def _cfgs(ds, tmp_path, **fold_overrides):
    names = experiment_names("lad")
    return {role: load_config("demo", [f"data_dir={ds.root}", f"output_dir={tmp_path / 'out'}",
                                       f"experiment={names[role]}", "folds.n_splits=3",
                                       *fold_overrides.get(role, [])])
            for role in names}


def _offset(values, offsets, spec):
    shift = np.array([offsets[spec.axes.index(c.split("_")[0])] for c in spec.target_columns])
    return values + shift


def write_run(cfg, stage, name, role, test_labels, fold_hash=None, features=None, scores=None):
    """A finished run whose predictions are the labels shifted by OFFSETS[role]."""
    spec = cfg.dataset
    folds = ensure_folds(cfg)
    train = read_table(cfg.data_dir, spec, "train")
    run = ArtifactStore(cfg.experiment_dir).run(
        stage, name, {"features": features or {}}, inputs={},
        fold_hash=folds.hash if fold_hash is None else fold_hash)
    run.begin(force=True)  # replacing a finished run is part of some tests
    oof = pd.DataFrame(_offset(train[spec.target_columns].to_numpy(), OFFSETS[role]["cv"], spec),
                       columns=spec.target_columns)
    oof.insert(0, "fold", folds.fold_of(train["ID"]))
    oof.insert(0, "ID", train["ID"].to_numpy())
    test = pd.DataFrame(_offset(test_labels[spec.target_columns].to_numpy(), OFFSETS[role]["test"],
                                spec), columns=spec.target_columns)
    test.insert(0, "ID", test_labels["ID"].to_numpy())
    run.write_parquet("oof.parquet", oof.sample(frac=1, random_state=1))  # any row order
    run.write_parquet("test.parquet", test.sample(frac=1, random_state=2))
    run.finish(scores=scores)
    return run.dir


TELEMETRY = {"builders": ["telemetry", "stage1"], "stage1": {"enabled": False}, "files": []}
PERCEPTION = {**TELEMETRY, "files": [{"path": "data/oracle/camera_state.csv", "prefix": "cam_"}]}


def write_ladder(cfgs, labels, perception_fold_hash=None):
    write_run(cfgs["telemetry"], "stage2", "lightgbm", "telemetry", labels, features=TELEMETRY)
    write_run(cfgs["stack"], "stage1", "cnn", "stage1", labels)
    write_run(cfgs["stack"], "blend", cfgs["stack"].blend.run_name, "stack", labels)
    write_run(cfgs["perception"], "stage2", "lightgbm", "perception", labels,
              fold_hash=perception_fold_hash, features=PERCEPTION)


def test_ladder_scores_every_row_and_the_share_per_axis(data, tmp_path):
    ds, labels = data
    cfgs = _cfgs(ds, tmp_path)
    write_ladder(cfgs, labels)
    result = collect_ladder(cfgs)
    rows = {r["role"]: r for r in result["rows"]}
    assert [r["role"] for r in result["rows"]] == ["telemetry", "stage1", "stack", "perception"]
    for role, row in rows.items():
        for split in ("cv", "test"):
            expected = OFFSETS[role][split]
            assert [row[split][a] for a in "xyz"] == pytest.approx(expected)
            assert row[split]["mae"] == pytest.approx(np.mean(expected))
    assert result["share"]["cv"] == pytest.approx(
        {"mae": (0.3 - 0.7 / 3) / (0.3 - 0.1), "x": 0.5, "y": 0.5, "z": 0.0})
    test_share = result["share"]["test"]
    assert test_share["x"] == pytest.approx(1.0) and test_share["y"] == pytest.approx(0.0)
    assert test_share["z"] is None  # the perception oracle is no better on z there
    assert test_share["mae"] == pytest.approx((1.1 - 0.7) / (1.1 - 0.6))
    assert result["floor"] == {"mae": 0.05, "x": 0.08, "y": 0.05, "z": 0.02}
    assert result["n_train"] == 27 and result["n_test"] == 6
    table = to_markdown(result)
    assert "| **share captured** | **33.3%** | **50.0%** | **50.0%** | **0.0%** | **80.0%** | **100.0%** | **0.0%** | **—** |" in table
    assert "| oracle floor" in table and result["fold_hash"] in table


def test_ladder_refuses_experiments_on_different_folds(data, tmp_path):
    ds, labels = data
    cfgs = _cfgs(ds, tmp_path, perception=["folds.seed=7"])
    write_ladder(cfgs, labels)
    with pytest.raises(FoldMismatchError, match="different folds.*lad-ladder-perception"):
        collect_ladder(cfgs)


def test_ladder_refuses_a_run_built_on_other_folds(data, tmp_path):
    ds, labels = data
    cfgs = _cfgs(ds, tmp_path)
    write_ladder(cfgs, labels, perception_fold_hash="0123456789abcdef")
    with pytest.raises(FoldMismatchError, match="built on folds 0123456789abcdef"):
        collect_ladder(cfgs)


def test_ladder_refuses_a_reference_run_made_with_other_features(data, tmp_path):
    ds, labels = data
    cfgs = _cfgs(ds, tmp_path)
    write_ladder(cfgs, labels)
    write_run(cfgs["telemetry"], "stage2", "lightgbm", "telemetry", labels, features=PERCEPTION)
    with pytest.raises(LadderError, match="is not a telemetry reference"):
        collect_ladder(cfgs)


def test_missing_camera_state_says_to_regenerate(tmp_path):
    with pytest.raises(LadderError, match="camera_state.csv is missing.*drivesim v2"):
        camera_state_path(tmp_path)


def test_reference_commands_share_the_config_and_differ_in_features(tmp_path):
    camera = tmp_path / "oracle dir" / "camera_state.csv"
    builders = load_config("demo").features.builders
    assert {"stage1", "image_stats"} <= set(builders)  # the stack reads the frames two ways
    commands = ladder_commands("configs/demo.yaml", "data/demo", "demo", "lightgbm",
                               ["stage2.n_jobs=1"], camera, builders)
    assert list(commands) == ["stack stage1", "stack stage2", "stack blend",
                              "telemetry stage2", "perception stage2"]
    assert "features.stage1=false" not in commands["stack stage2"]
    for role in ("telemetry", "perception"):
        command = commands[f"{role} stage2"]
        assert command[command.index("--exp") + 1] == f"demo-ladder-{role}"
        assert "features.stage1=false" in command and "stage2.n_jobs=1" in command
    files = [a for a in commands["perception stage2"] if a.startswith("features.files=")]
    assert not any(a.startswith("features.files=") for a in commands["telemetry stage2"])
    cfg = load_config("demo", files)  # the override parses, path with a space included
    assert cfg.features.files[0].path == str(camera) and cfg.features.files[0].prefix == "cam_"
    assert cfg.features.active_builders[-1] == "files"
    # Neither reference reads the frames: no stage-1 features and no image statistics.
    for role in ("telemetry", "perception"):
        reference = load_config("demo", [a for a in commands[f"{role} stage2"] if "=" in a
                                         and not a.startswith("-")])
        assert not {"stage1", "image_stats"} & set(reference.features.active_builders)
        assert "traffic_lights" in reference.features.active_builders


def test_ladder_refuses_a_telemetry_reference_with_image_statistics(data, tmp_path):
    ds, labels = data
    cfgs = _cfgs(ds, tmp_path)
    write_ladder(cfgs, labels)
    with_images = {"stage1": {"enabled": False},
                   "builders": ["telemetry", "physics", "image_stats", "stage1"], "files": []}
    write_run(cfgs["telemetry"], "stage2", "lightgbm", "telemetry", labels, features=with_images)
    with pytest.raises(LadderError, match=r"builders reading frames: \['image_stats'\]"):
        collect_ladder(cfgs)


def test_stack_without_stage1_runs_no_stage1_command(tmp_path):
    # With `features.stage1` off, `trajstack stage1` would still train the network (~42 min of
    # CPU at full scale) for nothing, so the ladder must not run it.
    cfg = load_config("configs/cpu_full.yaml", ["features.stage1=false"])
    assert not cfg.features.stage1.enabled
    commands = ladder_commands("configs/cpu_full.yaml", "data/full", "full", "lightgbm",
                               ["features.stage1=false"], tmp_path / "camera_state.csv",
                               cfg.features.builders, cfg.features.stage1.enabled)
    assert list(commands) == ["stack stage2", "stack blend", "telemetry stage2", "perception stage2"]
    with_stage1 = ladder_commands("configs/cpu_full.yaml", "data/full", "full", "lightgbm", [],
                                  tmp_path / "camera_state.csv", cfg.features.builders, True)
    assert list(with_stage1)[0] == "stack stage1"
    assert not any(a == "stage1" for command in commands.values() for a in command)
    assert commands["telemetry stage2"][commands["telemetry stage2"].index("--exp") + 1] == \
        "full-ladder-telemetry"


def test_ladder_without_stage1_names_the_stack_inputs(data, tmp_path):
    ds, labels = data
    cfgs = _cfgs(ds, tmp_path)
    write_run(cfgs["telemetry"], "stage2", "lightgbm", "telemetry", labels, features=TELEMETRY)
    write_run(cfgs["stack"], "blend", cfgs["stack"].blend.run_name, "stack", labels,
              scores={"runs": {"stage2/xgboost": {}, "stage2/lightgbm": {}}})
    write_run(cfgs["perception"], "stage2", "lightgbm", "perception", labels, features=PERCEPTION)
    result = collect_ladder(cfgs)
    assert [r["role"] for r in result["rows"]] == ["telemetry", "stack", "perception"]
    assert result["stack_inputs"] == ["stage2/lightgbm", "stage2/xgboost"]
    assert "weighs stage2/lightgbm, stage2/xgboost (no stage-1 run" in to_markdown(result)
