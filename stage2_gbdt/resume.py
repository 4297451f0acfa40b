"""Finished (target, fold) fits of a stage-2 run, kept so that an interrupted run resumes.

Each fit's outputs (validation rows and predictions, test predictions, importance, best
iteration) go to `<run>/fits/target<t>-fold<k>.npz` (`all-targets-fold<k>.npz` for a
multi-output learner) the moment the fit returns, written atomically and stamped with the
run's signature; a rerun under the same signature loads those and fits only the rest. A run of another signature never reads them (the artifact store moves
such a run aside, and the stamp is checked besides).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trajstack.io import atomic_path

ARRAYS = ("valid_rows", "valid_pred", "test_pred", "importance")


class FitStore:
    """One .npz per finished (target, fold) fit under `folder`, valid for `signature` only."""

    def __init__(self, folder: str | Path, signature: str):
        self.folder, self.signature = Path(folder), signature

    def path(self, target: int, fold: int) -> Path:
        # target -1 (cv.ALL_TARGETS): a multi-output learner's fit of every target at once.
        name = "all-targets" if target < 0 else f"target{target:02d}"
        return self.folder / f"{name}-fold{fold}.npz"

    def load(self, target: int, fold: int) -> dict[str, Any] | None:
        """The fit's result as `fit_one` returned it, or None when it is not done here."""
        path = self.path(target, fold)
        if not path.exists():
            return None
        with np.load(path) as saved:
            if str(saved["signature"]) != self.signature:
                return None
            best = float(saved["best_iteration"])
            return {"target": target, "fold": fold, **{k: saved[k] for k in ARRAYS},
                    "best_iteration": None if np.isnan(best) else best}

    def clear(self) -> None:
        """Forget every saved fit (`--force`: refit all)."""
        for path in self.folder.glob("*-fold*.npz"):
            path.unlink()

    def save(self, result: dict[str, Any]) -> None:
        best = result["best_iteration"]
        with atomic_path(self.path(result["target"], result["fold"])) as tmp, open(tmp, "wb") as f:
            np.savez(f, signature=np.str_(self.signature),
                     best_iteration=np.nan if best is None else float(best),
                     **{k: np.asarray(result[k]) for k in ARRAYS})
