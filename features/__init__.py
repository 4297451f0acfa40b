"""Feature builders for stage 2: telemetry, scene lags, physics, traffic lights, stage-1 OOF.

`build_features(cfg, folds)` (features.build) runs the builders listed in `features.builders`.
"""
