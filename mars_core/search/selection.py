"""Selection: the kept candidate with the lowest predicted loss.

An optional budget (``max_trainable_params``) first removes kept candidates
above it. Among the rest, candidates whose predicted loss lies within one
bootstrap standard error of the best candidate's prediction are ties, and
the tie with the fewest trainable parameters wins (then the lower predicted
loss). When pruning or the budget leaves nothing, the configured default
ranks are chosen and ``fallback_reason`` gives the cause.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .alignment import AnalyticSolution, PruneResult
from .law_p import LawPResult
from .law_t import LawTResult
from .trainable_params import TrainableParamModel

logger = logging.getLogger(__name__)


@dataclass
class Candidate:
    """One grid candidate as selection saw it.

    ``kept`` means it survived pruning (``source`` records how), and ``tie``
    means its predicted loss was within one standard error of the best. Predicted
    losses are None when no Law-P was fitted.
    """

    ranks: dict[str, int]
    t_conv: dict[str, float]
    log_spread: float
    aligned: bool
    kept: bool
    source: str
    predicted_loss: float | None
    loss_se: float | None
    trainable_params: int
    dropped_by_budget: bool = False
    tie: bool = False
    chosen: bool = False

    def to_dict(self) -> dict:
        return {
            "ranks": dict(self.ranks),
            "t_conv": dict(self.t_conv),
            "log_spread": self.log_spread,
            "aligned": self.aligned,
            "kept": self.kept,
            "source": self.source,
            "predicted_loss": self.predicted_loss,
            "loss_se": self.loss_se,
            "trainable_params": self.trainable_params,
            "dropped_by_budget": self.dropped_by_budget,
            "tie": self.tie,
            "chosen": self.chosen,
        }


@dataclass
class Selection:
    """The chosen ranks with every candidate, both laws and the reason for any fallback.

    ``chosen_t_conv`` is Law-T's convergence time per module for the chosen
    ranks at ``target_n_train``; the final run's automatic budget uses it.
    """

    chosen: dict[str, int]
    modules: list[str]
    reference_module: str
    target_n_train: int
    tolerance: float
    max_trainable_params: int | None
    chosen_t_conv: dict[str, float]
    chosen_predicted_loss: float | None
    chosen_loss_se: float | None
    chosen_trainable_params: int
    fallback_reason: str | None
    candidates: list[Candidate]
    solutions: list[AnalyticSolution]
    grid: dict[str, list[int]]
    law_t: LawTResult
    law_p: LawPResult | None
    param_model: TrainableParamModel
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; non-finite numbers become None."""
        data = {
            "chosen": dict(self.chosen),
            "modules": list(self.modules),
            "reference_module": self.reference_module,
            "target_n_train": self.target_n_train,
            "tolerance": self.tolerance,
            "max_trainable_params": self.max_trainable_params,
            "chosen_t_conv": dict(self.chosen_t_conv),
            "chosen_predicted_loss": self.chosen_predicted_loss,
            "chosen_loss_se": self.chosen_loss_se,
            "chosen_trainable_params": self.chosen_trainable_params,
            "fallback_reason": self.fallback_reason,
            "grid": {m: list(r) for m, r in self.grid.items()},
            "law_t": self.law_t.to_dict(),
            "law_p": None if self.law_p is None else self.law_p.to_dict(),
            "trainable_params": self.param_model.to_dict(),
            "solutions": [s.to_dict() for s in self.solutions],
            "candidates": [c.to_dict() for c in self.candidates],
            "notes": list(self.notes),
        }
        return _json_ready(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def select(
    prune_result: PruneResult,
    law_p: LawPResult | None,
    param_model: TrainableParamModel,
    max_trainable_params: int | None = None,
) -> Selection:
    """Choose the ranks among the kept candidates of ``prune_result``.

    Parameters
    ----------
    prune_result
        Output of ``prune``.
    law_p
        Fitted Law-P; None is allowed only when pruning kept nothing, since
        then no prediction is needed.
    param_model
        Trainable parameter counts, from ``fit_trainable_params`` or given.
    max_trainable_params
        Kept candidates above this count are dropped before choosing.
    """
    started = time.perf_counter()
    modules = prune_result.modules
    logger.info("selection started: %d kept candidates, budget %s", len(prune_result.kept()), max_trainable_params)
    if law_p is None and prune_result.kept():
        raise ValueError("select needs a fitted Law-P when pruning kept candidates; run fit_performance_law first")

    candidates = _score_candidates(prune_result, law_p, param_model, max_trainable_params)
    eligible = [c for c in candidates if c.kept and not c.dropped_by_budget]
    notes: list[str] = []
    fallback_reason = prune_result.fallback_reason
    if fallback_reason is None and not eligible:
        fallback_reason = (f"all {sum(c.kept for c in candidates)} kept candidates exceed "
                           f"max_trainable_params={max_trainable_params}")
        logger.warning("selection fell back to default ranks %s: %s", prune_result.default_ranks, fallback_reason)

    if fallback_reason is None:
        chosen = _choose(eligible)
        chosen_ranks = dict(chosen.ranks)
        loss, se = chosen.predicted_loss, chosen.loss_se
    else:
        chosen_ranks = dict(prune_result.default_ranks)
        loss, se = _predict_one(law_p, chosen_ranks)
        for candidate in candidates:
            candidate.chosen = candidate.ranks == chosen_ranks
    chosen_params = param_model.count(chosen_ranks)
    if max_trainable_params is not None and chosen_params > max_trainable_params:
        notes.append(f"chosen ranks {chosen_ranks} have {chosen_params} trainable parameters, "
                     f"above max_trainable_params={max_trainable_params}")
        logger.warning(notes[-1])

    law_t = prune_result.law_t
    chosen_t = {m: float(law_t.predict(m, chosen_ranks[m], prune_result.target_n_train)) for m in modules}
    logger.info("selection done in %.3fs: chosen %s, predicted loss %s%s", time.perf_counter() - started, chosen_ranks,
                "n/a" if loss is None else f"{loss:.4g}", "" if fallback_reason is None else " (fallback)")
    return Selection(
        chosen=chosen_ranks, modules=list(modules), reference_module=prune_result.reference_module,
        target_n_train=prune_result.target_n_train, tolerance=prune_result.tolerance,
        max_trainable_params=max_trainable_params, chosen_t_conv=chosen_t, chosen_predicted_loss=loss,
        chosen_loss_se=se, chosen_trainable_params=chosen_params, fallback_reason=fallback_reason,
        candidates=candidates, solutions=prune_result.solutions, grid=prune_result.grid, law_t=law_t,
        law_p=law_p, param_model=param_model, notes=notes,
    )


def _score_candidates(
    prune_result: PruneResult, law_p: LawPResult | None, param_model: TrainableParamModel, budget: int | None
) -> list[Candidate]:
    grid_candidates = prune_result.candidates
    if law_p is not None:
        means, ses = law_p.predict([c.ranks for c in grid_candidates])
    else:
        means = ses = [None] * len(grid_candidates)

    candidates = []
    for item, mean, se in zip(grid_candidates, means, ses, strict=True):
        params = param_model.count(item.ranks)
        candidates.append(Candidate(
            ranks=dict(item.ranks), t_conv=dict(item.t_conv), log_spread=item.log_spread, aligned=item.aligned,
            kept=item.kept, source=item.source,
            predicted_loss=None if mean is None else float(mean), loss_se=None if se is None else float(se),
            trainable_params=params,
            dropped_by_budget=item.kept and budget is not None and params > budget,
        ))
    return candidates


def _choose(eligible: list[Candidate]) -> Candidate:
    """Lowest predicted loss; ties within the best's standard error go to fewer trainable parameters."""
    best = min(eligible, key=lambda c: c.predicted_loss)
    threshold = best.predicted_loss + (best.loss_se or 0.0)
    ties = [c for c in eligible if c.predicted_loss <= threshold]
    for candidate in ties:
        candidate.tie = True
    chosen = min(ties, key=lambda c: (c.trainable_params, c.predicted_loss))
    chosen.chosen = True
    return chosen


def _predict_one(law_p: LawPResult | None, ranks: Mapping[str, int]) -> tuple[float | None, float | None]:
    if law_p is None:
        return None, None
    mean, se = law_p.predict([ranks])
    return float(mean[0]), float(se[0])


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
