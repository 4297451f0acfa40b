"""Blend weight optimisers, built from a string key by `create_optimizer` (timm-style registry).

Every optimiser follows the scikit-learn estimator contract on stacked predictions:
``fit(preds, y)`` with ``preds`` of shape (n_models, n_rows, n_targets) and ``y`` of shape
(n_rows, n_targets) returns self and sets ``weights_`` (n_models, n_targets): non-negative,
each column summing to 1; ``predict(preds)`` is the weighted sum per target.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trajstack.registry import Registry

OPTIMIZERS: Registry[type[BlendOptimizer]] = Registry("blend optimiser")
# Class decorator adding an optimiser under a key; a duplicate key is an error.
register_optimizer = OPTIMIZERS.register


def create_optimizer(key: str, **params: Any) -> BlendOptimizer:
    """The optimiser registered under `key` (config key blend.optimizer), built with `params`.

    Raises
    ------
    RegistryError : unknown key; the message lists the known ones.
    """
    return OPTIMIZERS.get(key)(**params)


def check_stack(preds: np.ndarray, y: np.ndarray | None = None) -> None:
    if preds.ndim != 3:
        raise ValueError(f"preds must be (n_models, n_rows, n_targets), got shape {preds.shape}")
    if y is not None and y.shape != preds.shape[1:]:
        raise ValueError(f"y shape {y.shape} does not match preds rows/targets {preds.shape[1:]}")
    if not np.isfinite(preds).all():
        raise ValueError("blend inputs hold NaN or infinite predictions")


class BlendOptimizer:
    """Base class: subclasses implement `_fit_weights(preds, y) -> (n_models, n_targets)`."""

    weights_: np.ndarray

    def fit(self, preds: np.ndarray, y: np.ndarray) -> BlendOptimizer:
        preds, y = np.asarray(preds, float), np.asarray(y, float)
        check_stack(preds, y)
        self.weights_ = normalise(self._fit_weights(preds, y))
        return self

    def predict(self, preds: np.ndarray) -> np.ndarray:
        preds = np.asarray(preds, float)
        check_stack(preds)
        return blend_predict(preds, self.weights_)

    def _fit_weights(self, preds: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError


def blend_predict(preds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-target weighted sum: (n_models, n, T) x (n_models, T) -> (n, T)."""
    return np.einsum("mnt,mt->nt", preds, weights)


def normalise(weights: np.ndarray) -> np.ndarray:
    # Solvers return tiny negative round-off; clip and rescale so weights stay a convex mix.
    weights = np.clip(np.asarray(weights, float), 0.0, None)
    return weights / weights.sum(axis=0, keepdims=True)


@register_optimizer("mean")
class MeanBlend(BlendOptimizer):
    """Equal weights: the baseline every other optimiser must beat."""

    def _fit_weights(self, preds: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.ones((preds.shape[0], preds.shape[2]))


@register_optimizer("lp")
class LPBlend(BlendOptimizer):
    """Exact MAE minimisation per target: a linear program solved by HiGHS.

    The primal problem for one target, with predictions P (n, M) and labels y, is
    min_w sum_i |y_i - (P w)_i| over the simplex (w >= 0, sum w = 1). Any single model and the
    mean are feasible points, so the optimum is never worse than either on the fit rows.

    It is solved in its dual form, which has only M constraints instead of 2n:
    max_{u in [-1, 1]^n, t} y'u - t subject to (P'u)_m <= t for every model m. The weights
    are the multipliers of those M constraints (they are >= 0 and sum to 1 by stationarity
    in t). On 43k rows it takes about a second where the primal took minutes.
    """

    def __init__(self, method: str = "highs"):
        self.method = method

    def _fit_weights(self, preds: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.stack([self._fit_one(preds[:, :, t].T, y[:, t]) for t in range(y.shape[1])], axis=1)

    def _fit_one(self, P: np.ndarray, y: np.ndarray) -> np.ndarray:
        from scipy.optimize import linprog

        n, m = P.shape
        if m == 1:
            return np.ones(1)
        # Variables [u (n), t]; linprog minimises, so the objective is -(y'u - t).
        cost = np.concatenate([-y, [1.0]])
        a_ub = np.hstack([P.T, -np.ones((m, 1))])
        # Bounds as one (n + 1, 2) array: a list of n tuples costs more than the solve.
        bounds = np.column_stack([np.r_[-np.ones(n), -np.inf], np.r_[np.ones(n), np.inf]])
        result = linprog(cost, A_ub=a_ub, b_ub=np.zeros(m), bounds=bounds, method=self.method)
        if result.status != 0:
            raise RuntimeError(f"blend LP failed: {result.message}")
        # Multipliers of the M model constraints (scipy reports them <= 0 for a minimum).
        return -np.asarray(result.ineqlin.marginals, float)


@register_optimizer("caruana")
class CaruanaBlend(BlendOptimizer):
    """Greedy ensemble selection with replacement (Caruana et al. 2004, as in AutoGluon).

    Start empty; at each of `ensemble_size` steps add the model whose inclusion gives the
    lowest MAE of the running average; weights are pick counts over picks. A tie goes to a
    model already picked (the most-picked one; the ensemble then stays small), then to the
    lower model index, so the result is deterministic. With `use_best` the picks are kept
    only up to the step with the lowest MAE (the earliest such step): later picks that made
    the fit worse are dropped, as AutoGluon's `use_best` does.

    Parameters
    ----------
    ensemble_size : number of picks.
    per_target : select per target column (True) or once on the MAE over all targets.
    use_best : truncate the picks at the best-scoring step (True) or keep all of them.
    """

    def __init__(self, ensemble_size: int = 50, per_target: bool = True, use_best: bool = True):
        self.ensemble_size = ensemble_size
        self.per_target = per_target
        self.use_best = use_best

    def _fit_weights(self, preds: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.per_target:
            return np.stack([self._select(preds[:, :, t:t + 1], y[:, t:t + 1])
                             for t in range(y.shape[1])], axis=1)
        counts = self._select(preds, y)
        return np.repeat(counts[:, None], y.shape[1], axis=1)

    def _select(self, preds: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Pick counts per model, (n_models,), truncated at the best step when `use_best`."""
        counts = np.zeros(preds.shape[0])
        running = np.zeros_like(y)
        picks, scores = [], []
        for step in range(1, self.ensemble_size + 1):
            candidates = (running[None] + preds) / step  # average after adding each model
            errors = np.abs(candidates - y[None]).mean(axis=(1, 2))
            tied = np.flatnonzero(np.isclose(errors, errors.min(), rtol=1e-12, atol=0.0))
            best = int(tied[np.argmax(counts[tied])])  # argmax: first of the most-picked
            counts[best] += 1
            running = running + preds[best]
            picks.append(best)
            scores.append(float(errors[best]))
        keep = int(np.argmin(scores)) + 1 if self.use_best else len(picks)
        return np.bincount(picks[:keep], minlength=preds.shape[0]).astype(float)
