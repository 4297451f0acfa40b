"""Each stage-1 run's value after stacking: stage 2 and the blend with and without its features.

A stage-1 model that is best alone need not be best after stacking; this table lets users
choose stage-1 runs by stacked CV. It reads only finished runs: the full stage-2 runs and the
runs that `trajstack stage2 --without-stage1 RUN` (`make stage1-value`) fitted without RUN's
features. The blend with and without a run is refit here (cheap: weights only), nested like
the blend command's score, on the same learners on both sides so that only the stage-1 run
differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ensembling.fitting import fit_blend
from ensembling.inputs import load_inputs
from stage2_gbdt.without_stage1 import WITHOUT_KEY, stage1_run_names, without_run_name
from trajstack.artifacts import ArtifactStore, RunResult
from trajstack.config import Config
from trajstack.folds import Folds
from trajstack.metrics import mae_report

COMMAND = "trajstack stage2 --without-stage1 all"


@dataclass
class Stage1Value:
    """One stage-1 run's CV alone and after stacking (None: the run to compare is missing).

    Attributes
    ----------
    run : stage-1 run name.
    alone : its own OOF MAE.
    stage2_with, stage2_without : learner -> stage-2 CV MAE with all stage-1 runs / without it.
    blend_with, blend_without : nested blend MAE of the stage-1 runs and those learners' stage-2
        runs, with this run / without it (and its features); None when no learner has both.
    """

    run: str
    alone: float
    stage2_with: dict[str, float] = field(default_factory=dict)
    stage2_without: dict[str, float] = field(default_factory=dict)
    blend_with: float | None = None
    blend_without: float | None = None


def stage1_values(cfg: Config, folds: Folds) -> list[Stage1Value]:
    """A `Stage1Value` per stage-1 run that stage 2 reads (features.stage1)."""
    store = ArtifactStore(cfg.experiment_dir)
    finished = store.finished_runs()
    stage1 = {r.meta["run"]: r for r in finished if r.meta.get("stage") == "stage1"}
    full = {r.meta["run"]: r for r in finished
            if r.meta.get("stage") == "stage2" and WITHOUT_KEY not in r.meta}
    values = []
    for name in stage1_run_names(cfg):
        if name not in stage1:
            continue
        alone = _nested_mae(cfg, folds, [stage1[name].name])
        value = Stage1Value(run=name, alone=alone)
        without = {r.meta.get("learner"): r for r in finished
                   if r.meta.get(WITHOUT_KEY) == name and r.meta["run"] in
                   {without_run_name(k, name) for k in full}}
        both = [k for k in full if k in without]
        for key in both:
            value.stage2_with[key] = _cv(full[key])
            value.stage2_without[key] = _cv(without[key])
        if both:
            kept_stage1 = [stage1[n].name for n in stage1_run_names(cfg) if n in stage1]
            value.blend_with = _nested_mae(cfg, folds, [*kept_stage1, *(full[k].name for k in both)])
            value.blend_without = _nested_mae(
                cfg, folds, [*(r for r in kept_stage1 if r != stage1[name].name),
                             *(without[k].name for k in both)])
        values.append(value)
    return values


def _cv(run: RunResult) -> float:
    return float(run.meta["scores"]["mae"])


def _nested_mae(cfg: Config, folds: Folds, runs: list[str]) -> float:
    """Nested blend MAE of `runs` ("stage/run") with the configured optimiser (a single run: its CV)."""
    from ensembling.blend import optimizer_params

    chosen = cfg.model_copy(update={"blend": cfg.blend.model_copy(update={"runs": runs})})
    inputs = load_inputs(chosen, ArtifactStore(cfg.experiment_dir), folds)
    if len(inputs.names) == 1:
        return mae_report(inputs.y, inputs.oof[0], cfg.dataset)["mae"]
    fit = fit_blend(inputs.oof, inputs.y, inputs.fold, inputs.test[:, :1], cfg.blend.optimizer,
                    optimizer_params(cfg.blend), nested=True)
    return mae_report(inputs.y, fit.oof_nested, cfg.dataset)["mae"]


def value_table_rows(values: list[Stage1Value]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the report's table (MAE to 4 places; '-' where a run is missing)."""
    learners = sorted({k for v in values for k in v.stage2_with})
    header = ["stage-1 run", "alone", *(f"stage2 {k} with / without (gain)" for k in learners),
              "blend with / without (gain)"]
    rows = []
    for v in values:
        cells = [v.run, f"{v.alone:.4f}"]
        for key in learners:
            cells.append(_pair(v.stage2_with.get(key), v.stage2_without.get(key)))
        cells.append(_pair(v.blend_with, v.blend_without))
        rows.append(cells)
    return header, rows


def _pair(with_: float | None, without: float | None) -> str:
    if with_ is None or without is None or not np.isfinite([with_, without]).all():
        return "-"
    return f"{with_:.4f} / {without:.4f} ({without - with_:+.4f})"
