"""Folds: scenes kept whole, reproducible, made once per experiment, the hash guards mixing."""

import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset

from trajstack.artifacts import ArtifactError
from trajstack.cli import main as cli_main
from trajstack.config import load_config
from trajstack.folds import assign_folds, ensure_folds
from trajstack.tables import read_table


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("data"), n_scenes=12, rows_per_scene=3,
                             n_test_scenes=1, seed=3)


def _cfg(tiny, tmp_path, *overrides):
    return load_config("demo", [f"data_dir={tiny.root}", f"output_dir={tmp_path}",
                                "folds.n_splits=4", *overrides])


def test_folds_keep_scenes_whole_and_cover_every_row(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path)
    table = assign_folds(read_table(tiny.root, cfg.dataset, "train"), cfg.dataset, cfg.folds)
    assert sorted(table["ID"]) == sorted(tiny.train_ids)
    assert table.groupby("scene")["fold"].nunique().max() == 1
    assert sorted(table["fold"].unique()) == [0, 1, 2, 3]


def test_folds_reproducible_and_seeded(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path)
    train = read_table(tiny.root, cfg.dataset, "train")
    a = assign_folds(train, cfg.dataset, cfg.folds)
    b = assign_folds(train, cfg.dataset, cfg.folds)
    pd.testing.assert_frame_equal(a, b)
    other = assign_folds(train, cfg.dataset, cfg.folds.model_copy(update={"seed": 1}))
    assert not a["fold"].equals(other["fold"])


def test_stratified_folds_keep_scenes_whole(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path, "folds.stratify_column=vEgo", "folds.stratify_bins=3")
    table = assign_folds(read_table(tiny.root, cfg.dataset, "train"), cfg.dataset, cfg.folds)
    assert table.groupby("scene")["fold"].nunique().max() == 1


def test_stratify_column_must_exist(tiny, tmp_path):
    cfg = _cfg(tiny, tmp_path, "folds.stratify_column=nope")
    with pytest.raises(ArtifactError, match="nope"):
        assign_folds(read_table(tiny.root, cfg.dataset, "train"), cfg.dataset, cfg.folds)


def test_ensure_folds_made_once_and_refuses_other_config(tiny, tmp_path):
    first = ensure_folds(_cfg(tiny, tmp_path))
    again = ensure_folds(_cfg(tiny, tmp_path))
    assert first.hash == again.hash and first.path.exists()
    with pytest.raises(ArtifactError, match="once per experiment"):
        ensure_folds(_cfg(tiny, tmp_path, "folds.seed=5"))
    assert ensure_folds(_cfg(tiny, tmp_path)).hash == first.hash  # untouched by the refusal


def test_edited_folds_file_is_detected(tiny, tmp_path):
    folds = ensure_folds(_cfg(tiny, tmp_path))
    folds.path.write_text(folds.path.read_text().replace(",0\n", ",1\n", 1))
    with pytest.raises(ArtifactError, match="edited"):
        ensure_folds(_cfg(tiny, tmp_path))


def test_fold_of_names_unknown_id(tiny, tmp_path):
    folds = ensure_folds(_cfg(tiny, tmp_path))
    assert len(folds.fold_of(tiny.train_ids)) == len(tiny.train_ids)
    with pytest.raises(ArtifactError, match="not-an-id"):
        folds.fold_of(["not-an-id"])


def test_folds_cli(tiny, tmp_path, capsys):
    code = cli_main(["folds", "--config", "demo", "--data", str(tiny.root), "--exp", "cli",
                     f"output_dir={tmp_path}", "folds.n_splits=3"])
    assert code == 0
    assert (tmp_path / "cli" / "folds.csv").exists()
    assert "hash" in capsys.readouterr().out


def test_scikit_learn_pin_admits_only_versions_whose_group_kfold_shuffles():
    # trajstack/folds.py calls GroupKFold(shuffle=...), new in scikit-learn 1.6: the pin in
    # pyproject.toml must refuse 1.5 and admit what is installed.
    from pathlib import Path

    import sklearn
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    pins = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "scikit-learn"]
    assert len(pins) == 1
    assert not pins[0].specifier.contains("1.5.2")
    assert pins[0].specifier.contains(sklearn.__version__)


def test_group_kfold_without_shuffle_is_refused_with_the_fix(tiny, tmp_path, monkeypatch):
    import trajstack.folds

    class OldGroupKFold:  # the signature of scikit-learn 1.5
        def __init__(self, n_splits=5):
            self.n_splits = n_splits

    monkeypatch.setattr(trajstack.folds, "GroupKFold", OldGroupKFold)
    cfg = _cfg(tiny, tmp_path)
    with pytest.raises(ImportError, match=r"scikit-learn 1\.6.*pip install 'scikit-learn>=1\.6'"):
        assign_folds(read_table(tiny.root, cfg.dataset, "train"), cfg.dataset, cfg.folds)
