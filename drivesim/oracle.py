"""The irreducible-error floor: rollouts of each test row's future with fresh driver randomness.

From the exact simulator state at a row's time t, the future is simulated `n_rollouts` times,
each with its own fresh noise (light changes, turn and lane-change choices, yellow-light
choices, reaction times, the speed and lane wander of both drivers). No predictor can know
more than that state, so the per-target median of the rollouts is the best MAE predictor;
its MAE against the realised labels is the floor every accuracy figure is quoted against.
"""

from __future__ import annotations

import numpy as np

from drivesim import driver
from drivesim.scene import DT, SceneRun, gather_habits, stack_worlds
from drivesim.vehicle import route_at

N_ROLLOUTS = 32


def rollout_medians(runs: list[SceneRun], horizons_s: list[float], n_rollouts: int = N_ROLLOUTS) -> np.ndarray:
    """Per-target median of rollouts for every kept row of `runs`.

    Parameters
    ----------
    runs : simulated scenes (with their state snapshots).
    horizons_s : target horizons (s).
    n_rollouts : futures simulated per row.

    Returns
    -------
    (rows, horizons, 3) medians in each row's ego frame, rows in the order of `runs`.
    """
    if not runs:
        return np.zeros((0, len(horizons_s), 3))
    w = stack_worlds([r.world for r in runs])
    members = []
    U, N = [], []
    n_steps = int(round(max(horizons_s) / DT))
    for b, run in enumerate(runs):
        rows = len(run.snapshots)
        for snap in run.snapshots:
            rep = {k: np.repeat(v, n_rollouts, axis=0) for k, v in snap.items()}
            rep["sc"] = np.full(n_rollouts, b)
            members.append(rep)
        rng = run.rngs["rollout"]
        U.append(rng.random((n_steps, rows * n_rollouts, driver.N_UNIFORM)))
        N.append(rng.standard_normal((n_steps, rows * n_rollouts, driver.N_NORMAL)))
    st = {k: np.concatenate([m[k] for m in members]) for k in members[0]}
    U, N = np.concatenate(U, axis=1), np.concatenate(N, axis=1)
    hb = gather_habits(w, st["sc"])
    X0, Y0, psi0 = st["X"].copy(), st["Y"].copy(), st["psi"].copy()
    Z0 = route_at(w["Z"], st["sc"], st["s"])
    want = {int(round(h / DT)): i for i, h in enumerate(horizons_s)}
    pos = np.empty((st["sc"].size, len(horizons_s), 3))
    for k in range(n_steps):
        driver.step(st, w, hb, U[k], N[k], DT, replay=False)
        if k + 1 in want:
            i = want[k + 1]
            dx, dy = st["X"] - X0, st["Y"] - Y0
            c, s = np.cos(psi0), np.sin(psi0)
            pos[:, i, 0] = c * dx + s * dy
            pos[:, i, 1] = -s * dx + c * dy
            pos[:, i, 2] = route_at(w["Z"], st["sc"], st["s"]) - Z0
    pos = pos.reshape(-1, n_rollouts, len(horizons_s), 3)
    return np.median(pos, axis=1)
