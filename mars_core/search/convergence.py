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
    the curve did not improve beyond its noise (or by less than
    ``MIN_RELATIVE_DROP`` of its starting loss), or the fit failed on a
    curve whose improvement is too small to trust the fallback. ``t_conv``
    is None.
``empirical``
    the fit failed on a curve that clearly improved, so ``t_conv`` is the
    first evaluation at which the smoothed loss is within ``delta`` of the
    best observed improvement.

The noise is estimated from second differences of the loss. On 500
simulated flat curves with 2% Gaussian noise per length, 4 curves of 17
evaluations passed the signal test by chance, and none of 33, 65 or 129.

A curve that rises again after its minimum (overfitting) is fitted only up
to that minimum. Record an evaluation at 0 samples, before the first step,
because a curve that converges within its first evaluation interval
otherwise looks flat.
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
#: Standard errors by which the early mean must exceed the best later mean for a strong signal.
STRONG_SIGNAL_Z = 4.5
#: A drop smaller than this share of the starting loss is no signal, however smooth the curve. A fixed
#: validation subset gives curves with almost no noise, where the noise test alone passes a negligible drop.
MIN_RELATIVE_DROP = 1e-3
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
    smoothed-curve fallback) or ``none`` (nothing measured). ``noise`` is a
    robust standard deviation of the loss, from its second differences.
    ``improvement`` is the drop from the mean of the first quarter of the
    evaluations to the lowest mean of any later stretch of the same length.
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

    noise = _second_difference_noise(loss)
    improvement = _best_drop(loss)
    signal = _signal_strength(loss, noise)
    if signal == "none":
        details = CurveFit("none", None, None, None, None, noise, improvement, n,
                           "loss did not improve beyond its noise")
        return None, "no_signal", details

    # A curve that overfits rises after its minimum, which no saturating
    # exponential follows, so only the part up to the minimum is fitted.
    end = _fit_end(loss, noise)
    fit = _fit_saturating(samples[:end], loss[:end])
    note = "" if end == n else f"; fitted up to {samples[end - 1]:g} samples, after which the loss rises"
    if fit.ok:
        t_conv = fit.tau * math.log(1.0 / delta)
        status = "censored" if t_conv > CENSOR_FACTOR * samples_seen else "ok"
        details = CurveFit("fit", fit.l_inf, fit.l_0, fit.tau, fit.r2, noise, improvement, n, fit.message + note)
        return t_conv, status, details

    if signal != "strong":
        details = CurveFit("none", None, None, fit.tau, fit.r2, noise, improvement, n,
                           f"saturating fit failed ({fit.message}) and the improvement is too small for the fallback")
        return None, "no_signal", details
    t_conv = empirical_convergence_time(samples, loss, delta)
    details = CurveFit("empirical", None, None, None, fit.r2, noise, improvement, n,
                       f"saturating fit failed ({fit.message}); used the smoothed curve{note}")
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
        return _SaturatingFit(False, None, None, None, None, "curve is constant")
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
        return _SaturatingFit(False, None, None, None, None, f"least_squares raised {error}")
    if not result.success or not np.all(np.isfinite(result.x)):
        return _SaturatingFit(False, None, None, None, None, f"least_squares did not converge: {result.message}")

    floor, amplitude, log_tau = result.x
    resid = result.fun
    total = np.sum((y - y.mean()) ** 2)
    r2 = float(1.0 - np.sum(resid**2) / total) if total > 0 else 0.0
    l_inf = l_min + floor * l_range
    l_0 = l_inf + amplitude * l_range
    tau = math.exp(log_tau) * s_scale

    if amplitude <= 0:
        return _SaturatingFit(False, l_inf, l_0, tau, r2, "fitted improvement is zero")
    if r2 < MIN_FIT_R2:
        return _SaturatingFit(False, l_inf, l_0, tau, r2, f"fit explains R^2={r2:.2f} of the variance")
    return _SaturatingFit(True, l_inf, l_0, tau, r2, "saturating fit")


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


def _window(loss: np.ndarray) -> int:
    """Evaluations averaged at each end of the curve for the signal test: a quarter, at least two."""
    return max(2, loss.size // 4)


def _best_drop(loss: np.ndarray) -> float:
    """Drop from the mean of the first window to the lowest mean of any later window of the same length."""
    q = _window(loss)
    rolling = np.convolve(loss, np.ones(q) / q, mode="valid")
    return float(rolling[0] - rolling.min())


def _signal_strength(loss: np.ndarray, noise: float) -> str:
    """Classify the improvement of a curve as ``none``, ``weak`` or ``strong`` against its noise.

    ``weak``: the mean of the first quarter lies above the mean of the last
    quarter by more than ``SIGNAL_Z`` standard errors. ``strong``: the first
    quarter lies above the best stretch of the same length by more than
    ``STRONG_SIGNAL_Z`` standard errors. The higher bar pays for picking the
    best of many stretches. This test also catches curves that rise again
    at the end. Only a strong signal may fall back to the empirical time.
    Either drop must also exceed ``MIN_RELATIVE_DROP`` of the starting loss.
    """
    q = _window(loss)
    standard_error = noise * math.sqrt(2.0 / q)
    floor = max(1e-12 * max(1.0, float(np.abs(loss).max())), MIN_RELATIVE_DROP * abs(float(loss[:q].mean())))
    if _best_drop(loss) > max(STRONG_SIGNAL_Z * standard_error, floor):
        return "strong"
    if loss[:q].mean() - loss[-q:].mean() > max(SIGNAL_Z * standard_error, floor):
        return "weak"
    return "none"


def _fit_end(loss: np.ndarray, noise: float) -> int:
    """Return how many evaluations to fit: all, or up to the smoothed minimum when the loss rises after it."""
    smoothed = _moving_average(loss)
    lowest = int(np.argmin(smoothed))
    q = _window(loss)
    if lowest >= loss.size - q:
        return loss.size
    rise = loss[-q:].mean() - smoothed[lowest]
    if rise <= SIGNAL_Z * noise * math.sqrt(1.0 / q + 1.0 / 3.0):
        return loss.size
    return max(lowest + 1, MIN_EVALUATIONS)


def _moving_average(values: np.ndarray) -> np.ndarray:
    padded = np.concatenate([[np.nan], values, [np.nan]])
    window = np.stack([padded[:-2], padded[1:-1], padded[2:]])
    return np.nanmean(window, axis=0)
