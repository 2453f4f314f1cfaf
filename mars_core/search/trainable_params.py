"""Trainable parameter counts as a linear function of the ranks.

A LoRA adapter of rank r on a (d_out x d_in) weight adds r * (d_in + d_out)
parameters, so with the projector and any other fully trained part fixed,

    N(ranks) = n0 + sum_m k_m * r_m

is exact. The coefficients come either from the model (passed in
directly) or from the probe table, by least squares on the
``trainable_params`` column against the rank columns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .probe_table import ProbeRow, ProbeTableError

logger = logging.getLogger(__name__)

#: Largest relative misfit of the linear count before a warning is logged.
LINEAR_FIT_WARN = 1e-3


@dataclass(frozen=True)
class TrainableParamModel:
    """Coefficients of ``N = n0 + sum_m per_rank[m] * r_m``.

    ``source`` is ``given`` or ``probe rows``; ``max_relative_residual`` is the
    worst relative misfit over the rows it was fitted on (None when given).
    """

    n0: float
    per_rank: dict[str, float]
    source: str = "given"
    max_relative_residual: float | None = None

    def count(self, ranks: Mapping[str, int]) -> int:
        """Trainable parameters of one candidate, rounded to an integer."""
        total = self.n0 + sum(self.per_rank[m] * ranks[m] for m in self.per_rank)
        return int(round(total))

    def count_array(self, ranks: np.ndarray) -> np.ndarray:
        """Trainable parameters for an ``(n, M)`` array of ranks in ``per_rank`` order."""
        return self.n0 + ranks @ np.array(list(self.per_rank.values()), dtype=float)

    def to_dict(self) -> dict:
        return {
            "n0": self.n0,
            "per_rank": dict(self.per_rank),
            "source": self.source,
            "max_relative_residual": self.max_relative_residual,
        }


def fit_trainable_params(rows: Sequence[ProbeRow], modules: Sequence[str]) -> TrainableParamModel:
    """Recover n0 and one coefficient per module from the rows' trainable parameter counts.

    Raises ProbeTableError when the rows do not pin every coefficient down,
    for example when one module's rank never changes between rows.
    """
    counted = [r for r in rows if r.trainable_params is not None]
    design = np.array([[1.0, *(r.ranks[m] for m in modules)] for r in counted], dtype=float).reshape(-1, len(modules) + 1)
    target = np.array([r.trainable_params for r in counted], dtype=float)
    if np.linalg.matrix_rank(design) < len(modules) + 1:
        raise ProbeTableError(
            f"probe rows: the {len(counted)} rows with trainable_params do not determine how the count grows "
            f"with each of the ranks {[f'r_{m}' for m in modules]}; each rank needs at least two values "
            f"(module probes do this), or pass the coefficients directly"
        )

    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    relative = np.abs(design @ coef - target) / np.maximum(target, 1.0)
    worst = float(relative.max()) if relative.size else 0.0
    if worst > LINEAR_FIT_WARN:
        logger.warning("trainable_params is not linear in the ranks: worst relative misfit %.2g over %d rows",
                       worst, len(counted))
    return TrainableParamModel(
        n0=float(coef[0]),
        per_rank={m: float(k) for m, k in zip(modules, coef[1:], strict=True)},
        source="probe rows",
        max_relative_residual=worst,
    )
