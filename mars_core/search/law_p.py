"""Law-P: predicted validation loss of a joint fine-tune from its ranks.

The base form, for modules m with ranks r_m, is

    L(ranks) = E + sum_m A_m * r_m**(-alpha_m)          all parameters >= 0

which for the default modules reads ``E + A r_vision^-alpha + B r_llm^-beta``.
The capacity form adds ``K * (N(ranks) / D)**eta``, where ``N`` is the exact
trainable parameter count and ``D`` the probe's data size.

Forms are pluggable. A new form is one subclass of ``LawPForm`` that sets
``name`` and implements ``param_names``, ``bounds`` and ``predict``,
decorated with ``@register_law_p_form``. ``form="auto"`` compares every
registered form by leave-one-out error, but only with at least
``AUTO_MIN_PROBES`` usable joint probes; with fewer it uses ``base``.

Prediction standard errors come from a residual bootstrap: the fitted
values plus resampled residuals are refitted, and the spread of the refits'
predictions is the standard error.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy.optimize import least_squares, nnls

from ._batched_lsq import solve_stacked
from .probe_table import ProbeRow, ProbeTableError
from .trainable_params import TrainableParamModel

logger = logging.getLogger(__name__)

#: ``form="auto"`` compares forms only with at least this many usable joint probes.
AUTO_MIN_PROBES = 10
#: Upper bound on every exponent of a form.
MAX_EXPONENT = 5.0

LAW_P_FORMS: dict[str, type[LawPForm]] = {}


def register_law_p_form(cls: type[LawPForm]) -> type[LawPForm]:
    """Class decorator that makes a Law-P form available by its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name; set the class attribute `name`")
    LAW_P_FORMS[cls.name] = cls
    return cls


@dataclass(frozen=True)
class LawPInputs:
    """Inputs of a form: ranks as an ``(n, M)`` array in module order, and capacity N / D per point."""

    ranks: np.ndarray
    capacity: np.ndarray


class LawPForm:
    """A Law-P form for a given list of modules.

    ``predict`` takes a ``(B, p)`` stack of parameter vectors and returns
    ``(B, n)`` predicted losses. ``initial_guesses`` may be overridden to
    give better starts than the bound midpoints.
    """

    name: ClassVar[str] = ""

    def __init__(self, modules: Sequence[str]):
        self.modules = list(modules)

    def param_names(self) -> list[str]:
        raise NotImplementedError

    def bounds(self, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def predict(self, theta: np.ndarray, inputs: LawPInputs) -> np.ndarray:
        raise NotImplementedError

    def initial_guesses(self, inputs: LawPInputs, loss: np.ndarray) -> list[np.ndarray]:
        lower, upper = self.bounds(loss)
        finite_upper = np.where(np.isfinite(upper), upper, lower + 1.0)
        return [0.5 * (lower + finite_upper)]


@register_law_p_form
class BaseForm(LawPForm):
    """``E + sum_m A_m * r_m**(-alpha_m)``."""

    name = "base"
    _exponent_grid = (0.25, 0.5, 1.0, 2.0)

    def param_names(self) -> list[str]:
        names = ["E"]
        for module in self.modules:
            names += [f"A_{module}", f"alpha_{module}"]
        return names

    def bounds(self, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scale = 1e6 * max(float(np.max(np.abs(loss))), 1.0)
        lower = [0.0] + [0.0, 0.0] * len(self.modules)
        upper = [float(np.max(loss))] + [scale, MAX_EXPONENT] * len(self.modules)
        return np.array(lower), np.array(upper)

    def predict(self, theta: np.ndarray, inputs: LawPInputs) -> np.ndarray:
        theta = np.atleast_2d(theta)
        log_r = np.log(inputs.ranks)
        total = np.repeat(theta[:, :1], log_r.shape[0], axis=1)
        for m in range(len(self.modules)):
            amplitude, exponent = theta[:, 1 + 2 * m : 2 + 2 * m], theta[:, 2 + 2 * m : 3 + 2 * m]
            total = total + amplitude * np.exp(-exponent * log_r[None, :, m])
        return total

    def initial_guesses(self, inputs: LawPInputs, loss: np.ndarray) -> list[np.ndarray]:
        """Best starts over a grid of exponents, with E and the amplitudes solved by non-negative least squares."""
        scored = []
        for exponents in itertools.product(self._exponent_grid, repeat=len(self.modules)):
            basis = [np.ones_like(loss)] + [inputs.ranks[:, m] ** -e for m, e in enumerate(exponents)]
            coef, residual = nnls(np.column_stack(basis), loss)
            theta = [coef[0]]
            for m, e in enumerate(exponents):
                theta += [coef[1 + m], e]
            scored.append((residual, np.array(theta)))
        scored.sort(key=lambda item: item[0])
        return [theta for _, theta in scored[:3]]


@register_law_p_form
class CapacityForm(BaseForm):
    """``E + sum_m A_m * r_m**(-alpha_m) + K * (N / D)**eta``."""

    name = "capacity"

    def param_names(self) -> list[str]:
        return super().param_names() + ["K", "eta"]

    def bounds(self, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lower, upper = super().bounds(loss)
        return np.append(lower, [0.0, 0.0]), np.append(upper, [np.inf, MAX_EXPONENT])

    def predict(self, theta: np.ndarray, inputs: LawPInputs) -> np.ndarray:
        theta = np.atleast_2d(theta)
        base = super().predict(theta[:, :-2], inputs)
        with np.errstate(divide="ignore"):
            log_capacity = np.log(inputs.capacity)
        return base + theta[:, -2:-1] * np.exp(theta[:, -1:] * log_capacity[None, :])

    def initial_guesses(self, inputs: LawPInputs, loss: np.ndarray) -> list[np.ndarray]:
        scored = []
        for exponents in itertools.product(self._exponent_grid, repeat=len(self.modules)):
            for eta in (0.5, 1.0):
                basis = [np.ones_like(loss)] + [inputs.ranks[:, m] ** -e for m, e in enumerate(exponents)]
                basis.append(inputs.capacity**eta)
                coef, residual = nnls(np.column_stack(basis), loss)
                theta = [coef[0]]
                for m, e in enumerate(exponents):
                    theta += [coef[1 + m], e]
                theta += [coef[-1], eta]
                scored.append((residual, np.array(theta)))
        scored.sort(key=lambda item: item[0])
        return [theta for _, theta in scored[:3]]


@dataclass
class LawPResult:
    """Fitted Law-P with diagnostics and the bootstrap refits used for standard errors.

    ``n_train`` is the data size predictions refer to (the most common data
    size of the joint probes, D2). ``loo_by_form`` records the leave-one-out
    error of every form that was fitted.
    """

    form: str
    modules: list[str]
    params: dict[str, float]
    r2: float
    loo_relative_error: float | None
    intervals: dict[str, tuple[float, float]] | None
    points_used: int
    points_left_out: dict[str, int]
    n_train: int
    loo_by_form: dict[str, float | None]
    param_model: TrainableParamModel
    notes: list[str] = field(default_factory=list)
    ranks: np.ndarray = field(default_factory=lambda: np.empty((0, 0)), repr=False)
    loss: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    bootstrap_params: np.ndarray = field(default_factory=lambda: np.empty((0, 0)), repr=False)

    def predict(self, candidates: Sequence[Mapping[str, int]], n_train: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Predicted loss and its bootstrap standard error for each candidate (0 without bootstrap)."""
        form = LAW_P_FORMS[self.form](self.modules)
        ranks = np.array([[c[m] for m in self.modules] for c in candidates], dtype=float).reshape(-1, len(self.modules))
        inputs = _inputs(ranks, np.full(len(ranks), n_train or self.n_train, dtype=float), self.param_model)
        theta = np.array([self.params[name] for name in form.param_names()])
        mean = form.predict(theta[None, :], inputs)[0]
        if self.bootstrap_params.shape[0] < 2:
            return mean, np.zeros_like(mean)
        spread = form.predict(self.bootstrap_params, inputs)
        return mean, np.std(spread, axis=0, ddof=1)

    def to_dict(self) -> dict:
        return {
            "form": self.form,
            "params": dict(self.params),
            "r2": self.r2,
            "loo_relative_error": self.loo_relative_error,
            "loo_by_form": dict(self.loo_by_form),
            "intervals": None if self.intervals is None else {k: list(v) for k, v in self.intervals.items()},
            "points_used": self.points_used,
            "points_left_out": dict(self.points_left_out),
            "n_train": self.n_train,
            "notes": list(self.notes),
        }


def fit_performance_law(
    rows: Sequence[ProbeRow],
    modules: Sequence[str],
    param_model: TrainableParamModel,
    *,
    form: str = "auto",
    bootstrap: int = 200,
    seed: int = 0,
) -> LawPResult:
    """Fit Law-P on the usable joint probes among ``rows``.

    Parameters
    ----------
    rows
        Probe rows; only ``joint`` rows with status ``ok`` or ``empirical``
        are used, the other joint rows are counted as left out.
    modules
        Module order of the ranks.
    param_model
        Trainable parameter counts, needed by the capacity form.
    form
        A registered form name, or ``auto`` (see the module docstring).
    bootstrap
        Residual-bootstrap refits for intervals and standard errors; 0 turns them off.

    Raises ProbeTableError when there are fewer usable joint probes than the
    form has parameters plus one, and ValueError for an unknown form.
    """
    started = time.perf_counter()
    modules = list(modules)
    if form != "auto" and form not in LAW_P_FORMS:
        raise ValueError(f"unknown Law-P form {form!r}; registered forms: {sorted(LAW_P_FORMS)} or 'auto'")
    joint = [r for r in rows if r.kind == "joint"]
    used = [r for r in joint if r.usable]
    left_out: dict[str, int] = {}
    for row in joint:
        if not row.usable:
            left_out[row.status] = left_out.get(row.status, 0) + 1
    logger.info("Law-P fit started: %d usable joint probes (%d left out), form %s", len(used), len(joint) - len(used), form)

    ranks = np.array([[r.ranks[m] for m in modules] for r in used], dtype=float).reshape(-1, len(modules))
    loss = np.array([r.final_val_loss for r in used], dtype=float)
    n_train = np.array([r.n_train for r in used], dtype=float)
    inputs = _inputs(ranks, n_train, param_model)

    if form != "auto":
        names = [form]
    elif len(used) < AUTO_MIN_PROBES:
        names = ["base"]
    else:
        names = [n for n in LAW_P_FORMS if len(LAW_P_FORMS[n](modules).param_names()) < len(used)] or ["base"]
    fits = {name: _fit_form(LAW_P_FORMS[name](modules), inputs, loss, left_out) for name in names}
    loo_by_form = {name: fit.loo for name, fit in fits.items()}
    chosen = min(names, key=lambda n: (math.inf if fits[n].loo is None else fits[n].loo, names.index(n)))
    fit = fits[chosen]

    notes = []
    if form == "auto" and len(used) < AUTO_MIN_PROBES:
        notes.append(f"{len(used)} usable joint probes (< {AUTO_MIN_PROBES}): base form used without comparison")
    rng = np.random.default_rng(seed)
    boot, intervals = _bootstrap(fit, inputs, loss, bootstrap, rng, notes)

    values, counts = np.unique(n_train, return_counts=True)
    result = LawPResult(
        form=chosen, modules=modules, params=dict(zip(fit.form.param_names(), map(float, fit.theta), strict=True)),
        r2=fit.r2, loo_relative_error=fit.loo, intervals=intervals, points_used=len(used), points_left_out=left_out,
        n_train=int(values[np.argmax(counts)]), loo_by_form=loo_by_form, param_model=param_model, notes=notes,
        ranks=ranks, loss=loss, bootstrap_params=boot,
    )
    logger.info("Law-P fit done in %.2fs: form %s, R^2=%.3f, LOO error=%s", time.perf_counter() - started, chosen,
                fit.r2, "n/a" if fit.loo is None else f"{fit.loo:.3g}")
    return result


@dataclass
class _FormFit:
    form: LawPForm
    theta: np.ndarray
    r2: float
    loo: float | None


def min_joint_probes(form: str, modules: Sequence[str]) -> int:
    """Return the usable joint probes Law-P needs for ``form`` (``auto`` needs what its simplest form needs)."""
    names = ["base"] if form == "auto" else [form]
    return min(len(LAW_P_FORMS[name](modules).param_names()) for name in names) + 1


def _inputs(ranks: np.ndarray, n_train: np.ndarray, param_model: TrainableParamModel) -> LawPInputs:
    capacity = param_model.count_array(ranks) / n_train
    return LawPInputs(ranks=ranks, capacity=capacity)


def _fit_form(form: LawPForm, inputs: LawPInputs, loss: np.ndarray, left_out: Mapping[str, int]) -> _FormFit:
    n_params = len(form.param_names())
    if loss.size <= n_params:
        raise ProbeTableError(
            f"probe rows: Law-P form {form.name!r} has {n_params} parameters but only {loss.size} usable joint "
            f"probes (left out by status: {dict(left_out) or 'none'}); it needs at least {n_params + 1}. "
            + ("Joint probes left out as no_signal or censored need a higher learning rate or a larger joint "
               "budget (probes.joint_budget_bounds), and failed ones the error in their row fixed; or run more "
               "joint probes (probes.joint_probes)."
               if left_out else "Run more joint probes (probes.joint_probes).")
        )
    lower, upper = form.bounds(loss)

    def model(theta: np.ndarray) -> np.ndarray:
        return form.predict(theta, inputs)

    best, best_cost = None, math.inf
    for start in form.initial_guesses(inputs, loss):
        x0 = np.clip(start, lower, np.where(np.isfinite(upper), np.nextafter(upper, -np.inf), upper))
        result = least_squares(lambda x: model(x[None, :])[0] - loss, x0, bounds=(lower, upper),
                               method="trf", x_scale="jac")
        cost = float(np.sum(result.fun**2))
        if cost < best_cost:
            best, best_cost = result.x, cost

    total = float(np.sum((loss - loss.mean()) ** 2))
    r2 = 1.0 - best_cost / total if total > 0 else 1.0
    n = loss.size
    refits, _ = solve_stacked(model, best, np.broadcast_to(loss, (n, n)), lower, upper, weights=1.0 - np.eye(n))
    predicted = np.diagonal(model(refits))
    loo = float(np.mean(np.abs(predicted - loss) / np.abs(loss)))
    return _FormFit(form=form, theta=best, r2=r2, loo=loo if math.isfinite(loo) else None)


def _bootstrap(
    fit: _FormFit, inputs: LawPInputs, loss: np.ndarray, count: int, rng: np.random.Generator, notes: list[str]
) -> tuple[np.ndarray, dict[str, tuple[float, float]] | None]:
    """Residual-bootstrap refits and 95% percentile intervals of the parameters."""
    n, n_params = loss.size, fit.theta.size
    if count <= 0:
        return np.empty((0, n_params)), None
    lower, upper = fit.form.bounds(loss)
    fitted = fit.form.predict(fit.theta[None, :], inputs)[0]
    resid = loss - fitted
    resid = (resid - resid.mean()) * math.sqrt(n / (n - n_params))
    targets = fitted[None, :] + resid[rng.integers(0, n, size=(count, n))]
    refits, cost = solve_stacked(lambda th: fit.form.predict(th, inputs), fit.theta, targets, lower, upper)
    refits = refits[np.isfinite(cost)]
    if refits.shape[0] < count:
        notes.append(f"{count - refits.shape[0]} of {count} bootstrap refits diverged and were dropped")
    if refits.shape[0] < 2:
        return np.empty((0, n_params)), None
    low, high = np.percentile(refits, [2.5, 97.5], axis=0)
    intervals = {name: (float(lo), float(hi)) for name, lo, hi in zip(fit.form.param_names(), low, high, strict=True)}
    return refits, intervals
