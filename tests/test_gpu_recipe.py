"""`configs/gpu.yaml`'s code path on CPU, so that a user's first GPU run is not its first run.

The real GPU config, shrunk only where size or hardware forces it (tiny backbone, no download,
CPU device, 1 epoch, tiny data), keeps every switch that changes the code path: bf16 autocast,
channels_last, torch.compile of the backbone, flip TTA, scene mode with the 2-layer BiLSTM, and
DDP with two processes (gloo on CPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataset_factory import make_tiny_dataset

from trajstack.config import load_config
from trajstack.folds import load_folds

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
# What the CPU cannot take from gpu.yaml: the size of the model and data, the device, the
# download. Precision, layout, compile, TTA, mode and the LSTM shape stay as configured.
SHRINK = [
    "stage1.model.backbone=test_convnext", "stage1.model.pretrained=false", "stage1.device=cpu",
    "stage1.epochs=1", "stage1.batch_size=2", "stage1.eval_batch_size=4", "stage1.num_workers=0",
    "stage1.image_size=[32,64]", "stage1.progress=false", "stage1.threads=1", "folds.n_splits=2",
    "stage1.folds=[0]", "cache.workers=1",  # one fold: each fold's new model compiles anew
]


def test_gpu_recipe_keeps_its_code_path_switches():
    s1 = load_config("gpu", SHRINK).stage1
    assert (s1.precision, s1.channels_last, s1.compile, s1.tta_flip) == ("bf16", True, True, True)


def test_gpu_recipe_trains_under_ddp_with_bf16_channels_last_and_compile(tmp_path):
    data = make_tiny_dataset(tmp_path / "data", n_scenes=4, rows_per_scene=2, seed=5, n_test_scenes=2)
    args = ["--config", "gpu", f"data_dir={data.root}", f"output_dir={tmp_path / 'out'}",
            "experiment=gpu_cpu", *SHRINK, "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # A generous hang guard only: compiling twice on a busy 2-core machine takes a while.
    proc = subprocess.run([sys.executable, "-m", "stage1_nn.train", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cfg = load_config("gpu", [f"data_dir={data.root}", f"output_dir={tmp_path / 'out'}",
                              "experiment=gpu_cpu", *SHRINK])
    run_dir = cfg.experiment_dir / "stage1" / cfg.stage1.name
    oof = pd.read_parquet(run_dir / "oof.parquet")
    held_out = load_folds(cfg.experiment_dir / "folds.csv").fold_of(np.array(data.train_ids)) == 0
    # every row of fold 0 once across the 2 ranks: no loss, no duplicates
    assert oof["ID"].tolist() == sorted(np.array(data.train_ids)[held_out].tolist())
    targets = oof[cfg.dataset.target_columns].to_numpy()
    assert np.isfinite(targets).all()
    test = pd.read_parquet(run_dir / "test.parquet")
    assert test["ID"].tolist() == sorted(data.test_ids)
    assert np.isfinite(test[cfg.dataset.target_columns].to_numpy()).all()
