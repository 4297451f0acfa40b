"""Artifact store: atomic writes, skip-if-done, no silent overwrite, fold-hash refusal."""

import os

import pandas as pd
import pytest

from trajstack.artifacts import OOF_FILE, ArtifactError, ArtifactStore, FoldMismatchError
from trajstack.io import atomic_path, write_parquet_atomic


def _run(store, config=None, inputs=None, fold_hash="f1"):
    return store.run("stage2", "lightgbm", config or {"stage2": {"lr": 0.1}},
                     inputs or {"train": "abc"}, fold_hash)


def test_atomic_write_leaves_no_half_file_when_interrupted(tmp_path):
    target = tmp_path / OOF_FILE
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a parquet")
        raise KeyboardInterrupt
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_previous_version_when_interrupted(tmp_path):
    target = tmp_path / "table.parquet"
    write_parquet_atomic(target, pd.DataFrame({"a": [1, 2]}))

    class Exploding(pd.DataFrame):
        def to_parquet(self, path, **kwargs):
            with open(path, "wb") as f:
                f.write(b"PAR1 truncated")
            raise OSError("disk full")

    with pytest.raises(OSError):
        write_parquet_atomic(target, Exploding({"a": [3]}))
    assert pd.read_parquet(target)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


def test_run_lifecycle_and_skip_if_done(tmp_path):
    store = ArtifactStore(tmp_path)
    run = _run(store)
    assert not run.is_done()
    run.begin()
    run.write_parquet(OOF_FILE, pd.DataFrame({"ID": ["a"], "x_0": [1.0]}))
    assert not run.is_done()  # running, not finished
    run.finish(scores={"mae": 0.5})
    assert run.is_done()
    assert _run(store).is_done()  # same config + inputs: skipped
    assert not _run(store, inputs={"train": "other"}).is_done()
    assert not _run(store, config={"stage2": {"lr": 0.2}}).is_done()
    meta = run.read_meta()
    assert meta["scores"]["mae"] == 0.5 and meta["fold_hash"] == "f1"
    assert "numpy" in meta["versions"] and meta["wall_time_s"] >= 0
    assert (run.dir / "config.yaml").exists()


def test_location_keys_do_not_change_signature(tmp_path):
    store = ArtifactStore(tmp_path)
    a = _run(store, config={"stage2": {"lr": 0.1}, "data_dir": "/a", "experiment": "x"})
    b = _run(store, config={"stage2": {"lr": 0.1}, "data_dir": "/b", "experiment": "y"})
    assert a.signature == b.signature


def test_progress_bars_do_not_change_signature_but_settings_do(tmp_path):
    store = ArtifactStore(tmp_path)
    shown = _run(store, config={"stage1": {"epochs": 3, "progress": True}})
    hidden = _run(store, config={"stage1": {"epochs": 3, "progress": False}})
    longer = _run(store, config={"stage1": {"epochs": 4, "progress": False}})
    assert shown.signature == hidden.signature != longer.signature


def test_finished_run_with_other_config_is_not_overwritten(tmp_path):
    store = ArtifactStore(tmp_path)
    first = _run(store)
    first.begin()
    first.finish()
    second = _run(store, config={"stage2": {"lr": 0.3}})
    with pytest.raises(ArtifactError, match="another config"):
        second.begin()
    second.begin(force=True)  # moves the old run aside, never deletes it
    archived = [p for p in (tmp_path / "stage2").iterdir() if ".old-" in p.name]
    assert len(archived) == 1 and (archived[0] / "meta.json").exists()


def test_parts_resume_only_under_same_signature(tmp_path):
    store = ArtifactStore(tmp_path)
    run = _run(store)
    run.begin()
    run.mark_part_done("fold0", mae=0.3)
    assert run.part_done("fold0") and not run.part_done("fold1")
    assert not _run(store, inputs={"train": "changed"}).part_done("fold0")


def test_load_refuses_other_folds(tmp_path):
    store = ArtifactStore(tmp_path)
    run = _run(store, fold_hash="folds-A")
    run.begin()
    run.finish()
    assert store.load(run.dir, expect_fold_hash="folds-A").fold_hash == "folds-A"
    with pytest.raises(FoldMismatchError, match="folds-A.*folds-B"):
        store.load(run.dir, expect_fold_hash="folds-B")
    assert [r.name for r in store.finished_runs()] == ["stage2/lightgbm"]


def test_load_refuses_unfinished_run(tmp_path):
    store = ArtifactStore(tmp_path)
    run = _run(store)
    run.begin()
    with pytest.raises(ArtifactError, match="did not finish"):
        store.load(run.dir)


def test_unsafe_run_names_are_refused(tmp_path):
    with pytest.raises(ArtifactError):
        ArtifactStore(tmp_path).run("stage1", "../escape", {}, {}, None)
    assert not os.path.exists(tmp_path.parent / "escape")
