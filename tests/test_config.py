"""Config: YAML + base inheritance + overrides, and clear errors for unknown or mistyped keys."""

from pathlib import Path

import pytest

from trajstack.config import ConfigError, load_config, parse_override


def test_demo_inherits_dataset_spec_from_atmacup18():
    cfg = load_config("demo")
    assert cfg.experiment == "demo"
    assert cfg.dataset.target_columns[:4] == ["x_0", "y_0", "z_0", "x_1"]
    assert len(cfg.dataset.train_columns) == 30
    assert len(cfg.dataset.test_columns) == 12


def test_overrides_are_typed_and_nested():
    cfg = load_config("demo", ["folds.n_splits=3", "folds.stratify_column=gearShifter", "seed=7"])
    assert cfg.folds.n_splits == 3
    assert cfg.folds.stratify_column == "gearShifter"
    assert cfg.seed == 7


def test_override_value_parsed_as_yaml():
    assert parse_override("a.b=[0, 2]") == ("a.b", [0, 2])
    assert parse_override("x=true") == ("x", True)
    assert parse_override("x=null") == ("x", None)
    assert parse_override("x=convnext_atto") == ("x", "convnext_atto")


def test_unknown_key_names_key_and_valid_ones():
    with pytest.raises(ConfigError) as err:
        load_config("demo", ["folds.nsplits=3"])
    message = str(err.value)
    assert "folds.nsplits" in message and "n_splits" in message and "stratify_column" in message


def test_unknown_top_level_key():
    with pytest.raises(ConfigError, match="unknown config key 'folds_n'.*valid keys at the top level"):
        load_config("demo", ["folds_n=3"])


def test_mistyped_value_names_key():
    with pytest.raises(ConfigError, match="folds.n_splits"):
        load_config("demo", ["folds.n_splits=five"])


def test_override_without_equals_is_rejected():
    with pytest.raises(ConfigError, match="key=value"):
        load_config("demo", ["folds.n_splits"])


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("base: " + str(load_config.__globals__["CONFIG_DIR"] / "demo.yaml") +
                    "\ncache:\n  wrokers: 3\n")
    with pytest.raises(ConfigError, match="cache.wrokers.*workers"):
        load_config(path)


def test_an_empty_mapping_in_a_child_config_clears_the_inherited_one(tmp_path):
    demo = load_config("demo")
    assert demo.stage2.variants and demo.stage2.params  # what the child below inherits
    path = tmp_path / "exp.yaml"
    path.write_text("base: " + str(load_config.__globals__["CONFIG_DIR"] / "demo.yaml") +
                    "\nstage2:\n  variants: {}\n  params: {lightgbm: {num_leaves: 7}}\n")
    child = load_config(path)
    assert child.stage2.variants == {}
    # A non-empty mapping still merges key by key.
    assert child.stage2.params["lightgbm"]["num_leaves"] == 7
    assert child.stage2.params["lightgbm"]["max_bin"] == demo.stage2.params["lightgbm"]["max_bin"]
    assert child.stage2.params["xgboost"] == demo.stage2.params["xgboost"]


def test_spec_consistency_is_checked():
    with pytest.raises(ConfigError, match="flip"):
        load_config("demo", ["dataset.flip.negate_columns=[notAColumn]"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = load_config("demo", ["folds.n_splits=4"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(path)
    assert again.to_dict() == cfg.to_dict()


CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_names_known_learners(path, tmp_path):
    # Every config a user can pass (`CONFIG=configs/...`) resolves, its stage-2 learners and
    # variants are registry keys, and it round-trips: a config added tomorrow is checked too.
    from stage2_gbdt.learners import LEARNERS

    cfg = load_config(path)
    learners = [*cfg.stage2.learners, *cfg.stage2.without_stage1,
                *(v.learner for v in cfg.stage2.variants.values())]
    assert set(learners) <= set(LEARNERS.keys()), learners
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert load_config(tmp_path / "config.yaml").to_dict() == cfg.to_dict()


def test_the_lean_demo_is_the_demo_less_two_stage2_runs():
    # configs/demo_lean.yaml (README, bench:automl_lean): the demo's features, folds and stage 1,
    # stage 2 cut to LightGBM and the per-metre variant.
    demo, lean = load_config("demo"), load_config(CONFIGS_DIR / "demo_lean.yaml")
    assert lean.stage2.learners == ["lightgbm"] and lean.stage2.without_stage1 == []
    assert lean.stage2.variants == demo.stage2.variants
    assert (lean.features, lean.stage1, lean.folds) == (demo.features, demo.stage1, demo.folds)
