"""Many small bounded least-squares problems solved at once.

Leave-one-out refits and bootstrap refits of the laws are hundreds of tiny
problems (a handful of parameters, a few dozen points) that share one model
and one set of inputs and differ only in their targets or weights. Solving
them one by one with ``scipy.optimize.least_squares`` costs milliseconds of
overhead each. Stacking them into arrays and running a projected
Levenberg-Marquardt iteration on the whole stack costs about as much as one
scipy call. Every replicate starts from the full-data solution, which is
close to its own solution, so a few dozen iterations are enough.

The main fits still use ``scipy.optimize.least_squares``. This solver only
refines warm starts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: Model values for a stack of parameter vectors: ``(B, p) -> (B, n)``.
StackedModel = Callable[[np.ndarray], np.ndarray]


def solve_stacked(
    model: StackedModel,
    theta0: np.ndarray,
    targets: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    free: np.ndarray | None = None,
    max_iter: int = 60,
    ftol: float = 1e-10,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ``0.5 * sum_i w_bi (model(theta_b)_i - targets_bi)**2`` for every row b.

    Parameters
    ----------
    model
        Maps a ``(B, p)`` stack of parameter vectors to ``(B, n)`` model values.
        It must accept any number of rows, because converged rows are dropped
        from later iterations.
    theta0
        Start, ``(p,)`` shared by all rows or ``(B, p)``.
    targets
        ``(B, n)`` observations, one row per problem.
    lower, upper
        ``(p,)`` bounds. A parameter with ``lower == upper`` stays fixed.
    weights
        ``(B, n)`` non-negative weights; a zero weight leaves the point out
        (leave-one-out) and an integer weight repeats it.
    free
        ``(p,)`` boolean mask; parameters marked False keep their start value.

    Returns
    -------
    theta, cost
        ``(B, p)`` solutions and ``(B,)`` final costs. A row whose model turned
        non-finite keeps its last finite iterate; its cost is ``inf`` when even
        the start was non-finite.
    """
    targets = np.atleast_2d(np.asarray(targets, dtype=float))
    n_rows, _ = targets.shape
    lower = np.asarray(lower, dtype=float)
    upper = np.asarray(upper, dtype=float)
    n_params = lower.size
    theta = np.clip(np.broadcast_to(np.asarray(theta0, dtype=float), (n_rows, n_params)).copy(), lower, upper)
    weights = np.ones_like(targets) if weights is None else np.asarray(weights, dtype=float)
    free = np.ones(n_params, dtype=bool) if free is None else np.asarray(free, dtype=bool)
    free = free & (upper > lower)

    residual = _residual(model, theta, targets)
    cost = _cost(residual, weights)
    damping = np.full(n_rows, 1e-3)
    active = np.isfinite(cost)

    for _ in range(max_iter):
        rows = np.flatnonzero(active)
        if rows.size == 0:
            break
        th, res, w = theta[rows], residual[rows], weights[rows]

        jac = _forward_jacobian(model, th, res + targets[rows], upper)
        jw = jac * w[:, :, None]
        grad = np.einsum("bnp,bn->bp", jw, res)
        hess = np.einsum("bnp,bnq->bpq", jw, jac)

        # A parameter on a bound whose gradient points outward is held for
        # this step, so that clipping does not bend the step of the others.
        at_bound = ((th <= lower) & (grad > 0)) | ((th >= upper) & (grad < 0))
        held = at_bound | ~free
        step = _damped_step(hess, grad, damping[rows], held)

        trial = np.clip(th + step, lower, upper)
        trial_res = _residual(model, trial, targets[rows])
        trial_cost = _cost(trial_res, w)
        old_cost = cost[rows]
        better = np.isfinite(trial_cost) & (trial_cost < old_cost)

        accepted = rows[better]
        theta[accepted] = trial[better]
        residual[accepted] = trial_res[better]
        cost[accepted] = trial_cost[better]
        damping[accepted] *= 0.3
        damping[rows[~better]] *= 10.0

        small_gain = better & (old_cost - trial_cost <= ftol * np.maximum(old_cost, 1e-300))
        stalled = damping[rows] > 1e10
        tiny_cost = cost[rows] <= 1e-30
        active[rows[small_gain | stalled | tiny_cost]] = False

    return theta, cost


def _residual(model: StackedModel, theta: np.ndarray, targets: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return model(theta) - targets


def _cost(residual: np.ndarray, weights: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        cost = 0.5 * np.sum(weights * residual**2, axis=1)
    return np.where(np.isfinite(cost), cost, np.inf)


def _forward_jacobian(model: StackedModel, theta: np.ndarray, values: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Forward differences, stepping backwards for a parameter sitting on its upper bound."""
    n_rows, n_params = theta.shape
    jac = np.empty((n_rows, values.shape[1], n_params))
    for j in range(n_params):
        h = 1e-7 * np.maximum(1.0, np.abs(theta[:, j]))
        h = np.where(theta[:, j] + h > upper[j], -h, h)
        shifted = theta.copy()
        shifted[:, j] += h
        with np.errstate(all="ignore"):
            jac[:, :, j] = (model(shifted) - values) / h[:, None]
    return np.nan_to_num(jac, nan=0.0, posinf=0.0, neginf=0.0)


def _damped_step(hess: np.ndarray, grad: np.ndarray, damping: np.ndarray, held: np.ndarray) -> np.ndarray:
    """Levenberg-Marquardt step with Marquardt's diagonal scaling; held parameters do not move."""
    n_params = grad.shape[1]
    keep = ~held
    diag = np.diagonal(hess, axis1=1, axis2=2)
    scale = np.maximum(diag, 1e-12 * np.maximum(diag.max(axis=1, keepdims=True), 1e-300))
    system = hess + damping[:, None, None] * (scale[:, :, None] * np.eye(n_params))
    system = system * (keep[:, :, None] & keep[:, None, :]) + held[:, :, None] * np.eye(n_params)
    rhs = np.where(keep, -grad, 0.0)
    try:
        step = np.linalg.solve(system, rhs[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        step = np.einsum("bpq,bq->bp", np.linalg.pinv(system), rhs)
    return np.where(keep, np.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0), 0.0)
