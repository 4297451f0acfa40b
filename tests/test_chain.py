"""The content-addressed chain: which config makes a signature, output digests in meta.json,
a changed stage 1 cascading to stage 2 and the blend (and an identical rerun not), and the
blend leaving out a stale run with the command that rebuilds it."""

import copy

import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset
from test_features_stage1 import write_fake_stage1_run
from test_stage2 import FAST

from stage2_gbdt.params import STAGE as STAGE2
from stage2_gbdt.params import learner_params, run_config
from stage2_gbdt.train import main as stage2_main
from trajstack.artifacts import (
    OOF_EMB_FILE,
    OOF_FILE,
    TEST_FILE,
    ArtifactStore,
    Stage,
    output_hashes,
)
from trajstack.cli import main as cli_main
from trajstack.config import load_config
from trajstack.io import file_hash, read_json


def _signature(cfg, stage=STAGE2, key="lightgbm"):
    config = run_config(cfg, key, learner_params(cfg, key))
    return ArtifactStore(cfg.experiment_dir).run(stage, key, config, {"x": "1"}, "f").signature


def test_settings_that_cannot_change_results_leave_the_signature():
    base = load_config("demo")
    same = [["stage2.n_jobs=7"], ["stage2.executor=ray", "stage2.ray_address=ray://x:1"],
            ["stage1.progress=false"], ["output_dir=/elsewhere"]]
    for overrides in same:
        assert _signature(load_config("demo", overrides)) == _signature(base), overrides
    other = [["stage2.params.lightgbm.learning_rate=0.01"], ["stage2.stop_fraction=0.3"],
             ["seed=1"], ["features.stage1=false"]]
    for overrides in other:
        assert _signature(load_config("demo", overrides)) != _signature(base), overrides
    # Another stage's section is not part of stage 2's signature; a code version bump is.
    assert _signature(load_config("demo", ["stage1.epochs=9", "blend.optimizer=mean"])) == _signature(base)
    bumped = Stage(STAGE2.name, STAGE2.sections, STAGE2.version + 1)
    assert _signature(base, stage=bumped) != _signature(base)


def test_the_rule_drops_non_result_keys_at_any_depth():
    stage = Stage("s", sections=("stage1", "stage2"))
    config = {"stage1": {"epochs": 3, "threads": 2, "num_workers": 4, "fold_workers": 2, "progress": True},
              "stage2": {"n_jobs": 2, "executor": "joblib", "params": {"a": {"n_jobs": 8, "lr": 1}}},
              "blend": {"x": 1}, "data_dir": "/d"}
    assert stage.result_config(copy.deepcopy(config)) == {
        "stage1": {"epochs": 3}, "stage2": {"params": {"a": {"lr": 1}}}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_dataset(tmp_path_factory.mktemp("chain_data"), n_scenes=15, rows_per_scene=4,
                             n_test_scenes=3, seed=2)


def test_a_changed_stage1_cascades_and_an_identical_rerun_does_not(tiny, tmp_path, capsys):
    common = [f"output_dir={tmp_path}", *FAST, "features.builders=[telemetry, stage1]",
              "report.enabled=false"]
    cfg = load_config("demo", [f"data_dir={tiny.root}", "experiment=chain", *common])
    args = ["--config", "demo", "--data", str(tiny.root), "--exp", "chain", *common]
    s1_dir = write_fake_stage1_run(cfg, seed=0)
    s2_dir = cfg.experiment_dir / "stage2" / "lightgbm"
    blend_dir = cfg.experiment_dir / "blend" / cfg.blend.run_name

    def stage2_and_blend():
        assert stage2_main([*args, "--learner", "lightgbm"]) == 0
        assert cli_main(["blend", *args]) == 0
        console = capsys.readouterr()  # info on stdout, warnings on stderr: both are read
        return (console.out + console.err, read_json(s2_dir / "meta.json"),
                read_json(blend_dir / "meta.json"))

    out, s2_meta, blend_meta = stage2_and_blend()
    s1_meta = read_json(s1_dir / "meta.json")
    # meta.json records the content hash of every output, per-fold files included
    assert s1_meta["outputs"] == output_hashes(s1_dir)
    assert {OOF_FILE, TEST_FILE, OOF_EMB_FILE, "fold0/test.parquet", "fold2/test_emb.npy"} <= set(
        s1_meta["outputs"])
    assert s1_meta["outputs"][OOF_FILE] == file_hash(s1_dir / OOF_FILE)
    assert s2_meta["outputs"][OOF_FILE] == file_hash(s2_dir / OOF_FILE)
    assert "run:stage1/fake" in s2_meta["inputs"] and "run:stage2/lightgbm" in blend_meta["inputs"]
    n_cache = len(list((cfg.experiment_dir / "features").glob("stage1-*")))

    # Stage 1 rerun writing byte-identical outputs: nothing downstream is redone.
    write_fake_stage1_run(cfg, seed=0)
    out, s2_again, blend_again = stage2_and_blend()
    assert "done already" in out and "up to date" in out
    assert s2_again["finished"] == s2_meta["finished"] and blend_again["finished"] == blend_meta["finished"]
    assert len(list((cfg.experiment_dir / "features").glob("stage1-*"))) == n_cache

    # Stage 1 rerun with other predictions: the blend leaves the stale stage 2 out, naming the
    # command that rebuilds it; stage 2 then refits on its own (no --force) and the blend follows.
    write_fake_stage1_run(cfg, seed=1)
    assert cli_main(["blend", *args]) == 0
    err = capsys.readouterr().err  # a warning: the console's stderr
    note = [line for line in err.splitlines() if "leaving out stage2/lightgbm" in line]
    assert len(note) == 1 and "stage1/fake" in note[0] and "`trajstack stage2 --learner lightgbm`" in note[0]
    assert read_json(blend_dir / "weights.json")["models"] == ["stage1/fake"]
    old_oof = pd.read_parquet(s2_dir / OOF_FILE)
    out, s2_new, blend_new = stage2_and_blend()
    assert "inputs changed" in out and "done already" not in out
    assert s2_new["signature"] != s2_meta["signature"]
    assert s2_new["inputs"]["run:stage1/fake"] == ArtifactStore(cfg.experiment_dir).load(s1_dir).output_digest
    assert not pd.read_parquet(s2_dir / OOF_FILE).equals(old_oof)
    assert len(list((cfg.experiment_dir / "features").glob("stage1-*"))) == n_cache + 2  # train + test
    assert read_json(blend_dir / "weights.json")["models"] == ["stage1/fake", "stage2/lightgbm"]
    assert "leaving out" not in out
