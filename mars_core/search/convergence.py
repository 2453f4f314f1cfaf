"""Convergence time of one validation-loss curve.

A probe's curve is fitted with the saturating exponential

    L(s) = L_inf + (L_0 - L_inf) * exp(-s / tau)

over samples seen ``s``, and its convergence time is the number of samples
needed to realise ``1 - delta`` of the achievable improvement:

    t_conv = tau * ln(1 / delta)

Because the fit extrapolates, a curve cut short still gets a convergence
time. The status of the result shows how far to trust it:

``ok``
    the fit succeeded and ``t_conv`` is within ``CENSOR_FACTOR`` times the
    samples the probe saw.
``censored``
    the fit succeeded but ``t_conv`` lies beyond that horizon, so it is an
    extrapolation too far to use in a law fit.
``no_signal``
    the curve did not improve beyond its noise; ``t_conv`` is None.
``empirical``
    the fit failed, so ``t_conv`` is the first evaluation at which the
    smoothed loss is within ``delta`` of the best observed improvement.

Record an evaluation at 0 samples (before the first step): a curve that
converges within its first evaluation interval otherwise looks flat.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import least_squares

logger = logging.getLogger(__name__)

#: A probe is ``censored`` when its t_conv exceeds this many times the samples it saw.
CENSOR_FACTOR = 3.0
#: A curve has signal when its early-minus-late mean drop exceeds this many standard errors.
SIGNAL_Z = 3.0
#: A fit explaining less than this share of the variance counts as failed.
MIN_FIT_R2 = 0.5
#: Curves with fewer evaluations are not fitted (three parameters need some slack).
MIN_EVALUATIONS = 4

# tau is searched between these multiples of the last evaluated sample.
_TAU_RANGE = (1e-3, 1e3)


@dataclass(frozen=True)
class CurveFit:
    """Details of one convergence-time measurement, kept for reports.

    ``method`` is ``fit`` (saturating exponential), ``empirical`` (the
    smoothed-curve fallback) or ``none`` (nothing measured). ``noise`` is the
    robust standard deviation of the loss around the curve, ``improvement``
    the drop from the early to the late evaluations.
    """

    method: str
    l_inf: float | None
    l_0: float | None
    tau: float | None
    r2: float | None
    noise: float
    improvement: float
    evaluations: int
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


def saturating_loss(samples: np.ndarray, l_inf: float, l_0: float, tau: float) -> np.ndarray:
    """Evaluate ``L_inf + (L_0 - L_inf) * exp(-samples / tau)``."""
    return l_inf + (l_0 - l_inf) * np.exp(-np.asarray(samples, dtype=float) / tau)


def curve_to_convergence(
    curve: Sequence[tuple[float, float]], samples_seen: float, delta: float = 0.05
) -> tuple[float | None, str, CurveFit]:
    """Measure the convergence time of one validation-loss curve.

    Parameters
    ----------
    curve
        ``(samples seen, validation loss)`` pairs in any order. Pairs with a
        non-finite loss are dropped.
    samples_seen
        Samples the probe trained on. It can exceed the last evaluation.
    delta
        Convergence means realising ``1 - delta`` of the achievable
        improvement; ``0 < delta < 1``.

    Returns
    -------
    t_conv, status, details
        ``t_conv`` in samples (None for ``no_signal``), the status (``ok``,
        ``censored``, ``no_signal`` or ``empirical``, see the module
        docstring) and the fit details.
    """
    if not 0 < delta < 1:
        raise ValueError(f"delta={delta} is outside (0, 1); the default is 0.05")
    samples, loss = _clean_curve(curve)
    n = samples.size
    if n < MIN_EVALUATIONS:
        details = CurveFit("none", None, None, None, None, 0.0, 0.0, n,
                           f"curve has {n} usable evaluations; at least {MIN_EVALUATIONS} are needed")
        return None, "no_signal", details

    fit = _fit_saturating(samples, loss)
    noise = fit.noise if fit.ok else _second_difference_noise(loss)
    improvement = _early_late_drop(loss)
    if not _has_signal(loss, noise):
        details = CurveFit("none", None, None, None, fit.r2, noise, improvement, n,
                           "loss did not improve beyond its noise")
        return None, "no_signal", details

    if fit.ok:
        t_conv = fit.tau * math.log(1.0 / delta)
        status = "censored" if t_conv > CENSOR_FACTOR * samples_seen else "ok"
        details = CurveFit("fit", fit.l_inf, fit.l_0, fit.tau, fit.r2, noise, improvement, n, fit.message)
        return t_conv, status, details

    t_conv = empirical_convergence_time(samples, loss, delta)
    details = CurveFit("empirical", None, None, None, fit.r2, noise, improvement, n,
                       f"saturating fit failed ({fit.message}); used the smoothed curve")
    return t_conv, "empirical", details


def empirical_convergence_time(samples: np.ndarray, loss: np.ndarray, delta: float) -> float:
    """Return the first evaluation where the smoothed loss is within ``delta`` of the best improvement.

    The loss is smoothed with a centred moving average over three evaluations
    (two at the ends). A curve that never improves returns its first sample.
    """
    smoothed = _moving_average(np.asarray(loss, dtype=float))
    best = smoothed.min()
    improvement = smoothed[0] - best
    if improvement <= 0:
        return float(samples[0])
    reached = np.flatnonzero(smoothed - best <= delta * improvement)
    return float(samples[reached[0]])


@dataclass(frozen=True)
class _SaturatingFit:
    ok: bool
    l_inf: float | None
    l_0: float | None
    tau: float | None
    r2: float | None
    noise: float
    message: str


def _clean_curve(curve: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    points = np.asarray(list(curve), dtype=float).reshape(-1, 2)
    points = points[np.isfinite(points).all(axis=1)]
    if np.any(points[:, 0] < 0):
        raise ValueError(f"curve has negative samples-seen values: {points[points[:, 0] < 0, 0].tolist()}")
    order = np.argsort(points[:, 0], kind="stable")
    return points[order, 0], points[order, 1]


def _fit_saturating(samples: np.ndarray, loss: np.ndarray) -> _SaturatingFit:
    """Fit the saturating exponential with a soft-L1 loss, starting from a tau grid search.

    Samples and loss are rescaled to unit range first, so the same settings
    suit curves of any length and loss level.
    """
    s_scale = samples.max() if samples.max() > 0 else 1.0
    x = samples / s_scale
    l_min = loss.min()
    l_range = loss.max() - l_min
    if l_range <= 0:
        return _SaturatingFit(False, None, None, None, None, 0.0, "curve is constant")
    y = (loss - l_min) / l_range

    start = _grid_start(x, y)
    f_scale = max(_second_difference_noise(y), 1e-3)
    log_lo, log_hi = math.log(_TAU_RANGE[0]), math.log(_TAU_RANGE[1])

    def residual(theta: np.ndarray) -> np.ndarray:
        floor, amplitude, log_tau = theta
        return floor + amplitude * np.exp(-x / math.exp(log_tau)) - y

    try:
        result = least_squares(
            residual, start, bounds=([-np.inf, 0.0, log_lo], [np.inf, np.inf, log_hi]),
            loss="soft_l1", f_scale=f_scale, method="trf",
        )
    except (ValueError, FloatingPointError) as error:
        return _SaturatingFit(False, None, None, None, None, 0.0, f"least_squares raised {error}")
    if not result.success or not np.all(np.isfinite(result.x)):
        return _SaturatingFit(False, None, None, None, None, 0.0, f"least_squares did not converge: {result.message}")

    floor, amplitude, log_tau = result.x
    resid = result.fun
    total = np.sum((y - y.mean()) ** 2)
    r2 = float(1.0 - np.sum(resid**2) / total) if total > 0 else 0.0
    dof = max(y.size - 3, 1)
    noise = float(1.4826 * np.median(np.abs(resid - np.median(resid))) * math.sqrt(y.size / dof)) * l_range
    l_inf = l_min + floor * l_range
    l_0 = l_inf + amplitude * l_range
    tau = math.exp(log_tau) * s_scale

    if amplitude <= 0:
        return _SaturatingFit(False, l_inf, l_0, tau, r2, noise, "fitted improvement is zero")
    if r2 < MIN_FIT_R2:
        return _SaturatingFit(False, l_inf, l_0, tau, r2, noise, f"fit explains R^2={r2:.2f} of the variance")
    return _SaturatingFit(True, l_inf, l_0, tau, r2, noise, "saturating fit")


def _grid_start(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Best (floor, amplitude, log tau) over a tau grid, solving floor and amplitude exactly per tau."""
    taus = np.geomspace(_TAU_RANGE[0], _TAU_RANGE[1], 49)
    basis = np.exp(-x[None, :] / taus[:, None])
    b_mean = basis.mean(axis=1)
    y_mean = y.mean()
    b_centred = basis - b_mean[:, None]
    var = np.sum(b_centred**2, axis=1)
    amplitude = np.where(var > 0, b_centred @ (y - y_mean) / np.where(var > 0, var, 1.0), 0.0)
    amplitude = np.maximum(amplitude, 0.0)
    floor = y_mean - amplitude * b_mean
    sse = np.sum((floor[:, None] + amplitude[:, None] * basis - y[None, :]) ** 2, axis=1)
    best = int(np.argmin(sse))
    return np.array([floor[best], max(amplitude[best], 1e-6), math.log(taus[best])])


def _second_difference_noise(loss: np.ndarray) -> float:
    """Robust noise scale from second differences, which cancel a slowly curving trend."""
    if loss.size < 3:
        return 0.0
    second = np.diff(loss, n=2)
    return float(1.4826 * np.median(np.abs(second)) / math.sqrt(6.0))


def _early_late_drop(loss: np.ndarray) -> float:
    q = max(2, loss.size // 4)
    return float(loss[:q].mean() - loss[-q:].mean())


def _has_signal(loss: np.ndarray, noise: float) -> bool:
    """Return whether the first quarter's mean loss lies above the last quarter's by more than the noise allows."""
    q = max(2, loss.size // 4)
    drop = _early_late_drop(loss)
    floor = 1e-12 * max(1.0, float(np.abs(loss).max()))
    return drop > max(SIGNAL_Z * noise * math.sqrt(2.0 / q), floor)


def _moving_average(values: np.ndarray) -> np.ndarray:
    padded = np.concatenate([[np.nan], values, [np.nan]])
    window = np.stack([padded[:-2], padded[1:-1], padded[2:]])
    return np.nanmean(window, axis=0)
