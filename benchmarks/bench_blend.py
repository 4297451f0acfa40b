"""Blend benchmark: what each blend input and option gives, nested CV and test MAE.

Reads a finished experiment (after `make stage1 stage2 blend`, optionally `make stage1-value`)
and refits only blend weights, so it takes seconds. Rows: every single model, then blends
adding one thing at a time (GBDTs, optimiser, segment weights, the stage-1-less stage-2 runs,
the `stage2.variants` runs).
Every blend CV figure is nested (weights fit on K-1 folds, scored on the held-out one); test
MAE is quoted from the data's oracle, never used to choose. The markdown table goes between
``<!-- bench:blend -->`` markers in README.md.

    python -m benchmarks.bench_blend --config configs/demo.yaml --data data/demo --exp demo
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from benchmarks.bench_pipeline import machine_info, machine_note
from benchmarks.readme_table import fmt_cell, print_and_write, ratio_cell
from ensembling.blend import blend_segments, optimizer_params
from ensembling.fitting import fit_blend
from ensembling.inputs import load_inputs
from ensembling.oracle import test_score
from stage2_gbdt.train import VARIANT_KEY
from stage2_gbdt.without_stage1 import WITHOUT_KEY
from trajstack.artifacts import ArtifactStore
from trajstack.config import Config, load_config
from trajstack.folds import ensure_folds
from trajstack.metrics import mae_report

MARKER = "blend"


def variants(cfg: Config) -> list[tuple[str, list[str], dict[str, Any]]]:
    """(label, input runs, blend overrides) to score, each adding one thing to the one before."""
    finished = ArtifactStore(cfg.experiment_dir).finished_runs()
    stage1 = [r.name for r in finished if r.meta.get("stage") == "stage1"]
    # The learners' own runs, then the two kinds of extra blend inputs, each added as a step.
    gbdts = [r.name for r in finished if r.meta.get("stage") == "stage2"
             and WITHOUT_KEY not in r.meta and VARIANT_KEY not in r.meta]
    without = [r.name for r in finished if WITHOUT_KEY in r.meta]
    extra = [r.name for r in finished if VARIANT_KEY in r.meta]
    lgbm = [n for n in gbdts if n.endswith("/lightgbm")][:1]
    out = []
    if stage1 and lgbm:
        out.append(("stage 1 + lightgbm, lp", [*stage1, *lgbm], {"optimizer": "lp"}))
    everything = [*stage1, *gbdts]
    out += [(f"stage 1 + {len(gbdts)} GBDTs, mean", everything, {"optimizer": "mean"}),
            (f"stage 1 + {len(gbdts)} GBDTs, caruana", everything, {"optimizer": "caruana"}),
            (f"stage 1 + {len(gbdts)} GBDTs, lp", everything, {"optimizer": "lp"}),
            (f"stage 1 + {len(gbdts)} GBDTs, lp + scene-size segments", everything,
             {"optimizer": "lp", "segments": {"by": "scene_size", "edges": [2]}})]
    if without:
        out += [(f"+ {len(without)} stage-2 runs without stage 1, lp", [*everything, *without],
                 {"optimizer": "lp"}),
                (f"+ {len(without)} stage-2 runs without stage 1, lp + segments",
                 [*everything, *without],
                 {"optimizer": "lp", "segments": {"by": "scene_size", "edges": [2]}})]
    if extra:
        out.append((f"+ {len(extra)} stage2.variants runs, lp", [*everything, *without, *extra],
                    {"optimizer": "lp"}))
    return out


def score_blend(cfg: Config, runs: list[str], blend: dict[str, Any]) -> dict[str, Any]:
    """Nested CV and test MAE of the blend of `runs` with `blend` config overrides."""
    section = cfg.blend.model_validate({**cfg.blend.model_dump(), **blend, "runs": runs})
    chosen = cfg.model_copy(update={"blend": section})
    inputs = load_inputs(chosen, ArtifactStore(cfg.experiment_dir), ensure_folds(cfg))
    segment, segment_test = blend_segments(chosen, inputs)
    fit = fit_blend(inputs.oof, inputs.y, inputs.fold, inputs.test, section.optimizer,
                    optimizer_params(section), nested=True, segment=segment,
                    segment_test=segment_test, min_segment_rows=section.segments.min_rows)
    test = test_score(cfg.data_dir, inputs.test_ids, fit.test, cfg.dataset)
    kept = sorted(fit.segment_weights) if segment is not None else None
    return {"cv_mae": mae_report(inputs.y, fit.oof_nested, cfg.dataset)["mae"],
            "test_mae": test["mae"] if test else None, "segments_kept": kept}


def run(config: str, data: str, exp: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Every single model's and every blend variant's nested CV and test MAE."""
    cfg = load_config(config, [*(overrides or []), f"data_dir={data}", f"experiment={exp}"])
    store = ArtifactStore(cfg.experiment_dir)
    singles = []
    for r in store.finished_runs():
        if r.meta.get("stage") in ("stage1", "stage2"):
            scored = score_blend(cfg, [r.name], {"optimizer": "mean"})  # one input: the run itself
            singles.append({"model": r.name, **scored, "wall_time_s": r.meta.get("wall_time_s"),
                            "cpu_s": r.meta.get("cpu_s")})
    blends = [{"model": label, "inputs": len(runs), **score_blend(cfg, runs, blend)}
              for label, runs, blend in variants(cfg)]
    return {"experiment": exp, "singles": singles, "blends": blends, "machine": machine_info()}


def to_markdown(result: dict[str, Any]) -> str:
    """Singles, then blends with their ratio to the best single model (CV and test)."""
    # Every single model counts, the stage-2 runs without stage 1 too (they are blend inputs).
    best = min(result["singles"], key=lambda s: s["cv_mae"])
    lines = ["| model | CV MAE (nested for blends) | test MAE | x best single (CV / test) | wall time (s) "
             "| CPU-s |", "|---|---|---|---|---|---|"]
    for s in sorted(result["singles"], key=lambda s: s["cv_mae"]):
        lines.append(f"| {s['model']} | {fmt_cell(s['cv_mae'])} | {fmt_cell(s['test_mae'])} | "
                     f"{ratio_cell(s, best)} | {fmt_cell(s.get('wall_time_s'), 1)} | {fmt_cell(s.get('cpu_s'), 0)} |")
    for b in result["blends"]:
        kept = "" if b["segments_kept"] is None else f" (kept: {', '.join(b['segments_kept']) or 'none'})"
        lines.append(f"| blend: {b['model']}{kept} | {fmt_cell(b['cv_mae'])} | {fmt_cell(b['test_mae'])} | "
                     f"{ratio_cell(b, best)} | | |")
    note = (f"Best single model: {best['model']}. Blend CV figures are nested (weights, and the "
            "segment keep/drop choice, fit without the fold they score); test MAE is quoted only.")
    return "\n".join(lines) + "\n\n" + note + "\n\n" + machine_note(result["machine"]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--data", default="data/demo")
    parser.add_argument("--exp", default="demo")
    parser.add_argument("--readme", help="README to write the table into")
    parser.add_argument("overrides", nargs="*", help="config overrides key=value")
    args = parser.parse_args(argv)
    result = run(args.config, args.data, args.exp, args.overrides)
    print_and_write(result, to_markdown(result), args.readme, MARKER)
    return 0


if __name__ == "__main__":
    sys.exit(main())
