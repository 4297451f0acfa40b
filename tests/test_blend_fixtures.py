"""Synthetic experiments for the blend, submission and report tests (no tests here).

A tiny dataset from `dataset_factory` plus model runs written through the real artifact
store: each model's OOF is the labels plus its own bias and noise, so blends have something
to gain, and stage-1/stage-2 style side files (metrics.jsonl, importance.csv) exist.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from dataset_factory import make_tiny_dataset

from trajstack.artifacts import OOF_FILE, TEST_FILE, ArtifactStore, Run
from trajstack.config import Config, load_config
from trajstack.folds import Folds, ensure_folds
from trajstack.metrics import mae_report
from trajstack.tables import read_table

# name -> (noise scale, bias): distinct errors so that the optimum mixes models.
MODELS = {"stage1/convnext": (0.30, 0.05), "stage2/lightgbm": (0.25, -0.05),
          "stage2/xgboost": (0.45, 0.0)}


@dataclass
class Experiment:
    cfg: Config
    folds: Folds
    data_dir: Path
    overrides: list[str]

    @property
    def store(self) -> ArtifactStore:
        return ArtifactStore(self.cfg.experiment_dir)

    def cli_args(self, *extra: str) -> list[str]:
        """Arguments for `trajstack blend/report` pointing at this experiment."""
        return ["--config", "atmacup18", "--data", str(self.data_dir), "--exp", self.cfg.experiment,
                *self.overrides, *extra]


def make_experiment(tmp_path: Path, n_scenes: int = 24, n_splits: int = 3,
                    extra_overrides: list[str] | None = None) -> Experiment:
    """Dataset + folds.csv of a fresh experiment (no runs yet)."""
    data_dir = tmp_path / "data"
    make_tiny_dataset(data_dir, n_scenes=n_scenes, rows_per_scene=3, n_test_scenes=4, seed=1)
    overrides = [f"output_dir={tmp_path / 'outputs'}", f"folds.n_splits={n_splits}",
                 *(extra_overrides or [])]
    cfg = load_config("atmacup18", [f"data_dir={data_dir}", "experiment=synthetic", *overrides])
    return Experiment(cfg, ensure_folds(cfg), data_dir, overrides)


def write_model_run(exp: Experiment, name: str, noise: float, bias: float, seed: int,
                    fold_hash: str | None = None, drop_ids: int = 0) -> Run:
    """A finished run `name` ("stage/run") whose predictions are labels + bias + noise."""
    spec = exp.cfg.dataset
    stage, run_name = name.split("/")
    train = read_table(exp.data_dir, spec, "train")
    test = read_table(exp.data_dir, spec, "test")
    rng = np.random.default_rng(seed)
    y = train[spec.target_columns].to_numpy()
    oof = pd.DataFrame(y + bias + noise * rng.standard_normal(y.shape), columns=spec.target_columns)
    oof.insert(0, "fold", exp.folds.fold_of(train[spec.id_column]))
    oof.insert(0, spec.id_column, train[spec.id_column])
    if stage == "stage1":  # auxiliary columns the blend must ignore
        oof["v_0"] = rng.standard_normal(len(oof))
    oof = oof.iloc[drop_ids:]
    preds = pd.DataFrame(rng.standard_normal((len(test), len(spec.target_columns))),
                         columns=spec.target_columns)
    preds.insert(0, spec.id_column, test[spec.id_column])
    run = exp.store.run(stage, run_name, {"model": name, "noise": noise}, {"seed": str(seed)},
                        fold_hash or exp.folds.hash)
    run.begin()
    run.write_parquet(OOF_FILE, oof)
    run.write_parquet(TEST_FILE, preds.sample(frac=1.0, random_state=seed))  # any order
    if stage == "stage1":
        for k in range(exp.folds.n_splits):
            lines = [json.dumps({"epoch": e, "train_loss": 1.0 / (e + 1), "val_mae": 0.5 + 0.3 / (e + 1)})
                     for e in range(4)]
            (run.dir / f"fold{k}").mkdir(exist_ok=True)
            (run.dir / f"fold{k}" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    else:
        features = [f"feat_{i}" for i in range(8)]
        pd.DataFrame([{"feature": f, "target": t, "fold": k, "importance": float(i + 1 + k)}
                      for i, f in enumerate(features) for t in spec.target_columns[:2]
                      for k in range(2)]).to_csv(run.dir / "importance.csv", index=False)
    run.finish(scores={"mae_report": mae_report(y[drop_ids:], oof[spec.target_columns], spec)})
    return run


def write_all_models(exp: Experiment) -> None:
    for seed, (name, (noise, bias)) in enumerate(MODELS.items()):
        write_model_run(exp, name, noise, bias, seed)


def write_zero_test_labels(exp: Experiment) -> None:
    """oracle/test_labels.csv with every target 0 for every test ID, as a benchmark reads it."""
    spec = exp.cfg.dataset
    ids = pd.read_csv(exp.data_dir / "test_features.csv", dtype=str)[spec.id_column]
    (exp.data_dir / "oracle").mkdir()
    pd.DataFrame({spec.id_column: ids, **{t: 0.0 for t in spec.target_columns}}).to_csv(
        exp.data_dir / "oracle" / "test_labels.csv", index=False)
