import numpy as np
import pytest
from scipy.optimize import least_squares

from mars_core.search._batched_lsq import solve_stacked

X = np.linspace(0.0, 3.0, 12)


def exponential(theta):
    return theta[:, :1] + theta[:, 1:2] * np.exp(-theta[:, 2:3] * X[None, :])


def test_stacked_solutions_match_scipy_one_by_one():
    rng = np.random.default_rng(0)
    truth = np.array([0.5, 2.0, 1.3])
    targets = exponential(truth[None, :]) + 0.05 * rng.standard_normal((20, X.size))
    lower, upper = np.zeros(3), np.full(3, 10.0)

    stacked, _ = solve_stacked(exponential, truth * 1.1, targets, lower, upper)

    for row, target in zip(stacked, targets):
        reference = least_squares(lambda th: exponential(th[None, :])[0] - target, truth * 1.1,
                                  bounds=(lower, upper), xtol=1e-12, ftol=1e-12).x
        assert row == pytest.approx(reference, rel=1e-4, abs=1e-6)


def test_zero_weight_leaves_point_out():
    target = exponential(np.array([[0.5, 2.0, 1.3]]))[0]
    target[3] += 100.0
    weights = np.ones((1, X.size))
    weights[0, 3] = 0.0

    theta, cost = solve_stacked(exponential, [0.4, 1.5, 1.0], target[None, :], np.zeros(3), np.full(3, 10.0),
                                weights=weights)

    assert theta[0] == pytest.approx([0.5, 2.0, 1.3], rel=1e-5)
    assert cost[0] == pytest.approx(0.0, abs=1e-12)


def test_bounds_and_fixed_parameters_are_respected():
    target = exponential(np.array([[-1.0, 2.0, 1.3]]))
    free = np.array([True, False, True])

    theta, _ = solve_stacked(exponential, [0.2, 2.5, 1.0], target, np.zeros(3), np.full(3, 10.0), free=free)

    assert theta[0, 0] == 0.0
    assert theta[0, 1] == 2.5
