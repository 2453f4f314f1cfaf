"""Law-T: how a module's convergence time depends on its rank and the data size.

Per module ``m``:

    t_m(r, D) = t0_m + a_m * D**b_m * r**(-c_m)        all parameters >= 0

Fitted on the module's usable module probes by bounded least squares on
log residuals, ``ln t_model - ln t_observed``, so every probe weighs the
same whatever its scale. With fewer than ``MIN_POINTS_FOR_OFFSET`` points
``t0`` is fixed at 0 and the rest is ordinary least squares in log space,
with ``b`` and ``c`` held at zero if they come out negative.

Times, data sizes and ranks are divided by their geometric means before the
fit and the parameters are converted back afterwards. Multiplying every
convergence time by one constant therefore multiplies ``t0`` and ``a`` by
that constant and leaves ``b``, ``c`` and every pruning decision unchanged.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, lsq_linear

from ._batched_lsq import solve_stacked
from .probe_table import ProbeRow, ProbeTableError, require_usable_module_rows

logger = logging.getLogger(__name__)

#: Fewer usable points than this fix t0 = 0: four free parameters need some residual freedom.
MIN_POINTS_FOR_OFFSET = 6
#: Upper bound on the exponents b and c; real curves stay far below it.
MAX_EXPONENT = 10.0
LAW_T_PARAMS = ("t0", "a", "b", "c")


@dataclass
class ModuleLawT:
    """Fitted Law-T of one module, with its diagnostics and the points behind it.

    ``intervals`` maps each parameter to a 95% bootstrap percentile interval
    (None when there was no residual freedom or no bootstrap). ``fixed``
    lists parameters held at a value instead of fitted, with the reason in
    ``notes``. ``points_left_out`` counts the module probes not used, by status.
    """

    module: str
    t0: float
    a: float
    b: float
    c: float
    r2_log: float
    loo_relative_error: float | None
    intervals: dict[str, tuple[float, float]] | None
    points_used: int
    points_left_out: dict[str, int]
    fixed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ranks: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    n_train: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    t_conv: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    left_out: list[tuple[int, int, float | None, str]] = field(default_factory=list, repr=False)

    @property
    def params(self) -> dict[str, float]:
        return {"t0": self.t0, "a": self.a, "b": self.b, "c": self.c}

    def predict(self, rank: float | np.ndarray, n_train: float | np.ndarray) -> np.ndarray:
        """Predicted convergence time in samples at the given rank(s) and data size(s)."""
        rank = np.asarray(rank, dtype=float)
        n_train = np.asarray(n_train, dtype=float)
        with np.errstate(divide="ignore", over="ignore"):
            return self.t0 + self.a * np.exp(self.b * np.log(n_train) - self.c * np.log(rank))

    def to_dict(self) -> dict:
        return {
            "module": self.module,
            "params": self.params,
            "fixed": list(self.fixed),
            "r2_log": self.r2_log,
            "loo_relative_error": self.loo_relative_error,
            "intervals": None if self.intervals is None else {k: list(v) for k, v in self.intervals.items()},
            "points_used": self.points_used,
            "points_left_out": dict(self.points_left_out),
            "notes": list(self.notes),
        }


@dataclass
class LawTResult:
    """Law-T for every module, in the configured module order."""

    modules: list[str]
    laws: dict[str, ModuleLawT]

    def predict(self, module: str, rank: float | np.ndarray, n_train: float | np.ndarray) -> np.ndarray:
        """Predicted convergence time of ``module`` in samples."""
        return self.laws[module].predict(rank, n_train)

    def to_dict(self) -> dict:
        return {module: self.laws[module].to_dict() for module in self.modules}


def fit_convergence_laws(
    rows: Sequence[ProbeRow], modules: Sequence[str], *, bootstrap: int = 200, seed: int = 0
) -> LawTResult:
    """Fit Law-T for each module on its usable module probes.

    Rows of other kinds are ignored. Rows with a status other than ``ok`` or
    ``empirical`` are left out and counted. Raises ProbeTableError when a
    module has no usable probe or when its usable probes cover only one rank.
    """
    started = time.perf_counter()
    modules = list(modules)
    logger.info("Law-T fit started: %d modules, %d probe rows", len(modules), len(rows))
    require_usable_module_rows(rows, modules)
    rng = np.random.default_rng(seed)

    laws = {}
    for module in modules:
        module_rows = [r for r in rows if r.kind == "module" and r.module == module]
        laws[module] = _fit_module(module, module_rows, bootstrap, rng)

    summary = ", ".join(f"{m}: c={laws[m].c:.2f} R^2={laws[m].r2_log:.3f}" for m in modules)
    logger.info("Law-T fit done in %.2fs: %s", time.perf_counter() - started, summary)
    return LawTResult(modules=modules, laws=laws)


#: A module's Law-T gets a warning note below this R^2 (log space) or above this leave-one-out relative error.
POOR_FIT_R2 = 0.3
POOR_FIT_LOO = 1.0


def _fit_module(module: str, rows: Sequence[ProbeRow], bootstrap: int, rng: np.random.Generator) -> ModuleLawT:
    used = [r for r in rows if r.usable]
    left_out: dict[str, int] = {}
    for row in rows:
        if not row.usable:
            left_out[row.status] = left_out.get(row.status, 0) + 1

    rank = np.array([r.ranks[module] for r in used], dtype=float)
    n_train = np.array([r.n_train for r in used], dtype=float)
    t_conv = np.array([r.t_conv for r in used], dtype=float)
    if np.unique(rank).size < 2:
        raise ProbeTableError(
            f"probe rows: module {module!r} has usable module probes at rank(s) {sorted(set(rank.astype(int).tolist()))} only; "
            f"Law-T needs at least two distinct ranks to fit how convergence time falls with rank"
        )

    problem = _LogProblem(rank, n_train, t_conv)
    theta, fixed, notes = _fit_theta(problem)
    free = np.array([name not in fixed for name in ("t0", "log_a", "b", "c")])
    n_free = int(free.sum())

    fitted = problem.model(theta[None, :])[0]
    y = problem.y
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum((fitted - y) ** 2)) / total if total > 0 else 1.0

    loo = _leave_one_out(problem, theta, free)
    intervals = None
    if bootstrap > 0 and y.size > n_free:
        intervals = _bootstrap_intervals(problem, theta, free, fitted, bootstrap, rng)
    elif bootstrap > 0:
        notes.append(f"no bootstrap intervals: {y.size} points for {n_free} free parameters leave no residual freedom")

    if r2 < POOR_FIT_R2 or (loo is not None and loo > POOR_FIT_LOO):
        loo_text = "n/a" if loo is None else f"{loo:.2f}"
        notes.append(
            f"poor fit (R^2 {r2:.3f} in log space, leave-one-out relative error {loo_text}): its convergence "
            "times, and the pruning that uses them, are unreliable. Probes with more samples or at more ranks "
            "(probes.ranks_per_module) give it more to fit"
        )

    t0, a, b, c = problem.to_original(theta)
    law = ModuleLawT(
        module=module, t0=t0, a=a, b=b, c=c, r2_log=r2, loo_relative_error=loo, intervals=intervals,
        points_used=len(used), points_left_out=left_out,
        fixed=[("a" if name == "log_a" else name) for name in fixed], notes=notes,
        ranks=rank, n_train=n_train, t_conv=t_conv,
        left_out=[(r.ranks[module], r.n_train, r.t_conv, r.status) for r in rows if not r.usable],
    )
    for note in notes:
        logger.warning("Law-T %s: %s", module, note)
    return law


class _LogProblem:
    """Law-T in normalised log form: ``ln t/g_t = ln(t0n + exp(log_a + b ln D/g_D - c ln r/g_r))``."""

    def __init__(self, rank: np.ndarray, n_train: np.ndarray, t_conv: np.ndarray):
        self.g_t = float(np.exp(np.mean(np.log(t_conv))))
        self.g_d = float(np.exp(np.mean(np.log(n_train))))
        self.g_r = float(np.exp(np.mean(np.log(rank))))
        self.log_d = np.log(n_train / self.g_d)
        self.log_r = np.log(rank / self.g_r)
        self.y = np.log(t_conv / self.g_t)
        self.lower = np.array([0.0, -50.0, 0.0, 0.0])
        self.upper = np.array([float(np.exp(self.y.max())), 50.0, MAX_EXPONENT, MAX_EXPONENT])

    def model(self, theta: np.ndarray) -> np.ndarray:
        t0n, log_a, b, c = (theta[:, i : i + 1] for i in range(4))
        power = log_a + b * self.log_d[None, :] - c * self.log_r[None, :]
        with np.errstate(divide="ignore"):
            return np.logaddexp(np.log(t0n), power)

    def to_original(self, theta: np.ndarray) -> tuple[float, float, float, float]:
        t0n, log_a, b, c = (float(v) for v in theta)
        a = self.g_t * math.exp(log_a - b * math.log(self.g_d) + c * math.log(self.g_r))
        return t0n * self.g_t, a, b, c


def _fit_theta(problem: _LogProblem) -> tuple[np.ndarray, list[str], list[str]]:
    """Fit (t0n, log_a, b, c); return them with the names of fixed parameters and why."""
    n = problem.y.size
    fixed: list[str] = []
    notes: list[str] = []
    vary_b = np.unique(problem.log_d).size >= 2
    if not vary_b:
        fixed.append("b")
        notes.append("usable probes cover one data size only: b fixed at 0, so predictions ignore data size")
    if n < MIN_POINTS_FOR_OFFSET:
        fixed.append("t0")
        notes.append(f"{n} usable points (< {MIN_POINTS_FOR_OFFSET}): t0 fixed at 0, log-space least squares")

    theta = _log_linear_fit(problem, vary_b)
    if "t0" in fixed:
        return theta, fixed, notes

    free = np.array([True, True, vary_b, True])
    best_theta, best_cost = theta, _cost(problem, theta)
    min_t = float(np.exp(problem.y.min()))
    for share in (0.25, 0.5, 0.8):
        start = theta.copy()
        start[0] = share * min_t
        excess = np.maximum(np.exp(problem.y) - start[0], 1e-12)
        start[1] = float(np.mean(np.log(excess) - start[2] * problem.log_d + start[3] * problem.log_r))
        candidate = _bounded_fit(problem, start, free)
        cost = _cost(problem, candidate)
        if cost < best_cost:
            best_theta, best_cost = candidate, cost
    return best_theta, fixed, notes


def _log_linear_fit(problem: _LogProblem, vary_b: bool) -> np.ndarray:
    """OLS of ``ln t = log_a + b ln D - c ln r`` with b, c >= 0 (t0 = 0)."""
    columns = [np.ones_like(problem.y), problem.log_d, -problem.log_r]
    lower = [-50.0, 0.0, 0.0]
    upper = [50.0, MAX_EXPONENT if vary_b else 1e-300, MAX_EXPONENT]
    result = lsq_linear(np.column_stack(columns), problem.y, bounds=(lower, upper))
    log_a, b, c = result.x
    return np.array([0.0, log_a, b if vary_b else 0.0, c])


def _bounded_fit(problem: _LogProblem, start: np.ndarray, free: np.ndarray) -> np.ndarray:
    lower, upper = problem.lower[free], problem.upper[free]
    x0 = np.clip(start[free], lower, np.nextafter(upper, -np.inf))

    def residual(x: np.ndarray) -> np.ndarray:
        theta = start.copy()
        theta[free] = x
        return problem.model(theta[None, :])[0] - problem.y

    result = least_squares(residual, x0, bounds=(lower, upper), method="trf", x_scale="jac")
    theta = start.copy()
    theta[free] = result.x
    return theta


def _cost(problem: _LogProblem, theta: np.ndarray) -> float:
    resid = problem.model(theta[None, :])[0] - problem.y
    value = float(np.sum(resid**2))
    return value if math.isfinite(value) else math.inf


def _leave_one_out(problem: _LogProblem, theta: np.ndarray, free: np.ndarray) -> float | None:
    """Mean relative error of each point's time predicted by a fit without it."""
    n = problem.y.size
    if n <= int(free.sum()):
        return None
    weights = 1.0 - np.eye(n)
    targets = np.broadcast_to(problem.y, (n, n))
    refits, _ = solve_stacked(problem.model, theta, targets, problem.lower, problem.upper, weights=weights, free=free)
    predicted = np.diagonal(problem.model(refits))
    error = np.abs(np.exp(predicted - problem.y) - 1.0)
    return float(np.mean(error))


def _bootstrap_intervals(
    problem: _LogProblem, theta: np.ndarray, free: np.ndarray, fitted: np.ndarray, count: int, rng: np.random.Generator
) -> dict[str, tuple[float, float]]:
    """95% percentile intervals from a residual bootstrap in log space."""
    n = problem.y.size
    resid = problem.y - fitted
    resid = (resid - resid.mean()) * math.sqrt(n / (n - int(free.sum())))
    targets = fitted[None, :] + resid[rng.integers(0, n, size=(count, n))]
    refits, cost = solve_stacked(problem.model, theta, targets, problem.lower, problem.upper, free=free)
    refits = refits[np.isfinite(cost)]
    original = np.array([problem.to_original(row) for row in refits])
    low, high = np.percentile(original, [2.5, 97.5], axis=0)
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(LAW_T_PARAMS, low, high, strict=True)}
