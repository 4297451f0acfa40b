"""stage1_nn: the stage-1 network (multi-frame ConvNeXt + telemetry + BiLSTM), K-fold OOF."""

import trajstack  # noqa: F401  (before torch: sets the OpenMP wait policy)
