"""Probe planning: module-probe ranks, the joint design and the joint probe budget."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import qmc

from .alignment import normalise_grid
from .law_t import LawTResult

logger = logging.getLogger(__name__)

# Latin-hypercube batches drawn before the remaining grid points fill the design.
_MAX_LHS_ROUNDS = 20


def module_probe_ranks(grid: Sequence[int], n: int) -> list[int]:
    """Return ``n`` ranks spread evenly over the grid in log space, always including both ends.

    The whole grid is returned when it has ``n`` ranks or fewer.
    """
    ranks = sorted({int(r) for r in grid})
    if not ranks:
        raise ValueError("grid is empty")
    if n < 2:
        raise ValueError(f"n={n}: module probes need at least 2 ranks (both grid ends)")
    if n >= len(ranks):
        return ranks
    positions = np.log2(np.asarray(ranks, dtype=float))
    targets = np.linspace(positions[0], positions[-1], n)
    chosen: list[int] = []
    available = list(range(len(ranks)))
    for target in targets:
        index = min(available, key=lambda i: (abs(positions[i] - target), i))
        available.remove(index)
        chosen.append(ranks[index])
    return sorted(chosen)


def joint_design(
    grid: Sequence[int] | Mapping[str, Sequence[int]], modules: Sequence[str], n: int, seed: int = 0
) -> list[dict[str, int]]:
    """Return ``n`` distinct candidates: the grid's corners, then a Latin-hypercube fill.

    The fill samples log2 ranks uniformly over the grid's range and snaps them
    to the nearest grid rank. Duplicates are redrawn, and if the grid runs out
    of fresh points after a few rounds, the remaining grid points are added in
    a seeded random order. When ``n`` is below the number of corners (more
    than two modules), a seeded subset of the corners is returned. The same
    seed gives the same design.
    """
    modules = list(modules)
    per_module = normalise_grid(grid, modules)
    total = math.prod(len(per_module[m]) for m in modules)
    if n < 1:
        raise ValueError(f"n={n}: the joint design needs at least one probe")
    if n > total:
        logger.warning("joint design: %d probes requested but the grid has %d candidates; using all of them", n, total)
        n = total
    rng = np.random.default_rng(seed)

    corners = list(dict.fromkeys(itertools.product(*((per_module[m][0], per_module[m][-1]) for m in modules))))
    if n <= len(corners):
        if n < len(corners):
            logger.warning("joint design: %d probes cannot cover all %d grid corners; using a seeded subset", n, len(corners))
        picked = sorted(rng.choice(len(corners), size=n, replace=False))
        return [dict(zip(modules, corners[i], strict=True)) for i in picked]

    design = list(corners)
    seen = set(design)
    levels = [np.log2(np.asarray(per_module[m], dtype=float)) for m in modules]
    sampler = qmc.LatinHypercube(d=len(modules), rng=rng)
    for _ in range(_MAX_LHS_ROUNDS):
        if len(design) >= n:
            break
        for point in sampler.random(n - len(design)):
            key = tuple(
                per_module[m][int(np.argmin(np.abs(lv - (lv[0] + u * (lv[-1] - lv[0])))))]
                for m, lv, u in zip(modules, levels, point, strict=True)
            )
            if key not in seen:
                seen.add(key)
                design.append(key)

    if len(design) < n:
        rest = [key for key in itertools.product(*(per_module[m] for m in modules)) if key not in seen]
        for i in rng.permutation(len(rest))[: n - len(design)]:
            design.append(rest[i])
    return [dict(zip(modules, key, strict=True)) for key in design[:n]]


def joint_probe_budget(
    law_t: LawTResult,
    design: Sequence[Mapping[str, int]],
    n_train_d2: int,
    margin: float,
    bounds: tuple[int, int],
) -> int:
    """Samples each joint probe trains for: the slowest module's Law-T time, plus a margin, within bounds.

    Returns ``ceil((1 + margin) * max over design and modules of t_m(r_m, D2))``
    clipped to ``bounds``. A non-finite prediction gives the upper bound.
    """
    low, high = bounds
    if not 0 < low <= high:
        raise ValueError(f"bounds={bounds} must satisfy 0 < low <= high")
    if not design:
        raise ValueError("design is empty; give at least one joint candidate")
    slowest = max(float(law_t.predict(m, ranks[m], n_train_d2)) for ranks in design for m in law_t.modules)
    if not math.isfinite(slowest):
        logger.warning("joint probe budget: Law-T predicts a non-finite convergence time; using the upper bound %d", high)
        return int(high)
    budget = math.ceil((1.0 + margin) * slowest)
    return int(min(max(budget, low), high))
