"""Benchmark figures: regret, place, cost ratio, Spearman, AdaLoRA matching, results and the report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from mars_core.benchmark import (
    GridPoint,
    MethodResult,
    adalora_params,
    add_predictions,
    best_grid_point,
    build_benchmark,
    compare_with_grid,
    cost_ratio,
    count_adapter_params,
    match_adalora_rank,
    place_among,
    regret,
    spearman,
    write_report,
)

MODULES = ["vision", "llm"]


def test_regret_is_relative_excess_loss():
    assert regret(1.02, 1.0) == pytest.approx(0.02)
    assert regret(1.0, 1.0) == 0.0
    assert regret(0.9, 1.0) == pytest.approx(-0.1)


@pytest.mark.parametrize("loss, best", [(1.0, 0.0), (1.0, -1.0), (math.nan, 1.0), (1.0, math.inf)])
def test_regret_rejects_invalid_losses(loss, best):
    with pytest.raises(ValueError, match="regret needs"):
        regret(loss, best)


def test_place_counts_strictly_lower_losses():
    losses = [0.5, 0.7, 0.7, 0.9]
    assert place_among(0.5, losses) == 1
    assert place_among(0.7, losses) == 2
    assert place_among(0.8, losses) == 4
    assert place_among(1.0, losses) == 5


def test_place_ignores_missing_and_nan_losses():
    assert place_among(0.6, [0.5, None, math.nan, 0.7]) == 2


def test_place_without_losses_is_rejected():
    with pytest.raises(ValueError, match="at least one finite loss"):
        place_among(0.5, [None, math.nan])


def test_cost_ratio_divides_grid_by_mars():
    assert cost_ratio(1000.0, 50.0) == pytest.approx(20.0)


def test_cost_ratio_rejects_zero_mars_cost():
    with pytest.raises(ValueError, match="must be positive"):
        cost_ratio(1000.0, 0.0)


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    predicted = rng.normal(size=20).tolist()
    realised = (np.array(predicted) + rng.normal(scale=0.5, size=20)).tolist()
    value, reason = spearman(predicted, realised)
    assert reason is None
    assert value == pytest.approx(stats.spearmanr(predicted, realised).statistic)


def test_spearman_of_monotone_sequences_is_one():
    value, _ = spearman([1.0, 2.0, 3.0, 4.0], [0.1, 0.5, 0.6, 2.0])
    assert value == pytest.approx(1.0)
    value, _ = spearman([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0])
    assert value == pytest.approx(-1.0)


def test_spearman_of_constant_prediction_is_undefined():
    value, reason = spearman([0.82] * 5, [0.9, 0.8, 0.7, 0.85, 0.75])
    assert value is None
    assert "constant" in reason


def test_spearman_leaves_out_missing_pairs():
    value, reason = spearman([1.0, None, 3.0, 4.0, 5.0], [1.0, 2.0, math.nan, 3.0, 5.0])
    assert reason is None
    assert value == pytest.approx(1.0)


def test_spearman_with_two_pairs_is_undefined():
    value, reason = spearman([1.0, 2.0], [1.0, 2.0])
    assert value is None
    assert "3 are needed" in reason


def test_adalora_params_counts_factors_and_singular_values():
    # Two layers of 64x64 and one of 128x64: widths 128 + 128 + 192, one singular value per rank and layer.
    assert adalora_params(4, 1000, 448, 3) == 1000 + 4 * (448 + 3)


def test_adalora_match_picks_nearest_rank():
    fixed, widths, layers = 10_000, 2_000, 20
    reference = fixed + 9 * (widths + layers) + 300  # a bit above rank 9
    match = match_adalora_rank(reference, fixed, widths, layers)
    assert match.target_rank == 9
    assert match.matched_params == adalora_params(9, fixed, widths, layers)
    assert match.relative_gap == pytest.approx(match.matched_params / reference - 1)


def test_adalora_match_rounds_up_when_nearer():
    fixed, widths, layers = 0, 1_000, 10
    match = match_adalora_rank(fixed + 5 * 1_010 + 900, fixed, widths, layers)
    assert match.target_rank == 6


def test_adalora_match_never_goes_below_rank_one():
    match = match_adalora_rank(100, 90, 1_000, 10)
    assert match.target_rank == 1


def test_adalora_match_without_layers_is_rejected():
    with pytest.raises(ValueError, match="needs adapted layers"):
        match_adalora_rank(1000, 0, 0, 0)


def test_count_adapter_params_reads_safetensors(tmp_path):
    from safetensors.numpy import save_file

    save_file({"a": np.zeros((4, 8), dtype=np.float32), "b": np.zeros((3,), dtype=np.float32)},
              str(tmp_path / "adapter_model.safetensors"))
    assert count_adapter_params(tmp_path) == 35


def test_count_adapter_params_without_weights_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors"):
        count_adapter_params(tmp_path)


# ---------------------------------------------------------------- results and report


def _grid(losses: dict[tuple[int, int], float]) -> list[GridPoint]:
    return [
        GridPoint(ranks={"vision": v, "llm": l}, val_loss=loss, wall_seconds=10.0, samples=100,
                  trainable_params=1000 + 10 * (v + l))
        for (v, l), loss in losses.items()
    ]


def _mars_row(loss: float) -> MethodResult:
    return MethodResult(name="mars", method="mars", ranks={"vision": 4, "llm": 2}, val_loss=loss, test_loss=loss,
                        test_accuracy=0.5, wall_seconds=5.0, samples=40, trainable_params=1060)


LOSSES = {(2, 2): 1.00, (2, 4): 0.95, (4, 2): 0.90, (4, 4): 0.92}


def test_best_grid_point_skips_failed_pairs():
    points = _grid(LOSSES) + [GridPoint(ranks={"vision": 8, "llm": 8}, val_loss=None, wall_seconds=None,
                                        samples=None, trainable_params=None, status="failed")]
    assert best_grid_point(points).ranks == {"vision": 4, "llm": 2}


def test_add_predictions_copies_by_ranks():
    points = _grid(LOSSES)
    candidates = [{"ranks": {"llm": l, "vision": v}, "predicted_loss": 0.1 * v + l, "kept": v == 4}
                  for (v, l) in LOSSES]
    add_predictions(points, candidates)
    by_ranks = {(p.ranks["vision"], p.ranks["llm"]): p for p in points}
    assert by_ranks[(4, 2)].predicted_loss == pytest.approx(2.4)
    assert by_ranks[(4, 2)].kept_by_pruning is True
    assert by_ranks[(2, 2)].kept_by_pruning is False


def test_compare_with_grid_reports_every_figure():
    points = _grid(LOSSES)
    add_predictions(points, [{"ranks": {"vision": v, "llm": l}, "predicted_loss": LOSSES[(v, l)] + 0.01,
                              "kept": True} for (v, l) in LOSSES])
    comparison = compare_with_grid(_mars_row(0.915), {"seconds": 8.0, "samples": 50}, points, MODULES)
    assert comparison["regret"] == pytest.approx(0.915 / 0.90 - 1)
    assert comparison["place"] == 2
    assert comparison["search_cost_ratio"] == pytest.approx(40.0 / 8.0)
    assert comparison["search_cost_ratio_samples"] == pytest.approx(400 / 50)
    assert comparison["spearman"] == pytest.approx(1.0)
    assert comparison["grid_best"]["ranks"] == {"vision": 4, "llm": 2}
    assert comparison["meets_targets"] == {"regret": True, "search_cost_ratio": False}


def test_benchmark_json_and_report_files(tmp_path):
    points = _grid(LOSSES)
    add_predictions(points, [{"ranks": {"vision": v, "llm": l}, "predicted_loss": 0.9, "kept": v == 2}
                             for (v, l) in LOSSES])
    summary = {
        "run_name": "b-mars", "chosen": {"vision": 4, "llm": 2}, "fallback_reason": None,
        "candidates_after_pruning": 2,
        "final": {"predicted_val_loss": 0.9, "predicted_val_loss_se": 0.01},
        "laws": {"convergence": {}, "performance": {"form": "base", "r2": 0.5, "loo_rel_error": 0.1, "points_used": 6}},
        "probes": {"total": 14, "trained": 14, "cached": 0, "failed": 0},
        "cost": {"probe_seconds": 6.0, "final_seconds": 2.0, "probe_samples": 40, "final_samples": 10},
        "mlflow": {"run_id": "abc"}, "paths": {"summary": "/x/summary.json"},
    }
    rows = [_mars_row(0.95), MethodResult.not_run("uniform r=128", "uniform", None, "skipped", "above the cap")]
    benchmark = build_benchmark(name="b", modules=MODULES, budget_samples=100, grid_size=4, rows=rows, grid=points,
                                mars_summary=summary, environment={"machine": "test"})
    comparison = benchmark["mars_vs_grid"]
    # Law-P predicts one value everywhere here, so its rank correlation is undefined.
    assert comparison["spearman"] is None
    assert "constant" in comparison["spearman_undefined_reason"]
    assert comparison["best_kept_pair"] == "vision=2,llm=4"

    paths = write_report(benchmark, tmp_path)
    names = sorted(path.name for path in paths)
    assert names == ["benchmark.json", "benchmark.md", "cost_vs_loss.png", "grid_heatmaps.png"]
    assert json.loads((tmp_path / "benchmark.json").read_text()) == benchmark
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "| mars |" in markdown
    assert "skipped: above the cap" in markdown
    assert "pruned by Law-T alignment" in markdown
    assert not list(tmp_path.glob(".*"))


def test_benchmark_without_grid_estimates_cost_ratio():
    summary = {
        "run_name": "b-mars", "chosen": {"vision": 4, "llm": 2}, "candidates_after_pruning": 2, "final": {},
        "laws": {"performance": {}}, "probes": {"total": 1, "trained": 1, "cached": 0, "failed": 0},
        "cost": {"probe_seconds": 6.0, "final_seconds": 2.0, "probe_samples": 40, "final_samples": 10},
        "mlflow": {"run_id": "abc"}, "paths": {"summary": "/x/summary.json"},
    }
    benchmark = build_benchmark(name="b", modules=MODULES, budget_samples=10, grid_size=49, rows=[_mars_row(0.9)],
                                grid=None, mars_summary=summary, environment={})
    comparison = benchmark["mars_vs_grid"]
    assert comparison["cost_basis"].startswith("estimate")
    assert comparison["search_cost_ratio"] == pytest.approx(49 * 2.0 / 8.0)
    assert comparison["regret"] is None
