"""The ``mars`` command.

It lives in ``flows`` because ``mars run`` launches the Prefect flow. Prefect
reads its settings at import time, so the flow modules are imported only
after :func:`flows.services.configure_services` has pointed Prefect at the
work directory.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mars_core.config import MarsConfig, describe_defaults, load_config

log = logging.getLogger("mars")

EXIT_BAD_INPUT = 2


class InputError(Exception):
    """Bad input from the user: reported in one message with exit status 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return args.handler(args)
    except InputError as exc:
        print(f"mars: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("mars: interrupted; finished stages are cached and a rerun resumes from them", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mars",
        description="MARS: one LoRA rank per module of a multimodal LLM, chosen from probe fine-tunes and two fitted laws.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="also show Prefect's own log lines")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole search, final training and evaluation as a Prefect flow")
    run.add_argument("--config", type=Path, help="YAML configuration (defaults: the embedded demo)")
    run.add_argument("--workdir", type=Path, help="work directory (overrides runtime.workdir)")
    run.add_argument("--run-name", help="name of the run folder and MLflow run (default: from the configuration hash)")
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides, e.g. probes.max_rank=64")
    run.set_defaults(handler=_cmd_run)

    fit = sub.add_parser("fit", help="fit the laws and select ranks from an existing probe table")
    fit.add_argument("--probes", type=Path, required=True, help="probe table, Parquet or CSV")
    fit.add_argument("--target-n-train", type=int, required=True, help="Dstar: training examples of the final run")
    fit.add_argument("--config", type=Path, help="YAML configuration for the search options")
    fit.add_argument("--tolerance", type=float, help="alignment tolerance (default 0.25)")
    fit.add_argument("--min-rank", type=int, help="smallest rank of the grid (default 2)")
    fit.add_argument("--max-rank", type=int, help="largest rank of the grid (default 128)")
    fit.add_argument("--max-trainable-params", type=int, help="drop candidates above this trainable parameter count")
    fit.add_argument("--out", type=Path, default=Path("mars-fit"), help="output folder (default: mars-fit)")
    fit.set_defaults(handler=_cmd_fit)

    show = sub.add_parser("show", help="print the summary of a finished run")
    show.add_argument("run", help="run name, run folder, or path to summary.json")
    show.add_argument("--workdir", type=Path, default=Path("mars-work"), help="work directory (default: mars-work)")
    show.add_argument("--json", action="store_true", help="print the raw summary.json")
    show.set_defaults(handler=_cmd_show)

    config = sub.add_parser("config", help="print the configuration")
    config.add_argument("--defaults", action="store_true", help="every option with its default and description")
    config.add_argument("--config", type=Path, help="YAML configuration to resolve and print")
    config.add_argument("overrides", nargs="*", metavar="key=value")
    config.set_defaults(handler=_cmd_config)

    from flows.benchmark_cli import add_benchmark_parser
    from flows.deploy import add_deploy_parser
    from flows.inspect_cmd import add_inspect_parser
    from flows.lineage import add_lineage_parser

    add_deploy_parser(sub)
    add_lineage_parser(sub)
    add_inspect_parser(sub)
    add_benchmark_parser(sub)
    # `mars run -v` as well as `mars -v run`: SUPPRESS leaves the top-level value when the flag is absent.
    for subparser in sub.choices.values():
        subparser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                               help="also show Prefect's own log lines and the traceback of a failure")
    return parser


class _HidePrefectFailures(logging.Filter):
    """Filter that keeps Prefect's failure records off the terminal, where `mars: error:` reports them once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.name.startswith("prefect") and record.levelno >= logging.ERROR)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not verbose:
        # Prefect logs every task state change; the stage lines from `mars` report the same more briefly.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        for noisy in ("prefect", "mlflow", "alembic", "httpx"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        # A failed task and its flow each log the traceback; Prefect's own run log still records them.
        for handler in logging.getLogger().handlers:
            if not any(isinstance(existing, _HidePrefectFailures) for existing in handler.filters):
                handler.addFilter(_HidePrefectFailures())


def _validation_problem(err: dict) -> str:
    """Format one pydantic error as `field: message`, without pydantic's "Value error, " prefix."""
    message = err["msg"].removeprefix("Value error, ")
    where = ".".join(str(part) for part in err["loc"])
    return f"{where}: {message}" if where else message


def _resolve_config(path: Path | None, overrides: list[str]) -> MarsConfig:
    try:
        return load_config(path, overrides)
    except FileNotFoundError as exc:
        raise InputError(str(exc)) from exc
    except ValidationError as exc:
        problems = "; ".join(_validation_problem(err) for err in exc.errors())
        if path and overrides:
            source = f"{path} with the overrides {' '.join(overrides)}"
        else:
            source = f"{path}" if path else "the overrides"
        raise InputError(f"invalid configuration in {source}: {problems}. See `mars config --defaults`.") from exc
    except ValueError as exc:
        raise InputError(str(exc)) from exc


def prepare_run(config_path: Path | None, workdir: Path | None, overrides: list[str]) -> MarsConfig:
    """Resolve the configuration of a run and point Prefect and MLflow at its work directory.

    Call it before importing any module that imports Prefect.
    """
    overrides = list(overrides)
    if workdir is not None:
        overrides.append(f"runtime.workdir={workdir}")
    cfg = _resolve_config(config_path, overrides)
    resolved = Path(cfg.runtime.workdir).resolve()
    cfg.runtime.workdir = str(resolved)

    from flows.services import configure_services, quiet_libraries

    configure_services(resolved)
    quiet_libraries()
    return cfg


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = prepare_run(args.config, args.workdir, args.overrides)
    workdir = Path(cfg.runtime.workdir)
    from flows.runner import run_search  # imports prefect: after prepare_run

    try:
        summary = run_search(cfg, run_name=args.run_name, progress=not args.no_progress)
    except Exception as exc:  # the flow has logged the traceback and marked its runs failed
        hint = "" if args.verbose else " Add -v to see the traceback."
        print(
            f"mars: error: the search failed: {type(exc).__name__}: {exc}\n"
            f"Stages that finished are cached under {workdir}: fix the cause and rerun the same command to "
            f"resume from them.{hint}",
            file=sys.stderr,
        )
        return 1
    print(format_summary(summary))
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    overrides = []
    if args.tolerance is not None:
        overrides.append(f"search.tolerance={args.tolerance}")
    if args.min_rank is not None:
        overrides.append(f"probes.min_rank={args.min_rank}")
    if args.max_rank is not None:
        overrides.append(f"probes.max_rank={args.max_rank}")
    if args.max_trainable_params is not None:
        overrides.append(f"search.max_trainable_params={args.max_trainable_params}")
    cfg = _resolve_config(args.config, overrides)
    if args.target_n_train < 1:
        raise InputError(f"--target-n-train={args.target_n_train} must be a positive number of training examples")

    from mars_core.search import ProbeTableError, fit_from_table, format_candidate_table

    try:
        selection = fit_from_table(args.probes, args.target_n_train, cfg.lora.modules, cfg.probes, cfg.search, args.out)
    except ProbeTableError as exc:
        raise InputError(str(exc)) from exc
    print(format_candidate_table(selection))
    print(f"\nwrote {args.out / 'selection.json'} and plots in {args.out}/")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    path = _find_summary(args.run, args.workdir)
    summary = json.loads(path.read_text())
    print(json.dumps(summary, indent=2, sort_keys=True) if args.json else format_summary(summary))
    return 0


def _cmd_config(args: argparse.Namespace) -> int:
    if args.defaults:
        print(describe_defaults(), end="")
        return 0
    import yaml

    cfg = _resolve_config(args.config, args.overrides)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def _find_summary(run: str, workdir: Path) -> Path:
    candidates = [Path(run), Path(run) / "summary.json", workdir / "runs" / run / "summary.json"]
    for path in candidates:
        if path.is_file():
            return path
    runs = sorted(p.name for p in (workdir / "runs").glob("*") if (p / "summary.json").is_file())
    known = ", ".join(runs) if runs else "none"
    raise InputError(
        f"no summary found for run {run!r} under {workdir}/runs (runs with a summary: {known}); "
        "for a run in another work directory, pass --workdir"
    )


def format_summary(summary: dict[str, Any]) -> str:
    """Render the key figures of a run for the terminal."""
    chosen = summary["chosen"]
    final = summary["final"]
    probes = summary["probes"]
    cost = summary["cost"]
    # summary.json is written with sorted keys, so the module order comes from its `modules` list.
    modules = summary.get("modules") or list(chosen)
    ranks = ", ".join(f"{module} {chosen[module]}" for module in modules)
    lines = [
        "",
        f"MARS run {summary['run_name']}",
        f"  chosen ranks        {ranks}" + ("   (fallback: search.default_ranks)" if summary.get("fallback_reason") else ""),
        *([f"  fallback reason     {summary['fallback_reason']}"] if summary.get("fallback_reason") else []),
        f"  candidates          {summary['candidates_after_pruning']} aligned after pruning" + _tie_note(summary),
        f"  probes              {probes['total']} total: {probes['trained']} trained, {probes['cached']} cached, {probes['failed']} failed",
    ]
    convergence = summary["laws"]["convergence"]
    for module in [m for m in modules if m in convergence]:
        law = convergence[module]
        label = f"Law-T {module}"
        lines.append(f"  {label:<19} R^2 {_fmt(law.get('r2'))}   LOO rel. error {_fmt(law.get('loo_rel_error'))}")
    perf = summary["laws"]["performance"]
    label = f"Law-P ({perf.get('form', 'base')})"
    lines.append(f"  {label:<19} R^2 {_fmt(perf.get('r2'))}   LOO rel. error {_fmt(perf.get('loo_rel_error'))}")
    lines += [
        f"  validation loss     {_fmt(final['val_loss'])} (Law-P predicted {_fmt(final['predicted_val_loss'])})",
        f"  test loss           {_fmt(final['test_loss'])}   accuracy {_fmt(final['test_accuracy'])}",
        f"  cost                probes {cost['probe_seconds']:.0f} s / {cost['probe_samples']} samples, "
        f"final {cost['final_seconds']:.0f} s / {cost['final_samples']} samples",
        "",
        f"  summary   {summary['paths']['summary']}",
        f"  adapter   {summary['paths']['adapter']}",
        f"  plots     {summary['paths']['run_dir']}/*.png",
        f"  MLflow    mlflow ui --backend-store-uri {summary['mlflow']['tracking_uri']}   (run {summary['mlflow']['run_id']})",
    ]
    return "\n".join(lines)


def _tie_note(summary: dict[str, Any]) -> str:
    tied = summary.get("tied_candidates") or 0
    if tied < 2:
        return ""
    return f"; {tied} tie within Law-P's standard error, so the fewest trainable parameters decided"


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value + 0.0:.4f}".replace("-0.0000", "0.0000")


if __name__ == "__main__":
    sys.exit(main())
