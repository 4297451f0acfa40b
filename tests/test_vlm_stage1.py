"""Stage 1 trains one epoch with VLM features fused, through the real CLIs, on tiny data.

`trajstack vlm` caches the features; with `vlm.enabled: true` stage 1 reads that cache and
projects the vectors (Linear -> ReLU -> Dropout) before the BiLSTM.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
pytest.importorskip("timm")

from dataset_factory import make_tiny_dataset  # noqa: E402

from stage1_nn.vlm.tiny import prompt_texts, save_tiny_qwen2_vl  # noqa: E402
from trajstack.artifacts import CHECKPOINT_FILE, OOF_FILE  # noqa: E402
from trajstack.cli import main as trajstack_main  # noqa: E402
from trajstack.config import load_config  # noqa: E402

HIDDEN = 32

# The stage-1 network shrunk to a toy: 1 fold, 1 epoch, a 4-stage ConvNeXt of 8..64 channels.
STAGE1_SHRINK = [
    "folds.n_splits=2", "stage1.folds=[0]", "stage1.epochs=1", "stage1.batch_size=2",
    "stage1.device=cpu", "stage1.threads=1", "stage1.progress=false", "stage1.ema.enabled=false",
    "stage1.model.backbone=convnext_atto",
    "stage1.model.backbone_kwargs={dims: [8, 16, 32, 64], depths: [1, 1, 1, 1]}",
    "stage1.model.lstm.hidden=16", "stage1.model.telemetry.width=16",
    "stage1.augment.flip_p=0",  # VLM vectors exist for unmirrored rows only (refused with flips)
]


@pytest.mark.slow
def test_stage1_one_epoch_with_vlm_features(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = make_tiny_dataset(tmp_path / "data", n_scenes=4, rows_per_scene=2, n_test_scenes=1, seed=5)
        model = save_tiny_qwen2_vl(tmp_path / "tiny_vlm", texts=prompt_texts(load_config("demo").vlm),
                                   hidden_size=HIDDEN)
        common = ["--config", "demo", "--data", str(data.root), "--exp", "vlm1",
                  f"output_dir={tmp_path / 'out'}", f"vlm.model={model}", "vlm.enabled=true"]
        assert trajstack_main(["vlm", *common, "vlm.progress=false"]) == 0
        # vlm.enabled alone makes stage 1 read the cache (and refuse a mismatched one).
        assert trajstack_main(["stage1", *common, *STAGE1_SHRINK]) == 0
    finally:
        torch.set_num_threads(before)

    run = next((tmp_path / "out" / "vlm1" / "stage1").iterdir())
    oof = pd.read_parquet(run / OOF_FILE)
    assert len(oof) > 0 and np.isfinite(oof.filter(regex=r"^[xyz]_\d$").to_numpy()).all()
    state = torch.load(run / "fold0" / CHECKPOINT_FILE, map_location="cpu", weights_only=False)["state_dict"]
    # The VLM vector enters through the extra-input projector, sized to the VLM's hidden state.
    assert state["extra.0.weight"].shape[1] == HIDDEN
