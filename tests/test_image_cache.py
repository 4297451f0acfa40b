"""The image cache round-trips pixels exactly, is rebuilt only on change, and survives interruption."""

from __future__ import annotations

import os

import numpy as np
import pytest
from dataset_factory import TinyDataset, make_tiny_dataset, random_frame
from PIL import Image

from trajstack import image_cache
from trajstack.cli import main as cli_main
from trajstack.image_cache import (
    IMAGES_FILE,
    META_FILE,
    build_or_open_cache,
    cache_folder,
    load_frames_from_png,
)
from trajstack.tables import DataError


@pytest.fixture
def dataset(tmp_path) -> TinyDataset:
    return make_tiny_dataset(tmp_path / "data", n_scenes=3, rows_per_scene=2, seed=1)


@pytest.fixture(autouse=True)
def small_tasks(monkeypatch):
    """Two rows per task, so that even 6 rows spread over several threads."""
    monkeypatch.setattr(image_cache, "ROWS_PER_TASK", 2)


def _build(ds: TinyDataset, cache_root, split="train", workers=1):
    return build_or_open_cache(ds.root, ds.spec, split, cache_root, workers=workers, progress=False)


def _decoded_by_pil(ds: TinyDataset, row_id: str) -> np.ndarray:
    return np.stack([
        np.asarray(Image.open(ds.frame_path(row_id, f))) for f in range(len(ds.spec.frames))
    ])


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("split", ["train", "test"])
def test_pixels_round_trip_exactly(dataset, tmp_path, split, workers):
    cache = _build(dataset, tmp_path / "cache", split, workers)
    ids = dataset.train_ids if split == "train" else dataset.test_ids

    assert cache.built and len(cache) == len(ids)
    assert cache.ids.tolist() == ids  # row order = the CSV's order
    spec = dataset.spec
    assert cache.images.shape == (len(ids), len(spec.frames), spec.image_height, spec.image_width, 3)
    assert cache.images.dtype == np.uint8 and not cache.images.flags.writeable
    for row_id, frames in zip(ids, cache.get(ids), strict=True):
        np.testing.assert_array_equal(frames, _decoded_by_pil(dataset, row_id))


def test_get_by_id_or_position_and_png_baseline_agree(dataset, tmp_path):
    cache = _build(dataset, tmp_path / "cache")
    ids = [dataset.train_ids[4], dataset.train_ids[1], dataset.train_ids[4]]

    positions = cache.positions(ids)

    assert positions.tolist() == [4, 1, 4]
    np.testing.assert_array_equal(cache.get(ids), cache.get(positions))
    np.testing.assert_array_equal(cache.get(ids), load_frames_from_png(dataset.root, dataset.spec, ids))
    assert cache.get([]).shape == (0, *cache.images.shape[1:])
    with pytest.raises(KeyError, match="nope_20"):
        cache.positions([dataset.train_ids[0], "nope_20"])
    with pytest.raises(TypeError):
        cache.get([0.5])


def test_second_open_does_not_rebuild(dataset, tmp_path):
    first = _build(dataset, tmp_path / "cache")
    images_file = first.path / IMAGES_FILE
    mtime = images_file.stat().st_mtime_ns

    second = _build(dataset, tmp_path / "cache")

    assert first.built and not second.built
    assert second.fingerprint == first.fingerprint
    assert images_file.stat().st_mtime_ns == mtime


def test_changed_frame_triggers_rebuild_with_new_pixels(dataset, tmp_path):
    first = _build(dataset, tmp_path / "cache")
    row_id = dataset.train_ids[2]
    new_pixels = random_frame(dataset.spec, np.random.default_rng(99))
    Image.fromarray(new_pixels).save(dataset.frame_path(row_id, 1))

    second = _build(dataset, tmp_path / "cache")

    assert second.built and second.fingerprint != first.fingerprint
    np.testing.assert_array_equal(second.get([row_id])[0, 1], new_pixels)


def test_touched_frame_triggers_rebuild(dataset, tmp_path):
    first = _build(dataset, tmp_path / "cache")
    path = dataset.frame_path(dataset.train_ids[0], 0)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    assert _build(dataset, tmp_path / "cache").fingerprint != first.fingerprint


def test_caches_are_kept_apart_by_split_and_folder(dataset, tmp_path):
    other = make_tiny_dataset(tmp_path / "other", seed=2)
    folders = {
        cache_folder(dataset.root, dataset.spec, "train", tmp_path),
        cache_folder(dataset.root, dataset.spec, "test", tmp_path),
        cache_folder(other.root, other.spec, "train", tmp_path),
    }
    assert len(folders) == 3


def _raise_on_third_row(monkeypatch):
    real_decode_row = image_cache.decode_row
    calls = []

    def flaky_decode_row(data_dir, spec, row_id):
        calls.append(row_id)
        if len(calls) == 3:
            raise RuntimeError("simulated crash mid-build")
        return real_decode_row(data_dir, spec, row_id)

    monkeypatch.setattr(image_cache, "decode_row", flaky_decode_row)


def test_interrupted_build_leaves_no_complete_cache(dataset, tmp_path, monkeypatch):
    real_decode_row = image_cache.decode_row
    _raise_on_third_row(monkeypatch)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _build(dataset, tmp_path / "cache", workers=1)
    folder = cache_folder(dataset.root, dataset.spec, "train", tmp_path / "cache")

    assert not (folder / META_FILE).exists() and not (folder / IMAGES_FILE).exists()
    assert not list(folder.glob(".tmp-*"))  # no half-written array left behind

    monkeypatch.setattr(image_cache, "decode_row", real_decode_row)
    cache = _build(dataset, tmp_path / "cache", workers=1)
    assert cache.built
    last = dataset.train_ids[5]
    np.testing.assert_array_equal(cache.get([last])[0], _decoded_by_pil(dataset, last))


def test_worker_failure_stops_a_parallel_build_cleanly(dataset, tmp_path):
    # A bad frame fails inside a worker process (a monkeypatch would not reach it under spawn).
    path = dataset.frame_path(dataset.train_ids[3], 2)
    good_bytes = path.read_bytes()
    path.write_bytes(b"broken")
    with pytest.raises(DataError):
        _build(dataset, tmp_path / "cache", workers=2)
    folder = cache_folder(dataset.root, dataset.spec, "train", tmp_path / "cache")
    assert not (folder / META_FILE).exists() and not list(folder.glob(".tmp-*"))

    path.write_bytes(good_bytes)
    cache = _build(dataset, tmp_path / "cache", workers=2)
    assert cache.built
    np.testing.assert_array_equal(cache.get(dataset.train_ids[3:4])[0], _decoded_by_pil(dataset, dataset.train_ids[3]))


def test_interrupted_rebuild_does_not_serve_the_stale_cache(dataset, tmp_path, monkeypatch):
    real_decode_row = image_cache.decode_row
    _build(dataset, tmp_path / "cache")
    row_id = dataset.train_ids[0]
    new_pixels = random_frame(dataset.spec, np.random.default_rng(7))
    Image.fromarray(new_pixels).save(dataset.frame_path(row_id, 0))

    _raise_on_third_row(monkeypatch)
    with pytest.raises(RuntimeError):
        _build(dataset, tmp_path / "cache", workers=1)
    folder = cache_folder(dataset.root, dataset.spec, "train", tmp_path / "cache")
    assert not (folder / META_FILE).exists()  # the old cache no longer counts as complete

    monkeypatch.setattr(image_cache, "decode_row", real_decode_row)
    cache = _build(dataset, tmp_path / "cache")
    assert cache.built
    np.testing.assert_array_equal(cache.get([row_id])[0, 0], new_pixels)


def _missing_frame(ds, row_id):
    ds.frame_path(row_id, 1).unlink()


def _unreadable_frame(ds, row_id):
    ds.frame_path(row_id, 1).write_bytes(b"not a png")


def _wrong_size_frame(ds, row_id):
    Image.new(ds.spec.image_mode, (ds.spec.image_width, ds.spec.image_height * 2)).save(ds.frame_path(row_id, 1))


@pytest.mark.parametrize("breakage", [_missing_frame, _unreadable_frame, _wrong_size_frame])
def test_bad_frame_is_a_data_error_naming_file_and_id(dataset, tmp_path, breakage):
    row_id = dataset.train_ids[3]
    breakage(dataset, row_id)

    with pytest.raises(DataError) as caught:
        _build(dataset, tmp_path / "cache")

    message = str(caught.value)
    assert str(dataset.frame_path(row_id, 1)) in message and row_id in message
    assert "trajstack validate" in message


def test_unsafe_id_is_refused(dataset, tmp_path):
    table = dataset.read_table("train")
    table.loc[0, dataset.spec.id_column] = "../outside_20"
    dataset.write_table("train", table)

    with pytest.raises(DataError, match="'..'"):
        _build(dataset, tmp_path / "cache")


def test_cli_builds_both_splits_then_finds_them_current(dataset, tmp_path, capsys):
    argv = ["--data", str(dataset.root), "--exp", "t", f"cache.dir={tmp_path / 'cache'}", "--no-progress"]

    assert cli_main(["cache", *argv]) == 0
    assert capsys.readouterr().out.count("built") == 2
    assert cli_main(["cache", *argv]) == 0
    assert capsys.readouterr().out.count("up to date") == 2


def test_cli_reports_bad_data_with_exit_code_2(dataset, tmp_path, capsys):
    _missing_frame(dataset, dataset.test_ids[0])

    assert cli_main(["cache", "--data", str(dataset.root), f"cache.dir={tmp_path}", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert dataset.test_ids[0] in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
