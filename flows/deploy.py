"""``mars deploy``: the search as a Prefect deployment on a shared server.

A deployment stores the resolved configuration as the flow's ``config``
parameter, so every scheduled or manual run of it searches with the same
settings, and a rerun after a failure gets every finished stage from the
cache. Two ways to run it:

* ``--work-pool POOL``: a worker of that pool starts each run. For a process
  pool, the worker loads the flow from a checkout (``--source DIR``, by
  default the checkout this command runs from) or from the installed
  ``mars-lora`` package (``--source installed``). Container pools (Docker,
  Kubernetes) use the installed package inside ``--image``.
* ``--serve``: this process polls the server and runs the deployment's flow
  runs itself until it is stopped.

Prefect is imported inside the functions because the CLI must point Prefect
at its settings before the first ``import prefect``.
"""

from __future__ import annotations

import argparse
import logging
import os
import zoneinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any
from uuid import UUID

from mars_core.config import MarsConfig

if TYPE_CHECKING:
    from prefect import Flow

log = logging.getLogger("mars")

FLOW_NAME = "mars-search"
# A module path, not `flows/search.py:mars_search`: Prefect loads a flow file as a
# top-level module (`search`), which Dask workers cannot import when the flow's
# context travels with each probe they train.
SEARCH_ENTRYPOINT = "flows.search.mars_search"
# One slug for the schedule `mars deploy` manages, so a redeploy replaces it instead of adding a second one.
SCHEDULE_SLUG = "mars-cron"
INSTALLED = "installed"


class DeployError(Exception):
    """A deployment that cannot be created as requested. The message names the change to make."""


# ---------------------------------------------------------------- what a deployment carries


def search_parameters(cfg: MarsConfig, run_name: str | None = None) -> dict[str, Any]:
    """Return the flow parameters of a search deployment: the resolved configuration, as JSON-ready data."""
    return {"config": cfg.model_dump(mode="json"), "run_name": run_name, "progress": False}


def job_environment(cfg: MarsConfig, tracking_uri: str | None = None) -> dict[str, str]:
    """Return the environment every run of the deployment needs, whichever worker starts it.

    Task results persist under the work directory, as with ``mars run``, so a
    deployment's runs and local runs on the same work directory share the
    cache. Without ``tracking_uri`` the runs record wherever the worker's
    ``MLFLOW_TRACKING_URI`` points: the deployer's own value is not copied,
    because an address such as 127.0.0.1 means another machine inside a
    worker's container.
    """
    workdir = Path(cfg.runtime.workdir)
    env = {
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(workdir / "prefect" / "results"),
    }
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def default_source() -> str:
    """Return the checkout that ``flows`` is imported from, or ``installed`` for a non-editable install."""
    root = Path(__file__).resolve().parent.parent
    is_checkout = (root / "pyproject.toml").is_file() and _entrypoint_file(str(root), SEARCH_ENTRYPOINT).is_file()
    return str(root) if is_checkout else INSTALLED


def _entrypoint_file(source: str, entrypoint: str) -> Path:
    """Return the file of ``path/to/file.py:function`` or ``package.module.function`` under ``source``."""
    if ":" in entrypoint:
        return Path(source, entrypoint.split(":")[0])
    return Path(source, *entrypoint.split(".")[:-1]).with_suffix(".py")


def cron_schedules(cron: str | None, timezone: str) -> list[Any] | None:
    """Build the deployment's schedule list, or None to leave existing schedules as they are.

    Raises
    ------
    DeployError
        When the cron expression or the time zone is invalid.
    """
    if cron is None:
        return None
    from prefect.schedules import Cron

    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise DeployError(f"unknown time zone {timezone!r}; give an IANA name such as UTC or Europe/Paris") from exc
    try:
        return [Cron(cron, timezone=timezone, slug=SCHEDULE_SLUG)]
    except ValueError as exc:
        raise DeployError(f"invalid cron expression {cron!r} ({exc}); use five fields, e.g. '0 2 * * *' for 02:00 daily") from exc


# ---------------------------------------------------------------- server checks


def check_server() -> str:
    """Return the configured ``PREFECT_API_URL`` after checking that the server is reachable.

    Raises
    ------
    DeployError
        When no server is configured or its health check fails.
    """
    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise DeployError(
            "PREFECT_API_URL is not set: a deployment lives on a Prefect server. "
            "Start one (see infra/README.md) and set e.g. PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        error = client.api_healthcheck()
    if error is not None:
        raise DeployError(f"the Prefect server at PREFECT_API_URL={url} is not reachable ({error}); start it or fix the URL")
    return url


def work_pool_type(pool: str) -> str:
    """Return the type of work pool ``pool`` (``process``, ``kubernetes``, ...).

    Raises
    ------
    DeployError
        When the pool does not exist on the server.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_work_pool(pool).type
        except ObjectNotFound as exc:
            raise DeployError(
                f"work pool {pool!r} not found on the Prefect server; create it with "
                f"`prefect work-pool create {pool} --type process` or start a worker with "
                f"`prefect worker start --pool {pool} --type process`"
            ) from exc


# ---------------------------------------------------------------- deploy and serve


def load_flow(source: str, entrypoint: str = SEARCH_ENTRYPOINT) -> "Flow[..., Any]":
    """Load the flow that a deployment will run.

    ``source`` is a folder or git URL that contains ``entrypoint``
    (``path/to/file.py:function`` or ``package.module.function``), or
    ``installed`` for the flow of the installed ``flows`` package.
    """
    if source == INSTALLED:
        from flows.search import mars_search

        return mars_search

    from prefect import Flow

    file = _entrypoint_file(source, entrypoint)
    if "://" not in source and not file.is_file():
        raise DeployError(f"--source {source}: {file} not found; give the root of a MARS checkout")
    return Flow.from_source(source=source, entrypoint=entrypoint)


def deploy_flow(
    flow: "Flow[..., Any]",
    name: str,
    work_pool: str,
    parameters: dict[str, Any],
    *,
    schedules: list[Any] | None = None,
    job_env: dict[str, str] | None = None,
    image: str | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
) -> UUID:
    """Create or update deployment ``name`` of ``flow`` on ``work_pool`` and return its id.

    A flow loaded with ``Flow.from_source`` keeps its source as the
    deployment's storage. Any other flow is deployed by module path, so the
    worker imports it from its installed packages, inside ``image`` for a
    container pool.
    """
    from prefect.deployments.runner import EntrypointType

    pool_type = work_pool_type(work_pool)
    if image is not None and pool_type == "process":
        raise DeployError(f"--image {image}: work pool {work_pool!r} is a process pool, which runs no containers; drop --image")

    from_source = getattr(flow, "_storage", None) is not None
    job_variables: dict[str, Any] = {"env": dict(job_env or {})}
    if image is not None:
        job_variables["image"] = image

    deployment_id = flow.deploy(
        name=name,
        work_pool_name=work_pool,
        image=image,
        build=False,
        push=False,
        job_variables=job_variables,
        schedules=schedules,
        parameters=parameters,
        description=description,
        tags=tags,
        entrypoint_type=EntrypointType.FILE_PATH if from_source else EntrypointType.MODULE_PATH,
        print_next_steps=False,
        # Prefect warns that a process pool runs flows on the worker's machine; that is the point here.
        ignore_warnings=True,
    )
    log.info("deployment %s/%s (%s) on work pool %s (%s)", flow.name, name, deployment_id, work_pool, pool_type)
    return deployment_id


def clear_schedules(deployment_id: UUID) -> int:
    """Delete every schedule of a deployment and return how many there were."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        schedules = client.read_deployment_schedules(deployment_id)
        for schedule in schedules:
            client.delete_deployment_schedule(deployment_id, schedule.id)
    return len(schedules)


def deploy_search(
    cfg: MarsConfig,
    name: str,
    work_pool: str,
    *,
    cron: str | None = None,
    timezone: str = "UTC",
    source: str | None = None,
    image: str | None = None,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    tags: list[str] | None = None,
) -> UUID:
    """Create or update a deployment of the MARS search with ``cfg`` as its parameters.

    Without ``cron`` an existing deployment keeps its schedule; see
    :func:`clear_schedules` to remove it.
    """
    schedules = cron_schedules(cron, timezone)
    if source is None:
        # A container runs what its image has installed; a process worker can read the checkout.
        source = INSTALLED if image is not None else default_source()
    flow = load_flow(source)
    modules = ", ".join(cfg.lora.modules)
    return deploy_flow(
        flow,
        name,
        work_pool,
        search_parameters(cfg, run_name),
        schedules=schedules,
        job_env=job_environment(cfg, tracking_uri),
        image=image,
        tags=["mars", *(tags or [])],
        description=f"MARS search: one LoRA rank per module ({modules}); configuration {cfg.digest()}",
    )


def serve_flow(
    flow: "Flow[..., Any]",
    name: str,
    parameters: dict[str, Any],
    *,
    schedules: list[Any] | None = None,
    tags: list[str] | None = None,
    description: str | None = None,
) -> None:
    """Create or update deployment ``name`` of ``flow`` and run its flow runs from this process until stopped.

    One flow run at a time: a search trains models, and two at once would
    compete for the same cores or GPU.
    """
    flow.serve(
        name=name,
        schedules=schedules,
        parameters=parameters,
        tags=tags,
        description=description,
        limit=1,
        print_starting_message=False,
    )


def serve_search(
    cfg: MarsConfig,
    name: str,
    *,
    cron: str | None = None,
    timezone: str = "UTC",
    run_name: str | None = None,
    tags: list[str] | None = None,
) -> None:
    """Serve the MARS search as deployment ``name`` from this process until interrupted.

    The runs inherit this process's environment, so the caller sets the
    result storage and ``MLFLOW_TRACKING_URI`` first, as ``mars deploy
    --serve`` does.
    """
    from flows.search import mars_search

    serve_flow(
        mars_search,
        name,
        search_parameters(cfg, run_name),
        schedules=cron_schedules(cron, timezone),
        tags=["mars", *(tags or [])],
        description=f"MARS search served from {os.uname().nodename}; configuration {cfg.digest()}",
    )


# ---------------------------------------------------------------- the `mars deploy` command


def add_deploy_parser(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> argparse.ArgumentParser:
    """Register ``mars deploy`` on the CLI's subparsers."""
    deploy = subparsers.add_parser(
        "deploy",
        help="create or update a Prefect deployment of the search on the server at PREFECT_API_URL",
        description=(
            "Create or update a Prefect deployment of the search, with the resolved configuration as its "
            "parameters. Needs PREFECT_API_URL; set MLFLOW_TRACKING_URI too so that runs record to the team's "
            "MLflow server. See infra/README.md."
        ),
    )
    deploy.add_argument("--name", required=True, help="deployment name; an existing deployment of that name is updated")
    deploy.add_argument("--config", type=Path, help="YAML configuration (defaults: the embedded demo)")
    deploy.add_argument("--workdir", type=Path, help="work directory, as workers see it (overrides runtime.workdir)")
    deploy.add_argument("--run-name", help="name of each run's folder and MLflow run (default: from the configuration hash)")
    target = deploy.add_mutually_exclusive_group()
    target.add_argument(
        "--work-pool",
        default=os.environ.get("PREFECT_DEPLOYMENTS_DEFAULT_WORK_POOL_NAME"),
        help="work pool whose workers start the runs (default: $PREFECT_DEPLOYMENTS_DEFAULT_WORK_POOL_NAME)",
    )
    target.add_argument("--serve", action="store_true", help="run the deployment's flow runs from this process until Ctrl-C")
    deploy.add_argument("--cron", help="schedule as a five-field cron expression, e.g. '0 2 * * *'")
    deploy.add_argument("--timezone", default="UTC", help="IANA time zone of --cron (default: UTC)")
    deploy.add_argument("--no-schedule", action="store_true", help="remove the deployment's existing schedules")
    deploy.add_argument(
        "--source",
        help="where a process worker loads the flow: a checkout folder or git URL, or `installed` for the "
        "installed package (default: this checkout; `installed` with --image)",
    )
    deploy.add_argument("--image", help="container image with mars-lora installed, for Docker or Kubernetes work pools")
    deploy.add_argument(
        "--tracking-uri",
        help="MLflow server that the runs record to, as the worker reaches it (default: the worker's MLFLOW_TRACKING_URI)",
    )
    deploy.add_argument("--tag", action="append", default=[], help="extra deployment tag (repeatable)")
    deploy.add_argument("overrides", nargs="*", metavar="key=value", help="configuration overrides, e.g. probes.max_rank=64")
    deploy.set_defaults(handler=_cmd_deploy)
    return deploy


def _cmd_deploy(args: argparse.Namespace) -> int:
    # Imported here: flows.cli imports this module to register the subcommand.
    from flows.cli import InputError, _resolve_config

    if args.cron and args.no_schedule:
        raise InputError("--cron and --no-schedule contradict each other; give one of them")
    if not args.serve and not args.work_pool:
        raise InputError(
            "give --work-pool POOL (a pool whose workers run the flow, e.g. one made by "
            "`prefect work-pool create POOL --type process`) or --serve to run it from this process"
        )

    overrides = list(args.overrides)
    if args.workdir is not None:
        overrides.append(f"runtime.workdir={args.workdir}")
    cfg = _resolve_config(args.config, overrides)
    workdir = Path(cfg.runtime.workdir).resolve()
    cfg.runtime.workdir = str(workdir)

    from flows.services import configure_services

    configure_services(workdir)
    if args.serve and args.tracking_uri:
        # Served flow runs inherit this process's environment.
        os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri
    try:
        api_url = check_server()
        if args.serve:
            print(f"serving deployment {FLOW_NAME}/{args.name} from this process (Ctrl-C stops it)")
            serve_search(cfg, args.name, cron=args.cron, timezone=args.timezone, run_name=args.run_name, tags=args.tag)
            return 0
        deployment_id = deploy_search(
            cfg, args.name, args.work_pool, cron=args.cron, timezone=args.timezone,
            source=args.source, image=args.image, run_name=args.run_name,
            tracking_uri=args.tracking_uri, tags=args.tag,
        )
        removed = clear_schedules(deployment_id) if args.no_schedule else 0
    except DeployError as exc:
        raise InputError(str(exc)) from exc

    print(f"deployment {FLOW_NAME}/{args.name}  id {deployment_id}")
    print(f"  server      {api_url}")
    print(f"  work pool   {args.work_pool}")
    print(f"  schedule    {_schedule_text(args, removed)}")
    print(f"  workdir     {workdir}")
    print(f"  MLflow      {args.tracking_uri or 'the worker MLFLOW_TRACKING_URI (SQLite in the workdir when unset)'}")
    print(f"  run it now  prefect deployment run '{FLOW_NAME}/{args.name}'")
    return 0


def _schedule_text(args: argparse.Namespace, removed: int) -> str:
    if args.cron:
        return f"cron '{args.cron}' ({args.timezone})"
    if args.no_schedule:
        return f"none ({removed} removed)"
    return "unchanged (no --cron given)"
