"""``mars benchmark``: MARS against uniform rank, differential learning rate, AdaLoRA and grid search.

This module only registers the subcommand. The flow lives in
``flows.benchmark``, which imports Prefect, and Prefect must be imported
after :func:`flows.services.configure_services` has pointed it at the work
directory, so the flow is imported inside the handler.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The same as mars_core.benchmark.METHODS (a test checks it), written out so that
# registering the subcommand does not import scipy and matplotlib.
METHODS = ("mars", "uniform", "differential-lr", "adalora", "grid")


def add_benchmark_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``mars benchmark`` on the CLI's subparsers."""
    bench = subparsers.add_parser(
        "benchmark",
        help="compare MARS with uniform rank, differential learning rate, AdaLoRA and the full grid",
        description=(
            "Run MARS and the chosen baselines on one configuration, each at the MARS final budget, and write "
            "benchmark.json, benchmark.md and plots to <workdir>/benchmarks/<run name>/. Finished stages are "
            "cached: a rerun, or a benchmark after `mars run` with the same configuration, reuses them."
        ),
    )
    bench.add_argument("--config", type=Path, help="YAML configuration (defaults: the embedded demo)")
    bench.add_argument("--workdir", type=Path, help="work directory (overrides runtime.workdir)")
    bench.add_argument(
        "--methods", type=_method_list, action="extend", metavar="METHOD[,METHOD...]",
        help=f"methods to compare, comma-separated, any of {','.join(METHODS)} (default: all)",
    )
    bench.add_argument("--run-name", help="name of the report folder and MLflow run (default: from the configuration hash)")
    bench.add_argument("--no-progress", action="store_true", help="hide progress bars")
    bench.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides, e.g. probes.max_rank=64")
    bench.set_defaults(handler=_cmd_benchmark)
    return bench


def _method_list(text: str) -> list[str]:
    methods = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"invalid method(s) {unknown or text!r}; choose from {','.join(METHODS)}, e.g. --methods mars,grid"
        )
    return methods


def _cmd_benchmark(args: argparse.Namespace) -> int:
    # Imported here: flows.cli imports this module to register the subcommand.
    from flows.cli import prepare_run

    cfg = prepare_run(args.config, args.workdir, args.overrides)
    workdir = Path(cfg.runtime.workdir)
    from flows.benchmark import mars_benchmark  # imports prefect: after prepare_run
    from mars_core.benchmark import format_table

    try:
        benchmark = mars_benchmark(
            config=cfg.model_dump(mode="json"), methods=args.methods or list(METHODS), run_name=args.run_name,
            progress=not args.no_progress,
        )
    except Exception as exc:  # the flow has logged the traceback and marked its runs failed
        print(
            f"mars: error: the benchmark failed: {type(exc).__name__}: {exc}\n"
            f"Finished stages are cached under {workdir}; rerun the same command to resume from them.",
            file=sys.stderr,
        )
        return 1

    report_dir = workdir / "benchmarks" / benchmark["name"]
    print(format_table(benchmark))
    comparison = benchmark.get("mars_vs_grid")
    if comparison and comparison.get("regret") is not None:
        spearman = comparison.get("spearman")
        print(
            f"\nMARS against the grid: regret {100 * comparison['regret']:.2f}%, place {comparison['place']} of "
            f"{comparison['grid_finished']}, search cost ratio {comparison['search_cost_ratio']:.1f}x (seconds), "
            f"Spearman {'n/a' if spearman is None else f'{spearman:.3f}'}"
        )
    print(f"\nreport    {report_dir / 'benchmark.md'}\nresults   {report_dir / 'benchmark.json'}")
    return 0
