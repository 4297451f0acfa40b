"""The `files` feature builder (bring-your-own per-ID columns): joins, every bad input named,
and content hashes in the cache key and the stage-2 signature."""

import json

import numpy as np
import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset

from features.build import build_features
from features.files import FeatureFileError
from trajstack.cli import main as cli_main
from trajstack.config import ConfigError, load_config

FAST_STAGE2 = ["folds.n_splits=3", "stage2.n_jobs=1", "stage2.early_stopping_rounds=5",
               "stage2.params.lightgbm={n_estimators: 20, num_leaves: 4, min_child_samples: 3}"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), n_scenes=6, rows_per_scene=3,
                             n_test_scenes=2, seed=3)


def stage2_cli(argv: list[str]) -> int:
    """`trajstack stage2 ...` through the CLI's error boundary."""
    return cli_main(["stage2", *argv])


def files_override(*entries):
    """`features.files=[...]` as a user types it on the command line (JSON is YAML too)."""
    return "features.files=" + json.dumps(list(entries))


def _cfg(tiny, tmp_path, *overrides, builders="[telemetry]"):
    return load_config("demo", [f"data_dir={tiny.root}", f"output_dir={tmp_path / 'out'}",
                                "features.stage1=false", f"features.builders={builders}",
                                *overrides])


def _values(ids, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"ID": ids, "depth": rng.normal(size=len(ids)),
                         "n_cars": rng.integers(0, 5, size=len(ids)),
                         "lead": rng.random(len(ids)) < 0.5})


def test_one_file_with_both_splits_joins_by_id_with_prefix(tiny, tmp_path):
    both = _values(tiny.train_ids + tiny.test_ids)
    both.loc[3, "depth"] = np.nan  # unknown stays unknown
    path = tmp_path / "both.csv"
    both.sample(frac=1, random_state=0).to_csv(path, index=False)  # rows in any order
    cfg = _cfg(tiny, tmp_path, files_override({"path": str(path), "prefix": "cam_"}))
    assert cfg.features.active_builders == ["telemetry", "files"]  # the override alone suffices
    table = build_features(cfg)
    assert [c for c in table.feature_columns if c.startswith("cam_")] == ["cam_depth", "cam_n_cars",
                                                                           "cam_lead"]
    expected = both.set_index("ID")
    for split, frame in (("train", table.train), ("test", table.test)):
        want = expected.loc[frame["ID"]]
        np.testing.assert_array_equal(frame["cam_depth"].to_numpy(), want["depth"].to_numpy())
        np.testing.assert_array_equal(frame["cam_lead"].to_numpy(), want["lead"].to_numpy(float))
        assert frame["cam_n_cars"].dtype == np.float64, split
    assert np.isnan(table.train.set_index("ID").loc[both["ID"][3], "cam_depth"])


def test_a_train_and_test_pair_of_parquet_files_and_a_column_subset(tiny, tmp_path):
    train, test = tmp_path / "a.parquet", tmp_path / "b.parquet"
    values = _values(tiny.train_ids + tiny.test_ids, seed=1)
    values.iloc[:len(tiny.train_ids)].assign(note="x").to_parquet(train)
    values.iloc[len(tiny.train_ids):].assign(note="y").to_parquet(test)
    entry = {"train": str(train), "test": str(test), "prefix": "depth_", "columns": ["depth"]}
    table = build_features(_cfg(tiny, tmp_path, files_override(entry)))
    assert table.feature_columns[-1:] == ["depth_depth"]  # the text column `note` left out
    np.testing.assert_array_equal(
        table.test["depth_depth"].to_numpy(),
        values.set_index("ID").loc[tiny.test_ids, "depth"].to_numpy())


def _error(tiny, tmp_path, entry, *extra, builders="[telemetry]"):
    with pytest.raises((FeatureFileError, ConfigError)) as info:
        build_features(_cfg(tiny, tmp_path, files_override(entry), *extra, builders=builders))
    return str(info.value)


def test_missing_ids_are_named(tiny, tmp_path):
    path = tmp_path / "short.csv"
    _values(tiny.train_ids[5:] + tiny.test_ids).to_csv(path, index=False)
    message = _error(tiny, tmp_path, {"path": str(path)})
    assert str(path) in message and "lacks 5 of the 18 train IDs" in message
    assert all(i in message for i in tiny.train_ids[:3])


def test_duplicate_ids_are_named(tiny, tmp_path):
    path = tmp_path / "dupes.parquet"
    values = _values(tiny.train_ids + tiny.test_ids)
    pd.concat([values, values.iloc[[4]]]).to_parquet(path)
    message = _error(tiny, tmp_path, {"path": str(path), "prefix": "p_"})
    assert str(path) in message and "more than once" in message and tiny.train_ids[4] in message


def test_non_numeric_columns_are_named(tiny, tmp_path):
    path = tmp_path / "text.csv"
    _values(tiny.train_ids + tiny.test_ids).assign(light="red", kind="car").to_csv(path, index=False)
    message = _error(tiny, tmp_path, {"path": str(path), "prefix": "p_"})
    assert str(path) in message and "non-numeric columns" in message
    assert "light" in message and "kind" in message and "depth" not in message


def test_a_clash_with_other_features_names_the_file(tiny, tmp_path):
    path = tmp_path / "speed.csv"
    # vEgo is also a telemetry feature: without a prefix the names clash.
    _values(tiny.train_ids + tiny.test_ids).rename(columns={"depth": "vEgo"}).to_csv(path, index=False)
    message = _error(tiny, tmp_path, {"path": str(path)})
    assert "['vEgo']" in message and "telemetry" in message and str(path) in message
    assert "prefix" in message
    # The other way round (the file's builder first), the message still names the file.
    message = _error(tiny, tmp_path, {"path": str(path)}, builders="[files, telemetry]")
    assert "feature builder telemetry repeats columns ['vEgo']" in message and str(path) in message
    assert "cam_vEgo" in build_features(_cfg(tiny, tmp_path, files_override(
        {"path": str(path), "prefix": "cam_"}))).feature_columns  # the fix works


def test_a_clash_between_two_files_names_both(tiny, tmp_path):
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    _values(tiny.train_ids + tiny.test_ids).to_csv(first, index=False)
    _values(tiny.train_ids + tiny.test_ids, seed=2).to_csv(second, index=False)
    with pytest.raises(FeatureFileError) as info:
        build_features(_cfg(tiny, tmp_path, files_override(
            {"path": str(first), "prefix": "a_"}, {"path": str(second), "prefix": "a_"})))
    assert str(first) in str(info.value) and str(second) in str(info.value)
    assert "'a_depth'" in str(info.value)


def test_a_train_file_without_its_test_counterpart(tiny, tmp_path):
    with pytest.raises(ConfigError, match="train file a.parquet has no test counterpart"):
        _cfg(tiny, tmp_path, files_override({"train": "a.parquet", "prefix": "x_"}))
    with pytest.raises(ConfigError, match="either path .* or train"):
        _cfg(tiny, tmp_path, files_override({"path": "a.csv", "train": "b.csv", "test": "c.csv"}))


def test_unreadable_missing_and_unknown_files(tiny, tmp_path):
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file")
    message = _error(tiny, tmp_path, {"path": str(broken)})
    assert str(broken) in message and "cannot be read as parquet" in message
    sheet = tmp_path / "values.xlsx"
    sheet.write_bytes(b"PK")
    message = _error(tiny, tmp_path, {"path": str(sheet)})
    assert str(sheet) in message and "unknown file type" in message and ".csv" in message
    message = _error(tiny, tmp_path, {"path": str(tmp_path / "nowhere.csv")})
    assert "nowhere.csv" in message and "not found" in message
    no_id = tmp_path / "no_id.csv"
    _values(tiny.train_ids + tiny.test_ids).rename(columns={"ID": "row"}).to_csv(no_id, index=False)
    assert "no ID column 'ID'" in _error(tiny, tmp_path, {"path": str(no_id)})


def test_a_bad_file_stops_stage2_with_a_message_not_a_traceback(tiny, tmp_path, capsys):
    path = tmp_path / "text.csv"
    _values(tiny.train_ids + tiny.test_ids).assign(light="red").to_csv(path, index=False)
    code = stage2_cli(["--config", "demo", "--data", str(tiny.root), f"output_dir={tmp_path}",
                        "features.stage1=false", files_override({"path": str(path)}), *FAST_STAGE2])
    assert code == 2 and "non-numeric columns: light (" in capsys.readouterr().err


def test_a_changed_file_gives_a_new_cache_key_and_new_values(tiny, tmp_path):
    path = tmp_path / "both.parquet"
    values = _values(tiny.train_ids + tiny.test_ids)
    values.to_parquet(path)
    cfg = _cfg(tiny, tmp_path, files_override({"path": str(path), "prefix": "f_"}))
    first = build_features(cfg)
    assert build_features(cfg).builder_keys == first.builder_keys  # unchanged: same key (cache hit)
    values.loc[0, "depth"] = 123.0
    values.to_parquet(path)
    second = build_features(cfg)
    assert second.builder_keys["files"] != first.builder_keys["files"]
    assert second.builder_keys["telemetry"] == first.builder_keys["telemetry"]
    assert second.hash != first.hash
    assert second.train.set_index("ID").loc[values["ID"][0], "f_depth"] == 123.0  # not a stale cache


def test_a_changed_file_changes_the_stage2_signature(tiny, tmp_path, capsys):
    path = tmp_path / "both.csv"
    values = _values(tiny.train_ids + tiny.test_ids)
    values.to_csv(path, index=False)
    args = ["--config", "demo", "--data", str(tiny.root), f"output_dir={tmp_path}",
            "features.stage1=false", "features.builders=[telemetry]",
            files_override({"path": str(path), "prefix": "f_"}), *FAST_STAGE2, "--learner", "lightgbm"]
    meta_path = tmp_path / "demo" / "stage2" / "lightgbm" / "meta.json"
    assert stage2_cli(args) == 0
    first = json.loads(meta_path.read_text())
    assert "f_depth" in (meta_path.parent / "importance.csv").read_text()
    capsys.readouterr()
    assert stage2_cli(args) == 0 and "done already" in capsys.readouterr().out
    values.loc[0, "depth"] += 1.0
    values.to_csv(path, index=False)
    stage2_cli(args)
    assert "done already" not in capsys.readouterr().out  # the finished run is not reused
    assert stage2_cli([*args, "--force"]) == 0
    second = json.loads(meta_path.read_text())
    assert second["signature"] != first["signature"]
    assert second["inputs"]["features"] != first["inputs"]["features"]
