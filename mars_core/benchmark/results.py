"""The results of a benchmark: one row per method (or variant), the grid, and MARS against the grid.

``build_benchmark`` assembles ``benchmark.json`` from what the flows return.
Costs are the training wall seconds and samples of every run a method
needed, summed: probes plus the final run for MARS, every pair for the grid.
A run that came from the cache counts with the seconds it took when it was
computed, so a rerun of the benchmark reports the same costs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .metrics import cost_ratio, place_among, ranks_key, regret, spearman

log = logging.getLogger(__name__)

METHODS = ("mars", "uniform", "differential-lr", "adalora", "grid")
# Baseline settings: uniform ranks to try and the vision learning-rate scales of differential-lr.
UNIFORM_RANKS = (8, 128)
VISION_LR_SCALES = (0.1, 10.0)
# Targets that a benchmark reports against (they are not used to tune anything).
TARGET_MAX_REGRET = 0.02
TARGET_MIN_COST_RATIO = 10.0


@dataclass
class MethodResult:
    """One row of the comparison: a method, or one variant of it (``uniform r=8``).

    ``wall_seconds`` and ``samples`` are the training cost of every run the
    row needed. ``status`` is ``ok``, ``skipped`` (it did not run: a rank
    above ``search.max_trainable_params``, say) or ``failed`` (its training
    or evaluation failed after the retries). For both, ``reason`` gives the
    cause and the figures are None.
    """

    name: str
    method: str
    ranks: dict[str, int] | None
    val_loss: float | None
    test_loss: float | None
    test_accuracy: float | None
    wall_seconds: float | None
    samples: int | None
    trainable_params: int | None
    details: dict[str, Any] = field(default_factory=dict)
    status: str = "ok"
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return _json_ready(asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MethodResult":
        return cls(**dict(data))

    @classmethod
    def not_run(cls, name: str, method: str, ranks: dict[str, int] | None, status: str, reason: str) -> "MethodResult":
        """Build a row without figures for a variant that was skipped or failed, for ``reason``."""
        return cls(name=name, method=method, ranks=ranks, val_loss=None, test_loss=None, test_accuracy=None,
                   wall_seconds=None, samples=None, trainable_params=None, status=status, reason=reason)


@dataclass
class GridPoint:
    """One pair of the grid: its realised validation loss, its cost, and Law-P's prediction for it.

    ``cached`` means the run came from the cache (the MARS final run, say);
    its ``wall_seconds`` are those of the run that computed it.
    """

    ranks: dict[str, int]
    val_loss: float | None
    wall_seconds: float | None
    samples: int | None
    trainable_params: int | None
    predicted_loss: float | None = None
    kept_by_pruning: bool | None = None
    status: str = "ok"
    cached: bool = False

    def to_dict(self) -> dict[str, Any]:
        return _json_ready(asdict(self))


def best_grid_point(points: Sequence[GridPoint]) -> GridPoint:
    """Return the pair with the lowest realised validation loss (ties: fewer trainable parameters)."""
    finished = [p for p in points if p.val_loss is not None and math.isfinite(p.val_loss)]
    if not finished:
        raise ValueError(f"none of the {len(points)} grid pairs finished with a validation loss")
    return min(finished, key=lambda p: (p.val_loss, p.trainable_params or 0))


def add_predictions(points: Sequence[GridPoint], candidates: Sequence[Mapping[str, Any]]) -> None:
    """Copy Law-P's prediction and the pruning verdict of each grid pair from ``selection.json`` candidates."""
    by_ranks = {_frozen(c["ranks"]): c for c in candidates}
    for point in points:
        candidate = by_ranks.get(_frozen(point.ranks))
        if candidate is not None:
            point.predicted_loss = candidate.get("predicted_loss")
            point.kept_by_pruning = candidate.get("kept")


def compare_with_grid(
    mars: MethodResult,
    mars_cost: Mapping[str, float],
    points: Sequence[GridPoint],
    modules: Sequence[str],
) -> dict[str, Any]:
    """MARS against the grid: regret, place, search cost ratios and Law-P's rank correlation.

    ``mars_cost`` contains ``seconds`` and ``samples`` of the probes plus the
    final run. The grid's cost is measured: the sum over its pairs.
    """
    best = best_grid_point(points)
    finished = [p for p in points if p.val_loss is not None and math.isfinite(p.val_loss)]
    grid_seconds = sum(p.wall_seconds or 0.0 for p in points)
    grid_samples = sum(p.samples or 0 for p in points)
    correlation, undefined = spearman([p.predicted_loss for p in points], [p.val_loss for p in points])

    kept = [p for p in finished if p.kept_by_pruning]
    comparison = {
        "grid_size": len(points),
        "grid_finished": len(finished),
        "grid_best": {"ranks": dict(best.ranks), "val_loss": best.val_loss, "predicted_loss": best.predicted_loss,
                      "kept_by_pruning": best.kept_by_pruning, "trainable_params": best.trainable_params},
        "regret": regret(mars.val_loss, best.val_loss),
        "place": place_among(mars.val_loss, [p.val_loss for p in finished]),
        "cost_basis": "measured",
        "grid_seconds": grid_seconds,
        "grid_samples": grid_samples,
        "mars_seconds": mars_cost["seconds"],
        "mars_samples": mars_cost["samples"],
        "search_cost_ratio": cost_ratio(grid_seconds, mars_cost["seconds"]),
        "search_cost_ratio_samples": cost_ratio(grid_samples, mars_cost["samples"]),
        "spearman": correlation,
        "spearman_undefined_reason": undefined,
        # Where the search could have lost the best pair: pruning (Law-T) or ranking (Law-P).
        "kept_pairs": len(kept),
        "best_kept_pair": None if not kept else ranks_key(best_grid_point(kept).ranks, modules),
        "best_kept_regret": None if not kept else regret(best_grid_point(kept).val_loss, best.val_loss),
    }
    comparison["meets_targets"] = {
        "regret": comparison["regret"] <= TARGET_MAX_REGRET,
        "search_cost_ratio": comparison["search_cost_ratio"] >= TARGET_MIN_COST_RATIO,
    }
    log.info(
        "MARS against the grid: regret %.2f%%, place %d of %d, cost ratio %.1fx (seconds), Spearman %s",
        100 * comparison["regret"], comparison["place"], len(finished), comparison["search_cost_ratio"],
        "n/a" if correlation is None else f"{correlation:.3f}",
    )
    return comparison


def estimate_without_grid(
    mars_cost: Mapping[str, float], final_seconds: float, final_samples: int, grid_size: int
) -> dict[str, Any]:
    """Search cost ratio when the grid did not run: grid size times the MARS final run, labelled an estimate."""
    return {
        "grid_size": grid_size,
        "cost_basis": "estimate: grid size x the MARS final run",
        "grid_seconds": grid_size * final_seconds,
        "grid_samples": grid_size * final_samples,
        "mars_seconds": mars_cost["seconds"],
        "mars_samples": mars_cost["samples"],
        "search_cost_ratio": cost_ratio(grid_size * final_seconds, mars_cost["seconds"]),
        "search_cost_ratio_samples": cost_ratio(grid_size * final_samples, mars_cost["samples"]),
        "regret": None,
        "place": None,
        "spearman": None,
        "spearman_undefined_reason": "the grid did not run",
    }


def build_benchmark(
    *,
    name: str,
    modules: Sequence[str],
    budget_samples: int,
    grid_size: int,
    rows: Sequence[MethodResult],
    grid: Sequence[GridPoint] | None,
    mars_summary: Mapping[str, Any] | None,
    environment: Mapping[str, Any],
) -> dict[str, Any]:
    """Assemble ``benchmark.json``: the rows, the grid, and MARS against the grid.

    Without a grid run, the search cost ratio is estimated from ``grid_size``
    (the pairs a grid search would train), and ``cost_basis`` states that.
    """
    rows = list(rows)
    mars_row = next((row for row in rows if row.method == "mars"), None)
    comparison = None
    if mars_row is not None and mars_summary is not None:
        cost = mars_summary["cost"]
        mars_cost = {"seconds": cost["probe_seconds"] + cost["final_seconds"],
                     "samples": cost["probe_samples"] + cost["final_samples"]}
        if grid:
            comparison = compare_with_grid(mars_row, mars_cost, grid, modules)
        else:
            comparison = estimate_without_grid(mars_cost, cost["final_seconds"], cost["final_samples"], grid_size)
    return _json_ready({
        "name": name,
        "modules": list(modules),
        "budget_samples": budget_samples,
        "grid_size": grid_size,
        "methods": sorted({row.method for row in rows}, key=METHODS.index),
        "rows": [row.to_dict() for row in rows],
        "grid": None if not grid else [point.to_dict() for point in grid],
        "mars_vs_grid": comparison,
        "mars": None if mars_summary is None else _mars_extract(mars_summary),
        "targets": {"max_regret": TARGET_MAX_REGRET, "min_search_cost_ratio": TARGET_MIN_COST_RATIO},
        "environment": dict(environment),
    })


def _mars_extract(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Extract the parts of a search summary that explain its choice: laws, pruning, probes, costs."""
    return {
        "run_name": summary["run_name"],
        "chosen": summary["chosen"],
        "fallback_reason": summary.get("fallback_reason"),
        "candidates_after_pruning": summary["candidates_after_pruning"],
        "predicted_val_loss": summary["final"].get("predicted_val_loss"),
        "predicted_val_loss_se": summary["final"].get("predicted_val_loss_se"),
        "laws": summary["laws"],
        "probes": {key: summary["probes"][key] for key in ("total", "trained", "cached", "failed")},
        "cost": summary["cost"],
        "mlflow_run_id": summary["mlflow"]["run_id"],
        "summary_path": summary["paths"]["summary"],
    }


def _frozen(ranks: Mapping[str, int]) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((str(m), int(r)) for m, r in ranks.items()))


def _json_ready(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value
