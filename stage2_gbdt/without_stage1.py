"""Stage 2 without one stage-1 run: what that run is worth after stacking.

`trajstack stage2 --without-stage1 RUN` (or `all`: each finished stage-1 run in turn) fits the
learners on the same feature table less RUN's stage-1 features (and, with no stage-1 run left,
with `features.stage1` off, so the target baseline falls back as `stage2.target_baseline=auto`
says). Each such fit is its own run, `outputs/<exp>/stage2/<learner>-without-<RUN>/`, marked
in its meta.json so the blend leaves it out unless `blend.runs` names it; the report compares
it with the learner's full run (see `ensembling.stage1_value`).
"""

from __future__ import annotations

from trajstack.artifacts import ArtifactError, ArtifactStore
from trajstack.config import Config, validate_config

# meta.json key of a run fitted without a stage-1 run (its value: that run's name).
WITHOUT_KEY = "without_stage1"
SEPARATOR = "-without-"


def without_run_name(learner: str, stage1_run: str) -> str:
    """Run folder name of learner `learner` fitted without stage-1 run `stage1_run`."""
    return f"{learner}{SEPARATOR}{stage1_run}"


def stage1_run_names(cfg: Config) -> list[str]:
    """The stage-1 runs stage 2 reads: `features.stage1.runs`, else every finished one."""
    if not cfg.features.uses_stage1:
        return []
    if cfg.features.stage1.runs is not None:
        return list(cfg.features.stage1.runs)
    return [r.meta["run"] for r in ArtifactStore(cfg.experiment_dir).finished_runs("stage1")]


def resolve_left_out(values: list[str], cfg: Config) -> list[str]:
    """Stage-1 run names from `--without-stage1` (repeatable, comma lists; `all`: every one read)."""
    used = stage1_run_names(cfg)
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if "all" in names:
        names = used
    unknown = [n for n in names if n not in used]
    if unknown or not names:
        raise ArtifactError(f"--without-stage1 names {unknown or names} but stage 2 reads the "
                            f"stage-1 runs {used or 'none'} (features.stage1 / finished runs under "
                            f"{cfg.experiment_dir / 'stage1'}); name one of those or `all`")
    return list(dict.fromkeys(names))


def config_without(cfg: Config, stage1_run: str) -> Config:
    """`cfg` with stage-1 run `stage1_run` left out of the features (stage 1 off if none is left)."""
    others = [n for n in stage1_run_names(cfg) if n != stage1_run]
    raw = cfg.to_dict()
    raw["features"]["stage1"].update(runs=others or None, enabled=bool(others))
    return validate_config(raw)
