"""The run summary: every key figure of one search in one JSON-ready dict.

``summary.json`` is what `mars show` prints and what scripts read, so its
keys are stable: ``chosen``, ``laws``, ``candidates_after_pruning``,
``probes``, ``final``, ``cost``, ``mlflow``, ``prefect`` and
``fallback_reason`` at least.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mars_core.config import MarsConfig
from mars_core.data import DatasetInfo
from mars_core.model import BaseModelInfo
from mars_core.search import Selection


def build_summary(
    *,
    cfg: MarsConfig,
    run_name: str,
    run_dir: Path,
    dataset: DatasetInfo,
    base: BaseModelInfo,
    selection: Selection,
    probe_stats: list[dict[str, Any]],
    final: dict[str, Any],
    final_cached: bool,
    evaluation: dict[str, Any],
    tracking: dict[str, Any],
    prefect: dict[str, Any],
    wall_seconds: float,
) -> dict[str, Any]:
    """Assemble the summary of a finished search from the values its stages returned."""
    law_p = selection.law_p
    totals = {key: sum(stats[key] for stats in probe_stats) for key in ("total", "trained", "cached", "failed")}
    summary = {
        "run_name": run_name,
        "modules": list(selection.chosen),
        "chosen": dict(selection.chosen),
        "fallback_reason": selection.fallback_reason,
        "candidates_after_pruning": sum(1 for c in selection.candidates if c.kept),
        "tied_candidates": sum(1 for c in selection.candidates if c.tie),
        "laws": {
            "convergence": {
                module: {
                    "params": dict(law.params),
                    "r2": law.r2_log,
                    "loo_rel_error": law.loo_relative_error,
                    "points_used": law.points_used,
                    "points_left_out": dict(law.points_left_out),
                }
                for module, law in selection.law_t.laws.items()
            },
            "performance": {
                "form": None if law_p is None else law_p.form,
                "params": {} if law_p is None else dict(law_p.params),
                "r2": None if law_p is None else law_p.r2,
                "loo_rel_error": None if law_p is None else law_p.loo_relative_error,
                "points_used": 0 if law_p is None else law_p.points_used,
            },
        },
        "probes": {**totals, "by_family": {stats["family"]: stats for stats in probe_stats}},
        "final": {
            "ranks": dict(selection.chosen),
            "trainable_params": final["trainable_params"],
            "val_loss": final["val_loss"],
            "predicted_val_loss": selection.chosen_predicted_loss,
            "predicted_val_loss_se": selection.chosen_loss_se,
            "test_loss": evaluation["loss"],
            "test_perplexity": evaluation["perplexity"],
            "test_accuracy": evaluation["accuracy"],
            "test_per_type": evaluation.get("per_type", {}),
            "samples": final["samples"],
            "cached": final_cached,
        },
        "cost": {
            "probe_seconds": sum(stats["seconds"] for stats in probe_stats),
            "probe_samples": sum(stats["samples"] for stats in probe_stats),
            "final_seconds": final["seconds"],
            "final_samples": final["samples"],
            "flow_wall_seconds": wall_seconds,
        },
        "dataset": {
            "fingerprint": dataset.fingerprint,
            "path": dataset.path,
            "n_train": dataset.n_train,
            "n_val": dataset.n_val,
            "n_test": dataset.n_test,
        },
        "base_model": {"name": base.name, "fingerprint": base.fingerprint, "path": base.path},
        "mlflow": tracking,
        "prefect": prefect,
        "paths": {
            "run_dir": str(run_dir),
            "summary": str(run_dir / "summary.json"),
            "selection": str(run_dir / "selection.json"),
            "probe_table": str(run_dir / "probes.parquet"),
            "adapter": str(run_dir / "adapter"),
        },
        "config_digest": cfg.digest(),
    }
    return _finite_or_none(summary)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value
