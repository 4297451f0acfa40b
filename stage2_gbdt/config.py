"""Config section for the stage 2 GBDTs (issue 6). Pure pydantic: importing it must stay cheap (no torch).

A learner's parameters come from `configs/stage2/<key>.yaml`, overridden key by key by
`stage2.params.<key>` (experiment files or `stage2.params.lightgbm.num_leaves=15`). Which
learners run: `--learner KEY` on the command line (the Makefile's LEARNER=), else `learners`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from trajstack.spec import StrictModel


class Stage2Variant(StrictModel):
    # Registry key of the learner this run fits.
    learner: str
    # Replaces stage2.per_metre_axes for this run (None: the same axes).
    per_metre_axes: list[str] | None = None
    # True: fitted without any stage-1 features (physics residual, as stage2.target_baseline
    # auto gives).
    without_stage1: bool = False
    # Overrides of the learner's params (on top of stage2.params.<learner>).
    params: dict[str, Any] = {}


class Stage2Config(StrictModel):
    # Learner registry keys run when the command line names none: lightgbm | xgboost | catboost
    # (one model per target) | catboost_multi (one model for all targets).
    learners: list[str] = ["lightgbm"]
    # Per learner key, overrides of configs/stage2/<key>.yaml (library constructor params).
    params: dict[str, dict[str, Any]] = {}
    # gpu: each learner adds its library's GPU switch (device_type / device / task_type).
    device: Literal["cpu", "gpu"] = "cpu"
    # Stop when the MAE on an inner holdout of the training scenes has not improved for this
    # many rounds (0: off, every fit runs the params' full number of rounds). The scored fold
    # is never the stopping set: its rows only score.
    early_stopping_rounds: int = 100
    # Share of a fold's training scenes held out (scene-grouped, seeded) to stop on.
    stop_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # After stopping, refit on all the fold's training rows with the found number of rounds
    # (two fits per (target, fold)); false keeps the stopped model, fitted on the rest.
    refit: bool = True
    # Seed bagging: fits per (target, fold), each with its own learner seed and inner holdout,
    # predictions averaged (costs `seeds` times the fits).
    seeds: int = 1
    # Parallel (target, fold) fits, and threads inside each fit; keep the product <= cores.
    n_jobs: int = 2
    threads_per_fit: int = 1
    # joblib: local processes (loky); ray: the same tasks through joblib's Ray backend.
    executor: Literal["joblib", "ray"] = "joblib"
    # Ray cluster address for executor=ray (None: the running/local Ray).
    ray_address: str | None = None
    # What each GBDT learns the residual to (its prediction is baseline + GBDT):
    # none: the target itself; physics: the features.physics.residual_baseline forecast;
    # stage1: the mean of the stage-1 runs' predictions (OOF for train rows, fold-mean for test;
    # needs features.stage1); auto: stage1 when features.stage1 is on, else physics. Trees are
    # piecewise constant: fitting a 0-90 m target directly wastes them on reproducing the
    # speed, fitting the residual spends them on corrections.
    target_baseline: Literal["none", "physics", "stage1", "auto"] = "auto"
    # Axes (dataset.axes) whose GBDTs learn that residual per metre travelled: divided by the
    # constant-acceleration distance to each horizon (features.physics speed and acceleration,
    # floored at 1 m), the prediction multiplied back. A height change ahead is the road's grade
    # times the distance, so the trees learn the grade, one function of the frames, instead of
    # its product with the speed (which trees, piecewise constant, approximate poorly).
    per_metre_axes: list[str] = []
    # Per learner key, per axis (dataset.axes): overrides of that learner's params for the
    # targets of that axis only, on top of `params` (e.g. {lightgbm: {z: {learning_rate:
    # 0.05}}}): an axis whose signal is weak and noisy (z on the demo) gains from slower
    # boosting where the others would only pay for it.
    axis_params: dict[str, dict[str, dict[str, Any]]] = {}
    # Per axis (dataset.axes): feature columns (glob patterns, e.g. "img_rowcolour*") that the
    # models of that axis's targets do not see. Statistics that read one thing (the grade, for
    # z) are noise to the other axes: with few rows, trees find spurious splits on them.
    # Every learner with one model per target; a learner fitting all targets at once
    # (catboost_multi) sees every column.
    axis_drop_columns: dict[str, list[str]] = {}
    # Learners (of those run) also fitted without the stage-1 features, each stage-1 run left
    # out in turn, as `--without-stage1 all` does (stage2/<learner>-without-<run>/); unlike
    # those, these runs are blend inputs: a model that never saw stage 1 errs differently.
    without_stage1: list[str] = []
    # Extra runs, each its own run folder (stage2/<name>/) and blend input: a learner fitted
    # with another target scaling and/or without stage 1, which errs differently from the
    # learners above. Fitted by a plain `trajstack stage2` when their learner is among those run.
    variants: dict[str, Stage2Variant] = {}
    # Features shown in importance.png.
    importance_top: int = 30

    @field_validator("n_jobs", "threads_per_fit", "seeds")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be >= 1")
        return value
