"""MARS against its baselines as one Prefect flow: ``mars-benchmark``.

The flow runs the MARS search (the ``mars-search`` flow, so every stage
shares its cache with ``mars run``), then each chosen baseline at the MARS
final budget, and writes ``benchmark.json``, ``benchmark.md`` and plots to
``<workdir>/benchmarks/<name>/``.

MARS runs whenever a baseline needs it: AdaLoRA matches the MARS pair's
parameters, and with ``final.budget: auto`` every baseline trains for the
MARS final run's samples. Its row appears only when ``mars`` is among the
methods.

In MLflow the benchmark is one parent run with a child per method: the
search's own run is moved under it, and each baseline flow opens its run there.
The comparison table is logged on the parent as ``comparison.json`` (an
MLflow table) beside the report's files.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run

from flows import baselines, tasks
from flows.runner import run_search
from flows.stages import TrackingContext, unwrap
from flows.tracking import Tracker, default_tracking_uri, git_commit
from mars_core.benchmark import (
    METHODS,
    GridPoint,
    MethodResult,
    add_predictions,
    build_benchmark,
    write_report,
)
from mars_core.config import MarsConfig

log = logging.getLogger("mars")


def check_methods(methods: list[str] | tuple[str, ...] | None) -> list[str]:
    """Return the requested methods in benchmark order; raise ValueError naming any unknown one."""
    if methods is None:
        return list(METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown or not methods:
        raise ValueError(f"unknown benchmark method(s) {unknown or methods}; choose from {list(METHODS)}")
    return [method for method in METHODS if method in methods]


@flow(name="mars-benchmark", log_prints=False)
def mars_benchmark(
    config: dict[str, Any],
    methods: list[str] | None = None,
    run_name: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run MARS and the chosen baselines on one configuration and compare them; return ``benchmark.json``'s content."""
    cfg = MarsConfig.model_validate(config)
    methods = check_methods(methods)
    name = run_name or f"benchmark-{cfg.digest()[:10]}"
    out_dir = Path(cfg.runtime.workdir).resolve() / "benchmarks" / name
    tracker, parent = _start_tracking(cfg, name, methods)
    started, load_start = time.perf_counter(), _load_average()
    log.info("benchmark %s: methods %s", name, ", ".join(methods))

    try:
        summary = None
        if "mars" in methods or "adalora" in methods or cfg.final.budget == "auto":
            summary = _run_mars(cfg, name, tracker, parent, progress)
        budget = summary["final"]["samples"] if summary else _epochs_budget(cfg, tracker, parent)

        rows = [mars_row(summary)] if "mars" in methods else []
        grid_points = None
        common = {"config": cfg.model_dump(mode="json"), "budget_samples": budget, "parent_run_id": parent,
                  "progress": progress}
        if "uniform" in methods:
            rows += _rows(baselines.with_parallelism(baselines.uniform_baseline, cfg)(**common))
        if "differential-lr" in methods:
            rows += _rows(baselines.with_parallelism(baselines.differential_lr_baseline, cfg)(**common))
        if "adalora" in methods:
            rows += _rows(baselines.adalora_baseline(reference_ranks=summary["chosen"], **common))
        if "grid" in methods:
            grid = baselines.with_parallelism(baselines.grid_baseline, cfg)(**common)
            rows += _rows(grid["rows"])
            grid_points = [GridPoint(**point) for point in grid["points"]]
            if summary is not None:
                add_predictions(grid_points, _selection_candidates(summary))

        environment = {
            "machine": _machine(),
            "load_average_start": load_start,
            "load_average_end": _load_average(),
            "wall_seconds": time.perf_counter() - started,
            "git_commit": git_commit(),
            "prefect_flow_run_id": str(flow_run.id),
            "mlflow_run_id": parent,
            "tracking_uri": tracker.tracking_uri,
        }
        benchmark = build_benchmark(
            name=name, modules=cfg.lora.modules, budget_samples=budget, grid_size=len(baselines.grid_pairs(cfg)),
            rows=rows, grid=grid_points, mars_summary=summary if "mars" in methods else None, environment=environment,
        )
        paths = write_report(benchmark, out_dir)
        _record(tracker, parent, benchmark, paths)
    except BaseException:
        tracker.finish(parent, "FAILED")
        raise
    tracker.finish(parent, "FINISHED")
    log.info("benchmark %s: done in %.0f s; report in %s", name, time.perf_counter() - started, out_dir)
    return benchmark


def mars_row(summary: dict[str, Any]) -> MethodResult:
    """Build the MARS row of the comparison from a search summary, with probes plus the final run as its cost."""
    final, cost = summary["final"], summary["cost"]
    return MethodResult(
        name="mars", method="mars", ranks=dict(summary["chosen"]), val_loss=final["val_loss"],
        test_loss=final["test_loss"], test_accuracy=final["test_accuracy"],
        wall_seconds=cost["probe_seconds"] + cost["final_seconds"],
        samples=cost["probe_samples"] + cost["final_samples"], trainable_params=final["trainable_params"],
        details={"predicted_val_loss": final.get("predicted_val_loss"), "probe_seconds": cost["probe_seconds"],
                 "final_seconds": cost["final_seconds"], "final_cached": final.get("cached"),
                 "fallback_reason": summary.get("fallback_reason")},
    )


def _run_mars(cfg: MarsConfig, name: str, tracker: Tracker, parent: str, progress: bool) -> dict[str, Any]:
    summary = run_search(cfg, run_name=f"{name}-mars", progress=progress)
    tracker.nest_under(summary["mlflow"]["run_id"], parent)
    tracker.set_tags(summary["mlflow"]["run_id"], {baselines.TAG_METHOD: "mars"})
    return summary


def _selection_candidates(summary: dict[str, Any]) -> list[dict[str, Any]]:
    return json.loads(Path(summary["paths"]["selection"]).read_text())["candidates"]


def _rows(dicts: list[dict[str, Any]]) -> list[MethodResult]:
    return [MethodResult.from_dict(row) for row in dicts]


def _epochs_budget(cfg: MarsConfig, tracker: Tracker, parent: str) -> int:
    """Compute the ``final.epochs`` budget in samples, for a benchmark that does not run MARS."""
    track = TrackingContext(tracker.tracking_uri, cfg.tracking.experiment, parent, {"prefect.flow_run_id": str(flow_run.id)})
    dataset = unwrap(track, tasks.prepare_dataset(cfg, track), "dataset")
    return baselines.resolve_budget(cfg, None, dataset.n_train)


def _start_tracking(cfg: MarsConfig, name: str, methods: list[str]) -> tuple[Tracker, str]:
    workdir = Path(cfg.runtime.workdir).resolve()
    tracker = Tracker(default_tracking_uri(workdir), cfg.tracking.experiment, artifact_root=workdir / "mlflow-artifacts")
    tags = {"prefect.flow_run_id": str(flow_run.id), "git.commit": git_commit(), "mars.benchmark": name}
    parent = tracker.start_run(name, tags=tags)
    tracker.log_params(parent, {**cfg.model_dump(mode="json"), "benchmark": {"methods": methods}})
    return tracker, parent


def _record(tracker: Tracker, parent: str, benchmark: dict[str, Any], paths: list[Path]) -> None:
    rows = [row for row in benchmark["rows"] if row["status"] == "ok"]
    columns = ("name", "val_loss", "test_loss", "test_accuracy", "wall_seconds", "samples", "trainable_params")
    tracker.log_table(parent, {column: [row[column] for row in rows] for column in columns}, "comparison.json")
    for path in paths:
        tracker.log_artifact(parent, path)
    comparison = benchmark.get("mars_vs_grid") or {}
    tracker.log_metrics(parent, {key: comparison.get(key) for key in
                                 ("regret", "place", "search_cost_ratio", "search_cost_ratio_samples", "spearman")})


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} {platform.release()}"


def _load_average() -> str:
    try:
        return ", ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"
