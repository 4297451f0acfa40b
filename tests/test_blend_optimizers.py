"""Blend optimisers: LP optimality, convex weights, Caruana selection, the registry."""

import numpy as np
import pytest

from ensembling.optimizers import OPTIMIZERS, create_optimizer, register_optimizer


def _stack(n_models=4, n_rows=300, n_targets=6, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n_rows, n_targets)) * 3
    scales = np.linspace(0.3, 1.2, n_models)[:, None, None]
    # Heavy-tailed, biased errors: the MAE optimum is not the mean and not one model.
    preds = y[None] + scales * rng.standard_t(3, size=(n_models, n_rows, n_targets)) \
        + rng.normal(scale=0.2, size=(n_models, 1, n_targets))
    return preds, y


def _mae_per_target(pred, y):
    return np.abs(pred - y).mean(axis=0)


def test_lp_no_worse_than_every_single_model_and_the_mean():
    preds, y = _stack()
    lp = create_optimizer("lp").fit(preds, y)
    blended = _mae_per_target(lp.predict(preds), y)
    for m in range(preds.shape[0]):
        assert np.all(blended <= _mae_per_target(preds[m], y) + 1e-9)
    assert np.all(blended <= _mae_per_target(preds.mean(axis=0), y) + 1e-9)
    # And strictly better than the best single model somewhere: it really mixes.
    best_single = np.min([_mae_per_target(p, y) for p in preds], axis=0)
    assert np.any(blended < best_single - 1e-4)


@pytest.mark.parametrize("key,params", [("lp", {}), ("mean", {}),
                                        ("caruana", {"ensemble_size": 25}),
                                        ("caruana", {"ensemble_size": 7, "per_target": False})])
def test_weights_are_nonnegative_and_sum_to_one(key, params):
    preds, y = _stack(seed=1)
    weights = create_optimizer(key, **params).fit(preds, y).weights_
    assert weights.shape == (preds.shape[0], y.shape[1])
    assert np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, atol=1e-12)


def test_lp_recovers_an_exact_convex_combination():
    rng = np.random.default_rng(2)
    a, b, c = (rng.normal(size=(200, 3)) for _ in range(3))
    y = 0.3 * a + 0.7 * b
    weights = create_optimizer("lp").fit(np.stack([a, b, c]), y).weights_
    np.testing.assert_allclose(weights, np.array([[0.3] * 3, [0.7] * 3, [0.0] * 3]), atol=1e-6)


def test_caruana_picks_a_perfect_model_every_time():
    preds, y = _stack(n_models=3, seed=3)
    preds[1] = y
    weights = create_optimizer("caruana", ensemble_size=10).fit(preds, y).weights_
    np.testing.assert_allclose(weights[1], 1.0)


def test_caruana_global_shares_one_weight_vector_and_counts_picks():
    preds, y = _stack(seed=4)
    weights = create_optimizer("caruana", ensemble_size=8, per_target=False,
                               use_best=False).fit(preds, y).weights_
    assert np.all(weights == weights[:, :1])
    np.testing.assert_allclose(weights * 8, np.round(weights * 8))  # multiples of 1/size


def test_caruana_keeps_picks_only_up_to_its_best_score():
    # Errors +1 and -1: the pair averages to the labels (MAE 0 at step 2); a third pick of
    # either model makes the fit worse again (MAE 1/3), so use_best stops at two picks.
    y = np.zeros((50, 2))
    preds = np.stack([y + 1.0, y - 1.0])
    truncated = create_optimizer("caruana", ensemble_size=3).fit(preds, y)
    np.testing.assert_allclose(truncated.weights_, 0.5)
    np.testing.assert_allclose(np.abs(truncated.predict(preds) - y).mean(), 0.0)
    full = create_optimizer("caruana", ensemble_size=3, use_best=False).fit(preds, y).weights_
    np.testing.assert_allclose(full[:, 0], [2 / 3, 1 / 3])


def test_caruana_tie_goes_to_a_model_already_picked():
    # Step 1 picks model 2 alone (MAE 1). At step 2, adding model 0 or model 2 again both
    # give MAE 1.0: the tie must go to model 2 (already in), not to the lower index 0.
    y = np.zeros((2, 1))
    preds = np.array([[[2.0], [2.0]], [[3.0], [3.0]], [[1.0], [-1.0]]])
    weights = create_optimizer("caruana", ensemble_size=2, use_best=False).fit(preds, y).weights_
    np.testing.assert_allclose(weights[:, 0], [0.0, 0.0, 1.0])


def test_caruana_no_worse_than_best_single_model_on_fit_rows():
    preds, y = _stack(seed=5)
    model = create_optimizer("caruana", ensemble_size=30).fit(preds, y)
    blended = _mae_per_target(model.predict(preds), y)
    best_single = np.min([_mae_per_target(p, y) for p in preds], axis=0)
    assert np.all(blended <= best_single + 1e-12)  # its first pick is the best single model


def test_registry_refuses_unknown_and_duplicate_keys():
    with pytest.raises(KeyError, match="unknown blend optimiser 'nope'.*caruana.*lp.*mean"):
        create_optimizer("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer("lp")(type("Other", (), {}))
    assert set(OPTIMIZERS) >= {"lp", "caruana", "mean"}


def test_optimiser_refuses_nan_inputs():
    preds, y = _stack(n_models=2, seed=6)
    preds[0, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        create_optimizer("lp").fit(preds, y)


def test_lp_dual_weights_match_the_primal_optimum():
    # The optimiser solves the dual; check its weights against the primal LP solved directly.
    from scipy.optimize import linprog

    preds, y = _stack(n_models=3, n_rows=80, n_targets=1, seed=7)
    P, target = preds[:, :, 0].T, y[:, 0]
    n, m = P.shape
    eye = np.eye(n)
    primal = linprog(np.r_[np.zeros(m), np.ones(n) / n],
                     A_ub=np.block([[P, -eye], [-P, -eye]]), b_ub=np.r_[target, -target],
                     A_eq=np.r_[np.ones(m), np.zeros(n)][None], b_eq=[1.0], bounds=(0, None))
    weights = create_optimizer("lp").fit(preds, y).weights_[:, 0]
    np.testing.assert_allclose(np.abs(P @ weights - target).mean(), primal.fun, rtol=1e-9)
