"""``mars lineage``: how a finished search got its adapter, run by run.

The chain follows the data: dataset fingerprint, module probes, Law-T and
pruning, joint probes, Law-P and selection, final adapter, evaluation. Each
link names the MLflow run that recorded it and the Prefect task run that
computed it. A stage that came from the cache is recorded in the search as a
small ``(cached)`` run, whose tag ``mars.cached_from_run_id`` points to the
run that computed it, possibly in an earlier flow run. Lineage follows that
pointer, so every link ends at the run that did the work.

MLflow is imported inside the functions, so that registering the subcommand
keeps ``mars --help`` fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flows.tracking_queries import RunReader, RunRecord

# The stages of one search in data order: MLflow tag `mars.stage` and the label printed for it.
STAGES: tuple[tuple[str, str], ...] = (
    ("dataset", "dataset"),
    ("base_model", "base model"),
    ("module_probes", "module probes"),
    ("law_t", "Law-T and pruning"),
    ("joint_probes", "joint probes"),
    ("law_p", "Law-P and selection"),
    ("final_training", "final adapter"),
    ("evaluation", "evaluation"),
)
PROBE_FAMILIES = ("module_probes", "joint_probes")
_RUN_ID = re.compile(r"[0-9a-f]{32}")


@dataclasses.dataclass(frozen=True)
class Link:
    """One stage (or probe) of the chain: the run recorded in this search and, when cached, the one that computed it."""

    stage: str
    run: "RunRecord"
    origin: "RunRecord | None" = None
    failed_attempts: int = 0

    @property
    def computed_by(self) -> "RunRecord":
        return self.origin or self.run

    @property
    def cached(self) -> bool:
        return self.run.cached_from is not None


@dataclasses.dataclass(frozen=True)
class Lineage:
    """The chain of one search, from its parent MLflow run down to the evaluation."""

    root: "RunRecord"
    tracking_uri: str
    links: dict[str, Link | None]
    probes: dict[str, list[Link]]
    summary: dict[str, Any] | None = None

    @property
    def dataset_fingerprint(self) -> str | None:
        dataset = self.links.get("dataset")
        from_stage = dataset.computed_by.tags.get("mars.dataset_fingerprint") if dataset else None
        return self.root.tags.get("mars.dataset_fingerprint") or from_stage

    @property
    def adapter(self) -> str | None:
        """Return the adapter folder of the run, else the MLflow artifact URI of the final training's adapter."""
        paths = (self.summary or {}).get("paths", {})
        if paths.get("adapter"):
            return paths["adapter"]
        final = self.links.get("final_training")
        return f"{final.computed_by.artifact_uri}/adapter" if final else None

    @property
    def chosen(self) -> dict[str, int] | None:
        if self.summary and self.summary.get("chosen"):
            return self.summary["chosen"]
        raw = self.root.tags.get("mars.chosen")
        return json.loads(raw) if raw else None

    @property
    def missing(self) -> list[str]:
        return [stage for stage, _ in STAGES if self.links.get(stage) is None]


# ---------------------------------------------------------------- building the chain


def _pick(runs: list["RunRecord"]) -> tuple["RunRecord", int]:
    """Return the run to show for a stage and how many attempts of it failed.

    A retried task records one MLflow run per attempt; the last finished one is the result.
    """
    failed = sum(run.status == "FAILED" for run in runs)
    finished = [run for run in runs if run.status == "FINISHED"]
    return (finished or runs)[-1], failed


def _link(reader: "RunReader", stage: str, runs: list["RunRecord"]) -> Link:
    from flows.tracking_queries import RunNotFound

    run, failed = _pick(runs)
    origin = None
    if run.cached_from:
        try:
            origin = reader.get(run.cached_from)
        except RunNotFound:
            origin = None  # the origin run was deleted; the pointer run still names its id
    return Link(stage=stage, run=run, origin=origin, failed_attempts=failed)


def _probe_links(reader: "RunReader", family_run: "RunRecord", tree: dict[str, list["RunRecord"]]) -> list[Link]:
    by_name: dict[str, list[RunRecord]] = {}
    for run in tree.get(family_run.run_id, []):
        if run.stage == "probe":
            # Attempts of one probe share a run name; a cached pointer adds " (cached)" to it.
            by_name.setdefault(run.name.removesuffix(" (cached)"), []).append(run)
    return [_link(reader, "probe", runs) for runs in by_name.values()]


def build_lineage(reader: "RunReader", run_id: str, summary: dict[str, Any] | None = None) -> Lineage:
    """Collect the chain of the search whose parent MLflow run is ``run_id``.

    Raises
    ------
    flows.tracking_queries.RunNotFound
        When ``run_id`` does not exist at the reader's tracking URI.
    """
    root = reader.get(run_id)
    tree = reader.descendants(root)

    by_stage: dict[str, list[RunRecord]] = {}
    for run in tree.get(root.run_id, []):
        if run.stage:
            by_stage.setdefault(run.stage, []).append(run)

    links: dict[str, Link | None] = {}
    probes: dict[str, list[Link]] = {}
    for stage, _label in STAGES:
        runs = by_stage.get(stage)
        links[stage] = _link(reader, stage, runs) if runs else None
        if stage in PROBE_FAMILIES:
            probes[stage] = _probe_links(reader, links[stage].run, tree) if links[stage] else []
    return Lineage(root=root, tracking_uri=reader.tracking_uri, links=links, probes=probes, summary=summary)


# ---------------------------------------------------------------- rendering


def _ids(link: Link) -> str:
    """Render the MLflow run and Prefect task run of a link, following a cache pointer to its origin."""
    run = link.run
    text = f"mlflow {run.run_id}  task {run.task_run_id or '-'}"
    if link.cached:
        origin = link.origin
        if origin is None:
            return f"mlflow {run.run_id}  cached from mlflow {run.cached_from} (run not found)"
        text = (
            f"mlflow {run.run_id}  cached from mlflow {origin.run_id}  task {origin.task_run_id or '-'}"
            f"  flow run {origin.flow_run_id or '-'}"
        )
    if link.failed_attempts:
        text += f"  ({link.failed_attempts} failed attempt{'s' if link.failed_attempts > 1 else ''})"
    return text


def _probe_line(link: Link) -> str:
    source = link.computed_by
    probe_id = source.tags.get("mars.probe_id") or link.run.name
    status = source.tags.get("mars.probe_status") or source.status.lower()
    worker = source.tags.get("mars.worker")
    line = f"      probe {probe_id:<24} {status:<10} {_ids(link)}"
    return line + (f"  worker {worker}" if worker else "")


def _stage_detail(stage: str, lineage: Lineage) -> str:
    link = lineage.links[stage]
    source = link.computed_by
    if stage == "dataset":
        return f"fingerprint {lineage.dataset_fingerprint or '-'}"
    if stage == "base_model":
        name = source.tags.get("mars.base_model") or lineage.root.tags.get("mars.base_model") or "-"
        fingerprint = source.tags.get("mars.base_model_fingerprint")
        return name + (f" (fingerprint {fingerprint})" if fingerprint else "")
    if stage in PROBE_FAMILIES:
        probes = lineage.probes[stage]
        cached = sum(p.cached for p in probes)
        return f"{len(probes)} probes: {len(probes) - cached} trained in this run, {cached} cached"
    if stage == "law_t" and "candidates_after_pruning" in source.metrics:
        return f"{int(source.metrics['candidates_after_pruning'])} aligned candidates"
    if stage == "law_p" and lineage.chosen:
        return "chosen ranks " + ", ".join(f"{module} {rank}" for module, rank in lineage.chosen.items())
    if stage == "final_training":
        return lineage.adapter or "-"
    if stage == "evaluation" and "test_loss" in source.metrics:
        return f"test loss {source.metrics['test_loss']:.4f}"
    return ""


def format_lineage(lineage: Lineage) -> str:
    """Render the chain for the terminal, one stage per block in data order."""
    root = lineage.root
    lines = [
        f"MARS lineage of run {root.name} (MLflow run {root.run_id}, {root.status})",
        f"  Prefect flow run  {root.flow_run_id or '-'}",
        f"  git commit        {root.tags.get('git.commit', '-')}",
        f"  tracking URI      {lineage.tracking_uri}",
        "",
    ]
    for index, (stage, label) in enumerate(STAGES):
        arrow = "   " if index == 0 else "-> "
        link = lineage.links[stage]
        if link is None:
            lines.append(f"{arrow}{label:<20} not recorded")
            continue
        lines.append(f"{arrow}{label:<20} {_stage_detail(stage, lineage)}")
        lines.append(f"      {_ids(link)}")
        for probe in lineage.probes.get(stage, []):
            lines.append(_probe_line(probe))
    if lineage.missing:
        lines += ["", f"  stages not recorded: {', '.join(lineage.missing)} (the run is {root.status})"]
    return "\n".join(lines)


def _link_dict(link: Link | None) -> dict[str, Any] | None:
    if link is None:
        return None
    origin = link.computed_by
    return {
        "mlflow_run_id": link.run.run_id,
        "status": link.run.status,
        "cached": link.cached,
        "computed_by_mlflow_run_id": origin.run_id,
        "prefect_task_run_id": origin.task_run_id,
        "prefect_flow_run_id": origin.flow_run_id,
        "failed_attempts": link.failed_attempts,
        "probe_id": origin.tags.get("mars.probe_id"),
        "worker": origin.tags.get("mars.worker"),
    }


def lineage_as_dict(lineage: Lineage) -> dict[str, Any]:
    """Return the chain as JSON-ready data, for ``mars lineage --json``."""
    root = lineage.root
    return {
        "run_name": root.name,
        "mlflow_run_id": root.run_id,
        "status": root.status,
        "tracking_uri": lineage.tracking_uri,
        "prefect_flow_run_id": root.flow_run_id,
        "git_commit": root.tags.get("git.commit"),
        "dataset_fingerprint": lineage.dataset_fingerprint,
        "base_model": root.tags.get("mars.base_model"),
        "chosen": lineage.chosen,
        "adapter": lineage.adapter,
        "stages": {stage: _link_dict(lineage.links[stage]) for stage, _ in STAGES},
        "probes": {family: [_link_dict(link) for link in links] for family, links in lineage.probes.items()},
        "missing": lineage.missing,
    }


# ---------------------------------------------------------------- the `mars lineage` command


def add_lineage_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``mars lineage`` on the CLI's subparsers."""
    lineage = subparsers.add_parser(
        "lineage",
        help="print how a run got its adapter: dataset, probes, laws, selection, final training",
        description=(
            "Print the chain dataset fingerprint -> probes -> laws -> selection -> final adapter of a run, "
            "with the MLflow run id and Prefect task run id of every link. Cached links point to the run "
            "that computed them."
        ),
    )
    lineage.add_argument("run", help="run name, run folder, path to summary.json, or the MLflow run id of the search")
    lineage.add_argument("--workdir", type=Path, default=Path("mars-work"), help="work directory (default: mars-work)")
    lineage.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI to read from (default: the one in summary.json, else MLFLOW_TRACKING_URI, "
        "else SQLite in the work directory)",
    )
    lineage.add_argument("--json", action="store_true", help="print the chain as JSON")
    lineage.set_defaults(handler=_cmd_lineage)
    return lineage


def locate_run(run: str, workdir: Path, tracking_uri: str | None) -> tuple[str, str, dict[str, Any] | None]:
    """Resolve the ``run`` argument to (MLflow run id, tracking URI, summary or None).

    Raises
    ------
    ValueError
        When ``run`` is neither a run with a summary nor an MLflow run id.
    """
    for path in (Path(run), Path(run) / "summary.json", workdir / "runs" / run / "summary.json"):
        if path.is_file():
            summary = json.loads(path.read_text())
            recorded = summary.get("mlflow", {})
            if not recorded.get("run_id"):
                raise ValueError(f"{path} has no mlflow.run_id; pass the MLflow run id of the search instead")
            return recorded["run_id"], tracking_uri or recorded["tracking_uri"], summary

    if _RUN_ID.fullmatch(run):
        from flows.tracking import default_tracking_uri

        uri = tracking_uri or default_tracking_uri(workdir)
        database = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
        if database is not None and not database.is_file():
            # MLflow would create an empty database there and report the run as missing.
            raise ValueError(f"no MLflow database at {database}; give --tracking-uri or --workdir of the run")
        return run, uri, None

    runs_dir = workdir / "runs"
    known = sorted(p.name for p in runs_dir.glob("*") if (p / "summary.json").is_file()) if runs_dir.is_dir() else []
    raise ValueError(
        f"no summary found for run {run!r} under {runs_dir} (runs with a summary: {', '.join(known) or 'none'}); "
        "give a run name, a run folder, or the 32-character MLflow run id of the search with --tracking-uri"
    )


def _cmd_lineage(args: argparse.Namespace) -> int:
    # Imported here: flows.cli imports this module to register the subcommand.
    from flows.cli import InputError

    try:
        run_id, tracking_uri, summary = locate_run(args.run, args.workdir, args.tracking_uri)
    except ValueError as exc:
        raise InputError(str(exc)) from exc

    from mlflow.exceptions import MlflowException

    from flows.tracking_queries import RunNotFound, RunReader

    try:
        lineage = build_lineage(RunReader(tracking_uri), run_id, summary)
    except RunNotFound as exc:
        raise InputError(f"{exc}; check --tracking-uri (MLFLOW_TRACKING_URI is {os.environ.get('MLFLOW_TRACKING_URI')!r})") from exc
    except MlflowException as exc:
        raise InputError(f"reading run {run_id} from MLflow at {tracking_uri} failed: {exc.message}") from exc

    print(json.dumps(lineage_as_dict(lineage), indent=2) if args.json else format_lineage(lineage))
    return 0
