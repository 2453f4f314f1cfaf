import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mars_core.search import convergence
from mars_core.search.convergence import curve_to_convergence, empirical_convergence_time


def saturating_curve(tau, last, step, noise, seed, l_inf=1.0, l_0=3.0):
    rng = np.random.default_rng(seed)
    samples = np.arange(0, last + 1, step)
    loss = l_inf + (l_0 - l_inf) * np.exp(-samples / tau)
    loss = loss * (1 + noise * rng.standard_normal(samples.size))
    return list(zip(samples.tolist(), loss.tolist()))


@pytest.mark.parametrize("seed", range(5))
def test_fit_recovers_tau_from_noisy_curve(seed):
    tau = 800.0
    curve = saturating_curve(tau, last=4096, step=64, noise=0.02, seed=seed)

    t_conv, status, details = curve_to_convergence(curve, samples_seen=4096)

    assert status == "ok"
    assert details.method == "fit"
    assert abs(details.tau / tau - 1) < 0.10
    assert t_conv == pytest.approx(details.tau * math.log(20))


def test_delta_option_sets_convergence_fraction():
    curve = saturating_curve(500.0, last=4096, step=64, noise=0.0, seed=0)

    t_05, _, _ = curve_to_convergence(curve, 4096, delta=0.05)
    t_01, _, _ = curve_to_convergence(curve, 4096, delta=0.01)

    assert t_01 / t_05 == pytest.approx(math.log(100) / math.log(20), rel=1e-6)


def test_curve_cut_short_is_extrapolated():
    tau = 1000.0  # true t_conv = 2996 samples, but the probe stops at 1500
    curve = saturating_curve(tau, last=1500, step=64, noise=0.01, seed=3)

    t_conv, status, _ = curve_to_convergence(curve, samples_seen=1500)

    assert status == "ok"
    assert t_conv > 1500
    assert abs(t_conv / (tau * math.log(20)) - 1) < 0.15


def test_curve_far_from_converged_is_censored():
    curve = saturating_curve(20_000.0, last=1024, step=64, noise=0.002, seed=0)

    t_conv, status, _ = curve_to_convergence(curve, samples_seen=1024)

    assert status == "censored"
    assert t_conv > 3 * 1024


@pytest.mark.parametrize("seed", range(5))
def test_flat_noisy_curve_is_no_signal(seed):
    rng = np.random.default_rng(seed)
    samples = np.arange(0, 4097, 128)
    loss = 1.5 * (1 + 0.02 * rng.standard_normal(samples.size))

    t_conv, status, details = curve_to_convergence(list(zip(samples, loss)), 4096)

    assert status == "no_signal"
    assert t_conv is None
    assert details.method == "none"


def test_constant_curve_is_no_signal():
    t_conv, status, _ = curve_to_convergence([(s, 2.0) for s in range(0, 1000, 100)], 1000)

    assert (t_conv, status) == (None, "no_signal")


def test_smooth_negligible_drop_is_no_signal():
    # A noise-free curve that falls by 0.01% of its loss, as a far too low learning rate gives.
    curve = saturating_curve(tau=300, last=1000, step=50, noise=0.0, seed=0, l_inf=4.9995, l_0=5.0)

    t_conv, status, details = curve_to_convergence(curve, 1000)

    assert (t_conv, status) == (None, "no_signal")
    assert details.improvement < convergence.MIN_RELATIVE_DROP * 5.0


def test_too_short_curve_is_no_signal():
    t_conv, status, details = curve_to_convergence([(0, 3.0), (64, 2.0), (128, 1.5)], 128)

    assert (t_conv, status) == (None, "no_signal")
    assert "at least" in details.message


def test_failed_fit_falls_back_to_empirical(monkeypatch):
    def broken_least_squares(*args, **kwargs):
        raise ValueError("simulated failure")

    monkeypatch.setattr(convergence, "least_squares", broken_least_squares)
    curve = saturating_curve(300.0, last=4096, step=64, noise=0.0, seed=0)
    samples, loss = np.array(curve).T

    t_conv, status, details = curve_to_convergence(curve, 4096)

    assert status == "empirical"
    assert details.method == "empirical"
    assert t_conv == empirical_convergence_time(samples, loss, 0.05)


def test_empirical_time_is_first_evaluation_within_delta():
    samples = np.array([0, 100, 200, 300, 400, 500, 600])
    loss = np.array([3.0, 3.0, 1.5, 1.1, 1.0, 1.0, 1.0])
    # Smoothed: 3.0, 2.5, 1.867, 1.2, 1.033, 1.0, 1.0; improvement 2.0, within 5% at 1.1 or below.
    assert empirical_convergence_time(samples, loss, 0.05) == 400


def test_evaluations_with_nan_loss_are_ignored():
    curve = saturating_curve(500.0, last=4096, step=64, noise=0.0, seed=0)
    curve[5] = (curve[5][0], float("nan"))

    t_conv, status, details = curve_to_convergence(curve, 4096)

    assert status == "ok"
    assert details.evaluations == len(curve) - 1
    assert t_conv == pytest.approx(500.0 * math.log(20), rel=1e-3)


def test_invalid_delta_is_rejected():
    with pytest.raises(ValueError, match="delta"):
        curve_to_convergence([(0, 1.0)], 10, delta=1.5)


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(min_value=1e-2, max_value=1e3), seed=st.integers(0, 1000))
def test_convergence_time_scales_with_sample_units(scale, seed):
    curve = saturating_curve(700.0, last=4096, step=64, noise=0.01, seed=seed)
    scaled = [(s * scale, v) for s, v in curve]

    t_base, status_base, _ = curve_to_convergence(curve, 4096)
    t_scaled, status_scaled, _ = curve_to_convergence(scaled, 4096 * scale)

    assert status_scaled == status_base
    assert t_scaled == pytest.approx(t_base * scale, rel=1e-4)


def test_overfitting_curve_is_fitted_up_to_minimum():
    samples = np.arange(0, 4097, 64)
    loss = 1.0 + 2.0 * np.exp(-samples / 300.0) + 2e-4 * samples  # falls, then rises again

    t_conv, status, details = curve_to_convergence(list(zip(samples, loss)), 4096)

    assert status == "ok"
    assert "after which the loss rises" in details.message
    assert 0.7 * 300 * math.log(20) < t_conv < 1.05 * 300 * math.log(20)
