"""The validator catches each problem class on a tiny dataset broken one way at a time."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from dataset_factory import TinyDataset, default_spec, make_tiny_dataset
from PIL import Image

from trajstack import validate
from trajstack.validate import Problem, main, validate_dataset


@dataclass(frozen=True)
class Expected:
    """The problem a breakage must produce: exact file, row and column, part of the message."""

    file: str
    row_id: str | None
    column: str | None
    message: str

    def matches(self, problem: Problem) -> bool:
        return (
            (problem.file, problem.row_id, problem.column) == (self.file, self.row_id, self.column)
            and self.message in problem.message
        )


@pytest.fixture
def dataset(tmp_path) -> TinyDataset:
    return make_tiny_dataset(tmp_path / "data", n_scenes=3, rows_per_scene=2, seed=0)


def _frame_name(ds: TinyDataset, row_id: str, frame_index: int) -> str:
    return f"{ds.spec.images_dir}/{row_id}/{ds.spec.frames[frame_index]}"


def _light_name(ds: TinyDataset, row_id: str) -> str:
    return f"{ds.spec.traffic_lights_dir}/{row_id}.json"


def _set_cell(ds: TinyDataset, split: str, row: int, column: str, text: str) -> str:
    table = ds.read_table(split)
    table.loc[row, column] = text
    ds.write_table(split, table)
    return table.loc[row, ds.spec.id_column]


def _bool_column(ds: TinyDataset) -> str:
    return ds.spec.columns_of_kind("bool")[0]


def _float_column(ds: TinyDataset) -> str:
    return ds.spec.columns_of_kind("float")[0]


# ----------------------------------------------------------------------------- breakages
# Each takes a valid dataset, breaks it in one way and returns the problem it must cause.


def missing_column(ds):
    col = _bool_column(ds)
    ds.write_table("train", ds.read_table("train").drop(columns=[col]))
    return Expected(ds.spec.train_file, None, col, "missing column")


def extra_column(ds):
    table = ds.read_table("train")
    table["extra_column"] = "1"
    ds.write_table("train", table)
    return Expected(ds.spec.train_file, None, "extra_column", "unexpected column")


def targets_in_test_file(ds):
    target = ds.spec.target_columns[0]
    table = ds.read_table("test")
    table[target] = "0.5"
    ds.write_table("test", table)
    return Expected(ds.spec.test_file, None, target, "target")


def missing_csv(ds):
    ds.table_path("test").unlink()
    return Expected(ds.spec.test_file, None, None, "file not found")


def duplicate_id(ds):
    _set_cell(ds, "train", 1, ds.spec.id_column, ds.train_ids[0])
    return Expected(ds.spec.train_file, ds.train_ids[0], ds.spec.id_column, "duplicate ID")


def id_not_matching_pattern(ds):
    bad = "not-a-scene_20"
    _set_cell(ds, "train", 2, ds.spec.id_column, bad)
    return Expected(ds.spec.train_file, bad, ds.spec.id_column, "does not match")


def _unsafe_id_breakage(unsafe: str) -> Callable[[TinyDataset], Expected]:
    def breakage(ds):
        _set_cell(ds, "train", 0, ds.spec.id_column, unsafe)
        return Expected(ds.spec.train_file, unsafe, ds.spec.id_column, "unsafe as a file name")

    return breakage


def nan_target(ds):
    target = ds.spec.target_columns[-1]
    row_id = _set_cell(ds, "train", 3, target, "")
    return Expected(ds.spec.train_file, row_id, target, "missing target value")


def inf_target(ds):
    target = ds.spec.target_columns[4]
    row_id = _set_cell(ds, "train", 1, target, "inf")
    return Expected(ds.spec.train_file, row_id, target, "infinite target")


def text_in_target(ds):
    target = ds.spec.target_columns[0]
    row_id = _set_cell(ds, "train", 0, target, "abc")
    return Expected(ds.spec.train_file, row_id, target, "cannot read 'abc' as a number")


def text_in_telemetry(ds):
    col = _float_column(ds)
    row_id = _set_cell(ds, "test", 1, col, "fast")
    return Expected(ds.spec.test_file, row_id, col, "cannot read 'fast' as a number")


def unparseable_boolean(ds):
    col = _bool_column(ds)
    row_id = _set_cell(ds, "train", 2, col, "maybe")
    return Expected(ds.spec.train_file, row_id, col, "cannot read 'maybe' as a boolean")


def unparseable_category(ds):
    col = ds.spec.columns_of_kind("category")[0]
    row_id = _set_cell(ds, "test", 0, col, "flying")
    return Expected(ds.spec.test_file, row_id, col, "cannot read 'flying'")


def missing_image_folder(ds):
    row_id = ds.test_ids[1]
    shutil.rmtree(ds.frame_path(row_id).parent)
    return Expected(f"{ds.spec.images_dir}/{row_id}", row_id, None, "image folder missing")


def missing_frame(ds):
    row_id = ds.train_ids[4]
    ds.frame_path(row_id, 1).unlink()
    return Expected(_frame_name(ds, row_id, 1), row_id, None, "frame file missing")


def unreadable_image(ds):
    row_id = ds.train_ids[0]
    ds.frame_path(row_id, 2).write_bytes(b"this is not an image")
    return Expected(_frame_name(ds, row_id, 2), row_id, None, "unreadable image")


def truncated_png(ds):
    row_id = ds.train_ids[1]
    path = ds.frame_path(row_id, 0)
    path.write_bytes(path.read_bytes()[:200])
    return Expected(_frame_name(ds, row_id, 0), row_id, None, "truncated PNG")


def wrong_image_size(ds):
    row_id = ds.train_ids[2]
    size = (ds.spec.image_width // 2, ds.spec.image_height)
    Image.new(ds.spec.image_mode, size).save(ds.frame_path(row_id, 0))
    return Expected(_frame_name(ds, row_id, 0), row_id, None, "expected")


def wrong_image_mode(ds):
    row_id = ds.test_ids[0]
    size = (ds.spec.image_width, ds.spec.image_height)
    Image.new("L" if ds.spec.image_mode != "L" else "RGB", size).save(ds.frame_path(row_id, 1))
    return Expected(_frame_name(ds, row_id, 1), row_id, None, "image mode")


def _light_breakage(text: str, message: str) -> Callable[[TinyDataset], Expected]:
    def breakage(ds):
        row_id = ds.train_ids[3]
        ds.light_path(row_id).write_text(text)
        return Expected(_light_name(ds, row_id), row_id, None, message)

    return breakage


malformed_light_json = _light_breakage("[{", "malformed JSON")
light_json_not_a_list = _light_breakage('{"index": 0}', "expected a list")
light_entry_not_an_object = _light_breakage("[3]", "expected an object")
light_unknown_class = _light_breakage('[{"index": 0, "class": "purple", "bbox": [1, 2, 3, 4]}]', "'purple'")
light_short_bbox = _light_breakage('[{"index": 0, "class": "red", "bbox": [1, 2, 3]}]', "'bbox'")
light_text_index = _light_breakage('[{"index": "0", "class": "red", "bbox": [1, 2, 3, 4]}]', "'index'")
light_missing_key = _light_breakage('[{"index": 0, "bbox": [1, 2, 3, 4]}]', "missing keys ['class']")


def scene_shared_by_train_and_test(ds):
    train_scene, _ = ds.spec.parse_id(ds.train_ids[0])
    old_id = ds.test_ids[0]
    new_id = f"{train_scene}_520"  # a time no train row of that scene uses
    _set_cell(ds, "test", 0, ds.spec.id_column, new_id)
    ds.frame_path(old_id).parent.rename(ds.frame_path(new_id).parent)
    ds.light_path(old_id).rename(ds.light_path(new_id))
    return Expected(ds.spec.test_file, new_id, ds.spec.id_column, "must not share scenes")


ERROR_CASES = [
    missing_column, extra_column, targets_in_test_file, missing_csv, duplicate_id,
    id_not_matching_pattern, nan_target, inf_target, text_in_target, text_in_telemetry,
    unparseable_boolean, unparseable_category, missing_image_folder, missing_frame,
    unreadable_image, truncated_png, wrong_image_size, wrong_image_mode, malformed_light_json,
    light_json_not_a_list, light_entry_not_an_object, light_unknown_class, light_short_bbox,
    light_text_index, light_missing_key, scene_shared_by_train_and_test,
]
UNSAFE_IDS = {
    "id_with_dotdot": "../escape_20",
    "id_with_slash": "a/b_20",
    "id_with_backslash": "a\\b_20",
    "id_hidden_file": ".hidden_20",
}


@pytest.mark.parametrize(
    "breakage",
    [pytest.param(b, id=b.__name__) for b in ERROR_CASES]
    + [pytest.param(_unsafe_id_breakage(text), id=name) for name, text in UNSAFE_IDS.items()],
)
def test_each_problem_class_is_an_error_with_its_location(dataset, breakage, capsys):
    expected = breakage(dataset)

    report = validate_dataset(dataset.root, dataset.spec, progress=False)

    assert not report.ok
    found = [p for p in report.errors if expected.matches(p)]
    assert found, f"expected {expected}, got:\n" + "\n".join(map(str, report.errors))
    line = str(found[0])
    assert line.startswith(expected.file)
    if expected.row_id is not None:
        assert f"row {expected.row_id}" in line
    if expected.column is not None:
        assert f"column {expected.column}" in line

    assert main(["--data", str(dataset.root), "--no-progress"]) == 2
    assert line in capsys.readouterr().out


def test_valid_dataset_passes(dataset, capsys):
    report = validate_dataset(dataset.root, dataset.spec, progress=False)

    assert report.ok
    assert report.errors == [] and report.warnings == []
    assert report.rows_checked == {"train": 6, "test": 4}
    assert report.frames_checked == 10 * len(dataset.spec.frames)
    assert main(["--data", str(dataset.root), "--no-progress"]) == 0
    assert "0 errors, 0 warnings" in capsys.readouterr().out


def test_nan_telemetry_is_one_warning_per_column_not_an_error(dataset):
    float_col, bool_col = _float_column(dataset), _bool_column(dataset)
    first_row = _set_cell(dataset, "train", 1, float_col, "")
    _set_cell(dataset, "train", 4, float_col, "")
    _set_cell(dataset, "train", 2, bool_col, "")

    report = validate_dataset(dataset.root, dataset.spec, progress=False)

    assert report.ok, report.errors
    by_column = {p.column: p for p in report.warnings}
    assert set(by_column) == {float_col, bool_col}
    assert by_column[float_col].row_id == first_row
    assert "2 of 6 values missing" in by_column[float_col].message
    assert main(["--data", str(dataset.root), "--no-progress"]) == 0


def test_missing_traffic_light_file_is_a_warning(dataset):
    for row_id in dataset.train_ids[:2]:
        dataset.light_path(row_id).unlink()

    report = validate_dataset(dataset.root, dataset.spec, progress=False)

    assert report.ok
    [warning] = report.warnings
    assert warning.row_id == dataset.train_ids[0]
    assert "missing for 2 of 6 train rows" in warning.message


def test_unsorted_rows_are_a_warning(dataset):
    table = dataset.read_table("train")
    dataset.write_table("train", table.iloc[::-1])

    report = validate_dataset(dataset.root, dataset.spec, progress=False)

    assert report.ok
    [warning] = report.warnings
    assert "not sorted by ID" in warning.message and warning.column == dataset.spec.id_column


def test_problems_beyond_the_cap_are_counted_not_listed(dataset, capsys):
    table = dataset.read_table("train")
    table[_bool_column(dataset)] = "maybe"  # 6 errors
    dataset.write_table("train", table)

    report = validate_dataset(dataset.root, dataset.spec, max_problems=2, progress=False)

    assert len(report.errors) == 2 and report.errors_not_shown == 4 and report.n_errors == 6
    assert main(["--data", str(dataset.root), "--max-problems", "2", "--no-progress"]) == 2
    assert "4 more errors" in capsys.readouterr().out


def test_every_problem_is_reported_in_one_run(dataset):
    breakages = [missing_column, nan_target, unparseable_category, missing_frame, malformed_light_json]
    expected = [breakage(dataset) for breakage in breakages]

    report = validate_dataset(dataset.root, dataset.spec, progress=False)

    for want in expected:
        assert any(want.matches(p) for p in report.errors), want


def test_no_images_skips_the_row_files(dataset):
    missing_frame(dataset)
    malformed_light_json(dataset)

    report = validate_dataset(dataset.root, dataset.spec, check_images=False, progress=False)

    assert report.ok and report.frames_checked == 0
    assert main(["--data", str(dataset.root), "--no-images", "--no-progress"]) == 0


def test_problem_reads_as_one_located_line():
    problem = Problem("train_features.csv", "0a1b_120", "brakePressed", "cannot read 'maybe' as a boolean")
    assert str(problem) == "train_features.csv row 0a1b_120 column brakePressed: cannot read 'maybe' as a boolean"
    assert str(Problem("test_features.csv", None, None, "file not found")) == "test_features.csv: file not found"


def test_file_checks_follow_the_spec_not_fixed_names(tmp_path):
    spec = default_spec().model_copy(update={"frames": ["a.png", "b.png"], "frame_offsets_s": [-1.0, 0.0]})
    ds = make_tiny_dataset(tmp_path / "data", spec=spec)

    report = validate_dataset(ds.root, spec, progress=False)

    assert report.ok and report.frames_checked == 10 * 2
    ds.frame_path(ds.train_ids[0], 1).unlink()
    [error] = validate_dataset(ds.root, spec, progress=False).errors
    assert error.file.endswith("/b.png")


def test_parallel_file_checks_find_the_same_problems(dataset, monkeypatch):
    missing_frame(dataset)
    light_unknown_class(dataset)
    dataset.light_path(dataset.test_ids[0]).unlink()
    serial = validate_dataset(dataset.root, dataset.spec, progress=False, workers=1)

    monkeypatch.setattr(validate, "PARALLEL_MIN_ROWS", 0)
    monkeypatch.setattr(validate, "ROWS_PER_TASK", 2)
    parallel = validate_dataset(dataset.root, dataset.spec, progress=False, workers=2)

    assert parallel.errors == serial.errors and len(serial.errors) == 2
    assert parallel.warnings == serial.warnings and len(serial.warnings) == 1
