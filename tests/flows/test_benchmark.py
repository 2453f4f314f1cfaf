"""The benchmark flow end to end on a reduced configuration, the baselines' guards and the CLI's options."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from flows import baselines, tasks
from flows.benchmark import check_methods, mars_benchmark
from flows.benchmark_cli import METHODS as CLI_METHODS, add_benchmark_parser
from mars_core.benchmark import METHODS
from mars_core.config import MarsConfig, load_config

# Ranks 2, 4, 8 (a grid of 9 pairs), two probe ranks per module, six joint
# probes (the fewest Law-P's base form can be fitted on), 40-sample final runs.
REDUCED = [
    "probes.min_rank=2",
    "probes.max_rank=8",
    "probes.ranks_per_module=2",
    "probes.joint_probes=6",
    "probes.module_budget_samples=256",
    "probes.joint_budget_bounds=[128, 256]",
    "train.eval_every=32",
    "train.val_subset=64",
    "train.warmup_samples=32",
    # One thread per run: two threads per run are much slower when other processes share the cores.
    "train.torch_threads=1",
    "final.budget=epochs",
    "final.epochs=0.25",
    "data.max_train_examples=160",
    "runtime.retry_delay_seconds=0",
]

ROW_FIELDS = ("val_loss", "test_loss", "test_accuracy", "wall_seconds", "samples", "trainable_params")
MARS_FIELDS = ("search_cost_ratio", "search_cost_ratio_samples", "regret", "place", "spearman", "grid_best",
               "grid_seconds", "mars_seconds")
EXPECTED_ROWS = {
    "mars", "uniform r=8", "uniform r=128", "differential-lr vision lr x0.1", "differential-lr vision lr x10",
    "grid best",
}


def reduced_config(workdir: Path, base_model_path: str, *extra: str) -> MarsConfig:
    return load_config(None, [*REDUCED, f"runtime.workdir={workdir}", f"model.name_or_path={base_model_path}", *extra])


@pytest.fixture(scope="module")
def benchmark_run(tmp_path_factory, small_base_model):
    workdir = tmp_path_factory.mktemp("benchmark")
    cfg = reduced_config(workdir, small_base_model.path)
    result = mars_benchmark(config=cfg.model_dump(mode="json"), run_name="small", progress=False)
    return cfg, result


@pytest.mark.slow
def test_benchmark_runs_every_method(benchmark_run):
    _cfg, result = benchmark_run
    names = {row["name"] for row in result["rows"]}
    assert EXPECTED_ROWS <= names
    assert any(name.startswith("adalora target r=") for name in names)
    assert result["methods"] == list(METHODS)
    for row in result["rows"]:
        assert row["status"] == "ok", f"{row['name']}: {row['reason']}"
        for field in ROW_FIELDS:
            assert row[field] is not None, f"{row['name']}: {field}"
        assert row["samples"] >= 40, row["name"]


@pytest.mark.slow
def test_benchmark_compares_mars_with_grid(benchmark_run):
    _cfg, result = benchmark_run
    comparison = result["mars_vs_grid"]
    for field in MARS_FIELDS:
        assert field in comparison, field
    assert comparison["cost_basis"] == "measured"
    assert comparison["grid_size"] == 9
    assert 1 <= comparison["place"] <= 9
    assert comparison["regret"] >= 0.0
    assert comparison["search_cost_ratio"] > 0.0
    assert comparison["spearman"] is not None or comparison["spearman_undefined_reason"]
    assert len(result["grid"]) == 9
    assert all(point["predicted_loss"] is not None for point in result["grid"])


@pytest.mark.slow
def test_grid_pair_of_mars_choice_reuses_final_run(benchmark_run):
    _cfg, result = benchmark_run
    mars = next(row for row in result["rows"] if row["name"] == "mars")
    (same,) = [point for point in result["grid"] if point["ranks"] == mars["ranks"]]
    assert same["cached"] is True
    assert same["val_loss"] == pytest.approx(mars["val_loss"])
    # The uniform baseline ran before the grid, so its (8, 8) run is cached too.
    cached = [point["ranks"] for point in result["grid"] if point["cached"]]
    expected = [mars["ranks"]] if mars["ranks"] == {"vision": 8, "llm": 8} else [mars["ranks"], {"vision": 8, "llm": 8}]
    assert sorted(cached, key=str) == sorted(expected, key=str)


@pytest.mark.slow
def test_adalora_matches_mars_parameters(benchmark_run):
    _cfg, result = benchmark_run
    mars = next(row for row in result["rows"] if row["name"] == "mars")
    adalora = next(row for row in result["rows"] if row["method"] == "adalora")
    match = adalora["details"]["match"]
    assert match["reference_params"] == mars["trainable_params"]
    assert abs(match["relative_gap"]) < 0.25
    assert adalora["details"]["trained_params"] > adalora["trainable_params"]


@pytest.mark.slow
def test_benchmark_writes_report_files(benchmark_run):
    cfg, result = benchmark_run
    out_dir = Path(cfg.runtime.workdir) / "benchmarks" / "small"
    for name in ("benchmark.json", "benchmark.md", "cost_vs_loss.png", "grid_heatmaps.png"):
        assert (out_dir / name).is_file(), name
    assert json.loads((out_dir / "benchmark.json").read_text()) == result
    markdown = (out_dir / "benchmark.md").read_text()
    assert "## MARS against grid search" in markdown
    assert "| grid best |" in markdown


@pytest.mark.slow
def test_benchmark_mlflow_parent_has_child_per_method(benchmark_run):
    _cfg, result = benchmark_run
    env = result["environment"]
    client = MlflowClient(env["tracking_uri"])
    parent = client.get_run(env["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    methods = {run.data.tags.get("mars.method") for run in children}
    assert set(METHODS) <= methods
    artifacts = {artifact.path for artifact in client.list_artifacts(parent.info.run_id)}
    assert {"comparison.json", "benchmark.json", "benchmark.md", "cost_vs_loss.png"} <= artifacts
    assert parent.data.metrics["place"] == result["mars_vs_grid"]["place"]


@pytest.mark.slow
def test_uniform_rank_above_cap_is_skipped(benchmark_run):
    cfg, _result = benchmark_run
    capped = cfg.model_copy(deep=True)
    capped.search.max_trainable_params = 1
    rows = baselines.uniform_baseline(config=capped.model_dump(mode="json"), budget_samples=40, ranks=(128,),
                                      progress=False)
    assert len(rows) == 1
    assert rows[0]["status"] == "skipped"
    assert "max_trainable_params=1" in rows[0]["reason"]
    assert rows[0]["val_loss"] is None


@pytest.mark.slow
def test_failed_variant_becomes_failed_row(benchmark_run, monkeypatch):
    cfg, _result = benchmark_run

    def broken_evaluation(*args, **kwargs):
        raise RuntimeError("injected evaluation failure")

    monkeypatch.setattr(tasks, "evaluate_adapter", broken_evaluation)
    rows = baselines.differential_lr_baseline(config=cfg.model_dump(mode="json"), budget_samples=40,
                                              lr_scales=(0.5,), progress=False)
    assert len(rows) == 1
    assert rows[0]["status"] == "failed"
    assert "injected evaluation failure" in rows[0]["reason"]
    assert rows[0]["test_loss"] is None


# ---------------------------------------------------------------- guards and options, no training


def test_auto_budget_without_samples_is_rejected():
    cfg = load_config(None, ["final.budget=auto"])
    with pytest.raises(ValueError, match="pass budget_samples"):
        baselines.resolve_budget(cfg, None, 1000)


def test_epochs_budget_counts_samples():
    cfg = load_config(None, ["final.budget=epochs", "final.epochs=0.5"])
    assert baselines.resolve_budget(cfg, None, 101) == 51
    assert baselines.resolve_budget(cfg, 64, 101) == 64


def test_invalid_budget_is_rejected():
    with pytest.raises(ValueError, match="budget_samples=0"):
        baselines.resolve_budget(load_config(None, []), 0, 100)


def test_grid_pairs_cover_every_combination():
    pairs = baselines.grid_pairs(load_config(None, ["probes.min_rank=2", "probes.max_rank=8"]))
    assert len(pairs) == 9
    assert {"vision": 2, "llm": 8} in pairs
    assert len({tuple(sorted(p.items())) for p in pairs}) == 9


def test_check_methods_keeps_benchmark_order():
    assert check_methods(["grid", "mars"]) == ["mars", "grid"]
    assert check_methods(None) == list(METHODS)


def test_check_methods_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown benchmark method"):
        check_methods(["mars", "lora-ga"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mars")
    add_benchmark_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_methods_match_library():
    assert CLI_METHODS == METHODS


def test_cli_reads_methods_and_overrides():
    args = _parser().parse_args(["benchmark", "--methods", "mars,grid", "--methods", "uniform", "probes.max_rank=8"])
    assert args.methods == ["mars", "grid", "uniform"]
    assert args.overrides == ["probes.max_rank=8"]


def test_cli_defaults_to_every_method():
    args = _parser().parse_args(["benchmark"])
    assert args.methods is None


def test_cli_rejects_unknown_method(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["benchmark", "--methods", "mars,foo"])
    assert "invalid method(s) ['foo']" in capsys.readouterr().err
