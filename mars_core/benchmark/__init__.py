"""MARS against the baselines it replaces: metrics, AdaLoRA matching, results and the report.

This package needs numpy, scipy, safetensors and matplotlib only: it
imports neither torch, Prefect nor MLflow, so a ``benchmark.json`` can be
re-analysed anywhere.
"""

from .metrics import (
    AdaLoraMatch,
    adalora_final_ranks,
    adalora_params,
    cost_ratio,
    count_adapter_params,
    match_adalora_rank,
    place_among,
    ranks_key,
    regret,
    spearman,
)
from .report import BENCHMARK_JSON, BENCHMARK_MD, COST_PNG, HEATMAP_PNG, format_table, write_report
from .results import (
    METHODS,
    TARGET_MAX_REGRET,
    TARGET_MIN_COST_RATIO,
    UNIFORM_RANKS,
    VISION_LR_SCALES,
    GridPoint,
    MethodResult,
    add_predictions,
    best_grid_point,
    build_benchmark,
    compare_with_grid,
    estimate_without_grid,
)

__all__ = [
    "AdaLoraMatch", "BENCHMARK_JSON", "BENCHMARK_MD", "COST_PNG", "GridPoint", "HEATMAP_PNG", "METHODS",
    "MethodResult", "TARGET_MAX_REGRET", "TARGET_MIN_COST_RATIO", "UNIFORM_RANKS", "VISION_LR_SCALES",
    "adalora_final_ranks", "adalora_params", "add_predictions", "best_grid_point", "build_benchmark",
    "compare_with_grid", "cost_ratio", "count_adapter_params", "estimate_without_grid", "format_table",
    "match_adalora_rank", "place_among", "ranks_key", "regret", "spearman", "write_report",
]
