"""The nested (honest) blend score never sees the fold it scores."""

import numpy as np
import pytest

from ensembling.fitting import fit_blend, nested_blend
from ensembling.optimizers import blend_predict


def _data(seed=0, n_rows=240, n_models=3, n_targets=4, n_folds=4):
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n_rows, n_targets))
    oof = y[None] + rng.laplace(scale=np.array([0.3, 0.5, 0.8])[:n_models, None, None],
                                size=(n_models, n_rows, n_targets))
    fold = np.arange(n_rows) % n_folds
    return oof, y, fold


@pytest.mark.parametrize("optimizer,params", [("lp", {}), ("caruana", {"ensemble_size": 15})])
def test_held_out_fold_does_not_change_its_own_weights(optimizer, params):
    oof, y, fold = _data()
    _, before = nested_blend(oof, y, fold, optimizer, params)
    perturbed = oof.copy()
    held = fold == 2
    # Make model 2 perfect on fold 2 only: any leak would shift fold 2's weights towards it.
    perturbed[2, held] = y[held]
    nested, after = nested_blend(perturbed, y, fold, optimizer, params)
    np.testing.assert_array_equal(before[2], after[2])
    # The perturbation is visible to the other folds' fits (so the test can detect a leak).
    assert any(not np.array_equal(before[k], after[k]) for k in (0, 1, 3))
    # The held-out fold is blended with exactly its own weights.
    expected = np.einsum("mnt,mt->nt", perturbed[:, held], after[2])
    np.testing.assert_allclose(nested[held], expected)


def test_fit_blend_final_weights_use_all_rows_and_apply_to_test():
    oof, y, fold = _data(seed=1)
    test = np.random.default_rng(9).normal(size=(3, 10, y.shape[1]))
    fit = fit_blend(oof, y, fold, test, "lp")
    assert sorted(fit.fold_weights) == [0, 1, 2, 3]
    np.testing.assert_allclose(fit.test, np.einsum("mnt,mt->nt", test, fit.weights))
    assert fit_blend(oof, y, fold, test, "mean", nested=False).oof_nested is None


def test_nested_score_is_honest_where_the_in_sample_score_flatters():
    """Ten equally good models, 60 rows: LP weights fit to the rows' noise. The in-sample MAE is
    then well below what the weights score on fresh rows of the same distribution; the nested
    MAE is not (a nested blend that saw its fold would flatter like the in-sample one). `nested
    >= in_sample` alone would prove nothing: for LP it holds by construction."""
    rng = np.random.default_rng(0)

    def draw(n_rows, n_models=10, n_targets=3):
        y = rng.normal(size=(n_rows, n_targets))
        return y[None] + rng.laplace(scale=0.5, size=(n_models, n_rows, n_targets)), y

    oof, y = draw(60)
    fit = fit_blend(oof, y, np.arange(60) % 4, oof[:, :2], "lp")
    fresh_oof, fresh_y = draw(20000)
    fresh = np.abs(blend_predict(fresh_oof, fit.weights) - fresh_y).mean()
    in_sample = np.abs(fit.oof_in_sample - y).mean()
    nested = np.abs(fit.oof_nested - y).mean()
    assert in_sample < 0.9 * fresh  # the in-sample score flatters
    assert nested > 0.9 * fresh  # the nested one does not
