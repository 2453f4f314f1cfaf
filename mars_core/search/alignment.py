"""Pruning the rank grid to the candidates whose modules converge together.

At the target data size ``Dstar`` a candidate (one rank per module) is
aligned when its modules' predicted convergence times lie within a factor
``1 + tolerance`` of each other:

    max_m ln t_m(r_m, Dstar) - min_m ln t_m(r_m, Dstar) <= ln(1 + tolerance)

For two modules this is ``|ln t_vision - ln t_llm| <= ln(1 + tolerance)``.

Law-T can also be solved for the rank of module ``m`` that matches the
reference module (the last configured module, ``llm`` by default) at
reference rank ``r_ref``:

    r_m = ( a_m * Dstar**b_m / (t_ref(r_ref, Dstar) - t0_m) ) ** (1 / c_m)

When ``t_ref(r_ref, Dstar) <= t0_m`` the base of that power is negative or
infinite, so there is no positive real solution: module ``m`` cannot
converge as fast as the reference at that rank, and the reference rank has
no partner. Pruning keeps the aligned grid candidates plus every real
solution snapped to the grid (nearest in log2). A solution more than half a
grid step beyond the grid's ends is not clipped to the end rank but also
counts as no partner, because the end rank would be far from aligned.
Kept candidates always come from the grid. When none survives, the result
records why, and selection falls back to the configured default ranks.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .law_t import LawTResult

logger = logging.getLogger(__name__)


@dataclass
class AnalyticSolution:
    """The aligned rank of one module for one reference rank, exact and snapped to the grid.

    ``exact_rank`` and ``snapped_rank`` are None when no positive real
    solution exists, and ``reason`` then gives the cause.
    """

    module: str
    reference_rank: int
    exact_rank: float | None
    snapped_rank: int | None
    reason: str | None = None

    def to_dict(self) -> dict:
        return {
            "module": self.module,
            "reference_rank": self.reference_rank,
            "exact_rank": self.exact_rank,
            "snapped_rank": self.snapped_rank,
            "reason": self.reason,
        }


@dataclass
class GridCandidate:
    """One grid candidate with its predicted convergence times at the target data size.

    ``log_spread`` is ``max ln t - min ln t`` over the modules. ``source`` records
    why the candidate was kept: ``aligned``, ``analytic`` (a snapped solution)
    or ``aligned+analytic``. It is empty for a pruned candidate.
    """

    ranks: dict[str, int]
    t_conv: dict[str, float]
    log_spread: float
    aligned: bool
    source: str

    @property
    def kept(self) -> bool:
        return bool(self.source)


@dataclass
class PruneResult:
    """The grid after pruning, with every candidate, the analytic solutions and any fallback reason."""

    modules: list[str]
    reference_module: str
    grid: dict[str, list[int]]
    target_n_train: int
    tolerance: float
    default_ranks: dict[str, int]
    candidates: list[GridCandidate]
    solutions: list[AnalyticSolution]
    fallback_reason: str | None
    law_t: LawTResult

    def kept(self) -> list[GridCandidate]:
        return [c for c in self.candidates if c.kept]

    def to_dict(self) -> dict:
        return {
            "modules": list(self.modules),
            "reference_module": self.reference_module,
            "grid": {m: list(r) for m, r in self.grid.items()},
            "target_n_train": self.target_n_train,
            "tolerance": self.tolerance,
            "default_ranks": dict(self.default_ranks),
            "kept": [dict(c.ranks) for c in self.kept()],
            "solutions": [s.to_dict() for s in self.solutions],
            "fallback_reason": self.fallback_reason,
        }


def normalise_grid(grid: Sequence[int] | Mapping[str, Sequence[int]], modules: Sequence[str]) -> dict[str, list[int]]:
    """Return one sorted list of distinct positive ranks per module.

    A plain sequence is shared by every module; a mapping must name every module.
    """
    if isinstance(grid, Mapping):
        missing = [m for m in modules if m not in grid]
        if missing:
            raise ValueError(f"grid has no ranks for module(s) {missing}; give ranks for each of {list(modules)}")
        per_module = {m: list(grid[m]) for m in modules}
    else:
        per_module = {m: list(grid) for m in modules}
    for module, ranks in per_module.items():
        if not ranks:
            raise ValueError(f"grid for module {module!r} is empty")
        bad = [r for r in ranks if not isinstance(r, (int, np.integer)) or r < 1]
        if bad:
            raise ValueError(f"grid for module {module!r} has invalid rank(s) {bad}; ranks are integers >= 1")
        per_module[module] = sorted({int(r) for r in ranks})
    return per_module


def snap_to_grid(rank: float, grid: Sequence[int]) -> int:
    """Return the grid rank nearest to ``rank`` in log2, clipped to the grid ends.

    Infinite ranks clip to the largest grid rank, zero to the smallest.
    """
    levels = np.log2(np.asarray(grid, dtype=float))
    if rank <= 0:
        return int(grid[0])
    if not math.isfinite(rank):
        return int(grid[-1])
    return int(grid[int(np.argmin(np.abs(levels - math.log2(rank))))])


def prune(
    law_t: LawTResult,
    grid: Sequence[int] | Mapping[str, Sequence[int]],
    target_n_train: int,
    tolerance: float,
    default_ranks: Mapping[str, int],
    reference_module: str | None = None,
) -> PruneResult:
    """Keep the grid candidates whose modules converge together at ``target_n_train``.

    Parameters
    ----------
    law_t
        Fitted Law-T of every module.
    grid
        Candidate ranks, shared by all modules or given per module.
    target_n_train
        Dstar, the data size of the final run.
    tolerance
        Aligned means convergence times within a factor ``1 + tolerance``.
    default_ranks
        Ranks to fall back to when nothing survives; recorded, not checked
        against the grid.
    reference_module
        Module the others are solved against; the last module by default.

    Raises ValueError only for invalid arguments. Degenerate laws do not
    raise: a module whose time does not depend on rank (``c = 0`` or
    ``a = 0``) has no analytic solution, and a non-finite predicted time
    makes a candidate unaligned.
    """
    started = time.perf_counter()
    modules = list(law_t.modules)
    reference = reference_module or modules[-1]
    if reference not in modules:
        raise ValueError(f"reference module {reference!r} is not one of {modules}")
    missing = [m for m in modules if m not in default_ranks]
    if missing:
        raise ValueError(f"default ranks have no rank for module(s) {missing}; give one per module")
    if tolerance < 0:
        raise ValueError(f"tolerance={tolerance} is negative; the default is 0.25")
    per_module = normalise_grid(grid, modules)
    logger.info("pruning started: %d candidates, Dstar=%d, tolerance=%.3g",
                math.prod(len(r) for r in per_module.values()), target_n_train, tolerance)

    times = {m: {r: float(law_t.predict(m, r, target_n_train)) for r in per_module[m]} for m in modules}
    limit = math.log1p(tolerance)
    solutions, analytic_keys = _analytic_solutions(law_t, per_module, reference, target_n_train)

    candidates = []
    for combo in itertools.product(*(per_module[m] for m in modules)):
        ranks = dict(zip(modules, combo, strict=True))
        t_conv = {m: times[m][ranks[m]] for m in modules}
        spread = _log_spread(t_conv.values())
        aligned = spread <= limit
        from_solution = combo in analytic_keys
        source = "+".join(name for name, flag in (("aligned", aligned), ("analytic", from_solution)) if flag)
        candidates.append(GridCandidate(ranks, t_conv, spread, aligned, source))

    kept = [c for c in candidates if c.kept]
    fallback_reason = None
    if not kept:
        fallback_reason = _empty_reason(solutions, times, reference, target_n_train, tolerance)
        logger.warning("pruning kept no candidate, falling back to default ranks %s: %s",
                       dict(default_ranks), fallback_reason)
    logger.info("pruning done in %.3fs: %d aligned, %d kept of %d", time.perf_counter() - started,
                sum(c.aligned for c in candidates), len(kept), len(candidates))
    return PruneResult(
        modules=modules, reference_module=reference, grid=per_module, target_n_train=int(target_n_train),
        tolerance=float(tolerance), default_ranks=dict(default_ranks), candidates=candidates,
        solutions=solutions, fallback_reason=fallback_reason, law_t=law_t,
    )


def _log_spread(times: Sequence[float] | object) -> float:
    values = np.fromiter(times, dtype=float)
    if np.any(~np.isfinite(values)) or np.any(values <= 0):
        return math.inf
    logs = np.log(values)
    return float(logs.max() - logs.min())


def _analytic_solutions(
    law_t: LawTResult, grid: dict[str, list[int]], reference: str, target_n_train: int
) -> tuple[list[AnalyticSolution], set[tuple[int, ...]]]:
    """Solve each non-reference module against every reference rank; return the solutions and the snapped grid keys."""
    modules = law_t.modules
    others = [m for m in modules if m != reference]
    solutions: list[AnalyticSolution] = []
    keys: set[tuple[int, ...]] = set()
    for r_ref in grid[reference]:
        t_ref = float(law_t.predict(reference, r_ref, target_n_train))
        snapped = {reference: r_ref}
        for module in others:
            solution = _solve_rank(law_t, module, reference, r_ref, t_ref, target_n_train, grid[module])
            solutions.append(solution)
            if solution.snapped_rank is not None:
                snapped[module] = solution.snapped_rank
        if len(snapped) == len(modules):
            keys.add(tuple(snapped[m] for m in modules))
    return solutions, keys


def _solve_rank(
    law_t: LawTResult, module: str, reference: str, r_ref: int, t_ref: float, target_n_train: int, grid: Sequence[int]
) -> AnalyticSolution:
    law = law_t.laws[module]
    margin = t_ref - law.t0
    if not math.isfinite(t_ref) or margin <= 0:
        reason = (f"complex root: t_{reference}({r_ref}, {target_n_train}) = {t_ref:.4g} "
                  f"<= t0_{module} = {law.t0:.4g}, so no rank of {module} converges that fast")
        return AnalyticSolution(module, r_ref, None, None, reason)
    if law.c <= 0 or law.a <= 0:
        reason = f"Law-T of {module} does not depend on rank (a={law.a:.3g}, c={law.c:.3g})"
        return AnalyticSolution(module, r_ref, None, None, reason)

    log_rank = (math.log(law.a) + law.b * math.log(target_n_train) - math.log(margin)) / law.c
    exact = math.exp(log_rank) if log_rank < 700 else math.inf
    low, high = _snapping_range(grid)
    if not low <= log_rank / math.log(2) <= high:
        reason = f"aligned {module} rank {exact:.4g} lies outside the grid [{grid[0]}, {grid[-1]}]"
        return AnalyticSolution(module, r_ref, exact, None, reason)
    return AnalyticSolution(module, r_ref, exact, snap_to_grid(exact, grid))


def _snapping_range(grid: Sequence[int]) -> tuple[float, float]:
    """Log2 range of exact ranks that snap to the grid: its ends widened by half a grid step."""
    levels = np.log2(np.asarray(grid, dtype=float))
    if levels.size == 1:
        return float(levels[0] - 0.5), float(levels[0] + 0.5)
    return float(levels[0] - (levels[1] - levels[0]) / 2), float(levels[-1] + (levels[-1] - levels[-2]) / 2)


def _empty_reason(
    solutions: Sequence[AnalyticSolution], times: dict[str, dict[int, float]], reference: str, target_n_train: int,
    tolerance: float,
) -> str:
    """Explain an empty pruning result: each module's predicted times over the grid, and why no rank was solved."""
    unsolved = sorted({s.reference_rank for s in solutions if s.snapped_rank is None})
    spans = ", ".join(
        f"{module} {min(by_rank.values()):.4g} to {max(by_rank.values()):.4g}" for module, by_rank in times.items()
    )
    causes = list(dict.fromkeys(s.reason for s in solutions if s.reason))
    first_causes = "; ".join(causes[:2]) + (f"; and {len(causes) - 2} more" if len(causes) > 2 else "")
    return (
        f"no grid candidate is aligned within tolerance {tolerance} at n_train={target_n_train}: Law-T predicts "
        f"convergence times (samples) over the grid of {spans}. No {reference} rank has an aligned partner in "
        f"the grid (unsolved {reference} ranks: {unsolved}; {first_causes}). Widen the rank grid "
        "(probes.min_rank, probes.max_rank) or raise search.tolerance"
    )
