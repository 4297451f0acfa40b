"""Stage 2: one GBDT per target per fold (LightGBM, XGBoost or CatBoost, chosen by config).

`trajstack stage2` runs `stage2_gbdt.train:main`; `stage2_gbdt.cv.cross_validate` is the core.
"""
