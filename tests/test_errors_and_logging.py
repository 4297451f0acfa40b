"""One error boundary and one logger (issue 13).

A project error (`TrajstackError`) raised in any command reaches the CLI as one line on stderr,
`trajstack <command>: ...`, exit code 2, no traceback. Every stage logs through stdlib `logging`:
the console on rank 0 only, and each run's log.txt.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dataset_factory import make_tiny_dataset

from trajstack.cli import main as cli_main
from trajstack.config import ConfigError
from trajstack.errors import TrajstackError, one_line

SMALL_GBDT = ["folds.n_splits=2", "stage2.n_jobs=1", "stage2.early_stopping_rounds=5",
              "stage2.params.lightgbm={n_estimators: 20, num_leaves: 4, min_child_samples: 3}",
              "features.builders=[telemetry, scene_lags, physics]", "features.stage1=false"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("errors_data"), n_scenes=6, rows_per_scene=3,
                             n_test_scenes=2, seed=5)


def _common(tiny, out):
    return ["--config", "demo", "--data", str(tiny.root), "--exp", "e", f"output_dir={out}",
            f"cache.dir={out / 'cache'}"]


def _assert_one_line_error(command, capsys, *needles):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"trajstack {command}: ")
    assert "Traceback" not in captured.err + captured.out
    for needle in needles:
        assert needle in lines[0]


def test_project_errors_share_one_base_class():
    from ensembling.submission import SubmissionError
    from features.stage1 import Stage1MissingError
    from stage1_nn.model import PretrainedWeightsError
    from stage1_nn.vlm.cache import VLMCacheError
    from stage1_nn.vlm.model import VLMModelNotFoundError
    from trajstack.artifacts import ArtifactError, FoldMismatchError
    from trajstack.registry import RegistryError
    from trajstack.tables import DataError

    for cls in (ConfigError, DataError, RegistryError, ArtifactError, FoldMismatchError,
                Stage1MissingError, SubmissionError, VLMCacheError, VLMModelNotFoundError,
                PretrainedWeightsError):
        assert issubclass(cls, TrajstackError), cls
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)  # old excepts hold
    assert one_line(ConfigError("invalid config:\n  a: bad\n  b: worse")) == "invalid config: a: bad; b: worse"
    noted = ConfigError("bad value")
    noted.add_note("stage1 fold 1 failed (folds [0] finished and are kept)")  # context added on the way up
    assert one_line(noted) == "bad value; stage1 fold 1 failed (folds [0] finished and are kept)"


@pytest.mark.parametrize("command, extra, needles", [
    ("validate", ["folds.n_splits=many"], ["folds.n_splits"]),
    ("cache", ["dataset.images_dir=null"], ["telemetry-only", "features.stage1=false"]),
    ("folds", ["--data", "/nonexistent/dataset"], ["train_features.csv: file not found", "--data"]),
    ("stage1", ["dataset.images_dir=null"], ["telemetry-only", "features.stage1=false"]),
    ("stage2", ["features.stage1=true"], ["no finished stage-1 run", "features.stage1=false"]),
    ("blend", [], ["no finished stage runs"]),
    ("report", [], ["no finished stage runs"]),
    ("vlm", ["vlm.model=Qwen/Qwen2-VL-2B-Instruct", "vlm.hf_cache_dir=EMPTY"], ["HF_HUB_OFFLINE=1"]),
])
def test_a_project_error_in_each_command_is_one_line_and_exit_2(tiny, tmp_path, capsys, monkeypatch,
                                                                command, extra, needles):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    extra = [e.replace("EMPTY", str(tmp_path / "hf")) for e in extra]
    assert cli_main([command, *_common(tiny, tmp_path), *extra]) == 2
    _assert_one_line_error(command, capsys, *needles)


def test_missing_pretrained_weights_offline_stop_stage1_with_one_line(tiny, tmp_path):
    # The real first-hour case, as a user runs it: no network, empty Hugging Face cache.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent),
                                          os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "trajstack", "stage1", *_common(tiny, tmp_path),
         "stage1.model.pretrained=true", "stage1.epochs=1", "stage1.progress=false", "folds.n_splits=2"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith("trajstack stage1: ")
    assert "HF_HUB_OFFLINE=1" in lines[0] and "stage1.model.pretrained_file=PATH" in lines[0]


def test_run_log_receives_what_the_console_shows(tiny, tmp_path, capsys):
    common = [*_common(tiny, tmp_path), *SMALL_GBDT]
    assert cli_main(["stage2", "--learner", "lightgbm", *common]) == 0
    out = capsys.readouterr().out
    stage2_log = (tmp_path / "e" / "stage2" / "lightgbm" / "log.txt").read_text()
    cv_line = next(line for line in out.splitlines() if line.startswith("stage2 lightgbm: CV MAE"))
    assert cv_line in stage2_log
    # run.log details go to the file only (the console has the summary).
    assert "features, " in stage2_log and "features, " not in out

    assert cli_main(["blend", *common, "report.enabled=false"]) == 0
    out = capsys.readouterr().out
    logs = list((tmp_path / "e" / "blend").glob("*/log.txt"))
    assert len(logs) == 1
    blend_log = logs[0].read_text()
    shown = [line.strip() for line in out.splitlines() if line.strip()]
    assert any(line.startswith("submission:") for line in shown)
    for line in shown:
        assert line in blend_log, f"{line!r} printed but not in {logs[0]}"
    # The stage-2 run's file did not receive the blend's lines.
    assert "submission:" not in (tmp_path / "e" / "stage2" / "lightgbm" / "log.txt").read_text()


def test_console_is_rank_0_only(tiny, tmp_path, capsys, monkeypatch):
    common = _common(tiny, tmp_path)
    monkeypatch.setenv("RANK", "1")
    assert cli_main(["folds", *common]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    monkeypatch.setenv("RANK", "0")
    assert cli_main(["folds", *common]) == 0
    assert "folds.csv" in capsys.readouterr().out
