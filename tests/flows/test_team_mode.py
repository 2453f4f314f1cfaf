"""Team mode for real, on 127.0.0.1: PostgreSQL, a Prefect server, a worker, MLflow and Dask.

The fixtures start every service that a team shares, each on a free
loopback port, and stop each one (its whole process group) at the end:

* PostgreSQL (Debian's ``postgresql`` package), run as user ``postgres``
  when the test runs as root, with databases ``prefect`` and ``mlflow``;
* ``prefect server start`` on that database, a process work pool and a
  ``prefect worker``;
* ``mlflow server`` with PostgreSQL as its backend store;
* a Dask ``LocalCluster`` of two single-threaded worker processes.

The tests deploy flows through the server and let the worker run them. They
skip, naming the install line, when the PostgreSQL binaries or a Python
package they need are missing.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.flows.test_search_flow import REDUCED

pytestmark = [pytest.mark.slow, pytest.mark.team]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
POOL = "team-test"
# Seconds for one server to become healthy: generous, because other tests may share the CPUs.
START_TIMEOUT = 180
FLOW_RUN_TIMEOUT = 300


# ---------------------------------------------------------------- process helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env(**extra: str) -> dict[str, str]:
    """Return this process's environment without Prefect and MLflow settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(DO_NOT_TRACK="1", PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


class Service:
    """A server process in its own session, so that stopping it ends its children too."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def wait_healthy(self, url: str, timeout: float = START_TIMEOUT) -> None:
        """Poll ``url`` until it returns HTTP 200; fail with the log tail when the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"{self.name} exited with status {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        return
            time.sleep(1)
        pytest.fail(f"{self.name} did not become healthy at {url} within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout)
        # Children that outlived the leader (uvicorn workers, flow runs) share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()


# ---------------------------------------------------------------- PostgreSQL


def _postgres_bin_dir() -> Path:
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install them: apt-get install -y postgresql")
    return Path(candidates[-1]).parent


def _as_postgres_user() -> list[str]:
    """Return the command prefix that runs a PostgreSQL binary as a non-root user, which initdb requires."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root and there is no `postgres` user to run PostgreSQL as; apt-get install -y postgresql creates it")
    if shutil.which("runuser") is None:
        pytest.skip("running as root and `runuser` (util-linux) is missing to run PostgreSQL as user postgres")
    return ["runuser", "-u", "postgres", "--"]


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """Start a throwaway PostgreSQL server with databases `prefect` and `mlflow`; yield `host:port`."""
    bin_dir = _postgres_bin_dir()
    as_user = _as_postgres_user()
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is missing: pip install psycopg2-binary")

    # Not under pytest's tmp_path: that folder is private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="mars-pg-"))
    if as_user:
        shutil.chown(base, user="postgres")
    data = base / "data"
    port = _free_port()
    ctl = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync"],
        check=True, capture_output=True, timeout=120,
    )
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run([*ctl, "-l", str(base / "server.log"), "-o", options, "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90)
    try:
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres", connect_timeout=10)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE prefect")
            cursor.execute("CREATE DATABASE mlflow")
        connection.close()
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([*ctl, "-m", "fast", "-w", "-t", "30", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _query(postgres: str, database: str, sql: str, params: tuple = ()) -> list[tuple]:
    import psycopg2

    host, port = postgres.split(":")
    connection = psycopg2.connect(host=host, port=int(port), user="postgres", dbname=database, connect_timeout=10)
    try:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall()
    finally:
        connection.close()


# ---------------------------------------------------------------- Prefect, MLflow, Dask


@pytest.fixture(scope="module")
def servers(postgres, tmp_path_factory) -> Iterator[dict[str, str]]:
    """Start the Prefect server and the MLflow server side by side on `postgres`; yield their URLs."""
    pytest.importorskip("prefect_dask", reason="prefect-dask is missing: pip install prefect-dask")
    root = tmp_path_factory.mktemp("servers")
    prefect_port, mlflow_port = _free_port(), _free_port()

    prefect_env = _clean_env(
        PREFECT_HOME=str(root / "prefect-home"),
        PREFECT_API_DATABASE_CONNECTION_URL=f"postgresql+asyncpg://postgres@{postgres}/prefect",
        PREFECT_UI_ENABLED="false",
    )
    prefect = Service(
        "prefect-server",
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
        prefect_env, root,
    )
    mlflow = Service(
        "mlflow-server",
        [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"postgresql+psycopg2://postgres@{postgres}/mlflow",
            "--artifacts-destination", str(root / "mlflow-artifacts"),
            "--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1",
        ],
        # MARS runs no MLflow server jobs, whose consumers are seven more processes in MLflow 3.17.
        _clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"), root,
    )
    try:
        prefect.wait_healthy(f"http://127.0.0.1:{prefect_port}/api/health")
        mlflow.wait_healthy(f"http://127.0.0.1:{mlflow_port}/health")
        yield {
            "prefect_api_url": f"http://127.0.0.1:{prefect_port}/api",
            "mlflow_tracking_uri": f"http://127.0.0.1:{mlflow_port}",
            "root": str(root),
        }
    finally:
        mlflow.stop()
        prefect.stop()


@pytest.fixture(scope="module")
def prefect_api(servers) -> Iterator[str]:
    """Point this process's Prefect client at the test server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: servers["prefect_api_url"]}):
        yield servers["prefect_api_url"]


@pytest.fixture(scope="module")
def dask_cluster(servers) -> Iterator[str]:
    """Start a Dask LocalCluster of two single-threaded worker processes; yield the scheduler address."""
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close(timeout=30)


def _dask_workers(address: str) -> set[str]:
    from distributed import Client

    with Client(address, timeout=30) as client:
        return set(client.scheduler_info(n_workers=-1)["workers"])


@pytest.fixture(scope="module")
def worker(servers, prefect_api, tmp_path_factory) -> Iterator[Service]:
    """Create process work pool `team-test` and start one worker on it that runs one flow run at a time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=POOL, type="process"), overwrite=True)

    root = tmp_path_factory.mktemp("worker")
    env = _clean_env(
        PREFECT_API_URL=servers["prefect_api_url"],
        PREFECT_HOME=str(root / "prefect-home"),
        MLFLOW_TRACKING_URI=servers["mlflow_tracking_uri"],
        PREFECT_WORKER_QUERY_SECONDS="1",
        PREFECT_WORKER_PREFETCH_SECONDS="5",
    )
    service = Service(
        "prefect-worker",
        [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--limit", "1"],
        env, root,
    )
    try:
        _wait_for_worker(service)
        yield service
    finally:
        service.stop()


def _wait_for_worker(service: Service, timeout: float = START_TIMEOUT) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            pytest.fail(f"prefect worker exited with status {service.process.returncode}:\n{service.log_tail()}")
        with get_client(sync_client=True) as client:
            if client.read_workers_for_work_pool(POOL):
                return
        time.sleep(1)
    pytest.fail(f"no worker joined pool {POOL} within {timeout:.0f} s:\n{service.log_tail()}")


def _run_deployment(name: str, worker: Service, parameters: dict | None = None):
    """Start a flow run of deployment ``name`` and wait for the worker to finish it."""
    from prefect.deployments import run_deployment

    flow_run = run_deployment(name, parameters=parameters, timeout=FLOW_RUN_TIMEOUT, poll_interval=2)
    if not flow_run.state.is_final():
        pytest.fail(f"flow run of {name} still {flow_run.state.type.value} after {FLOW_RUN_TIMEOUT} s:\n{worker.log_tail()}")
    return flow_run


# ---------------------------------------------------------------- smoke: a small flow through every service

SMOKE_FLOW = '''
import json
import time
from pathlib import Path

from prefect import flow, task
from prefect.runtime import flow_run

from flows.runners import TAG_WORKER, make_task_runner, worker_identity
from flows.tracking import Tracker
from mars_core.config import MarsConfig


@task
def where(index: int) -> str:
    time.sleep(1)  # long enough that the scheduler spreads the tasks over both workers
    return worker_identity()


@flow(name="team-smoke")
def team_smoke(config: dict, out: str, tracking_uri: str) -> None:
    cfg = MarsConfig.model_validate(config)
    with make_task_runner(cfg) as runner:
        futures = [runner.submit(where, {"index": index}) for index in range(4)]
        workers = [future.result() for future in futures]
    tracker = Tracker(tracking_uri, "team-smoke")
    run_id = tracker.start_run("smoke", tags={"prefect.flow_run_id": str(flow_run.id)})
    tracker.set_tags(run_id, {TAG_WORKER: ",".join(sorted(set(workers)))})
    tracker.finish(run_id)
    Path(out).write_text(json.dumps({"workers": workers, "mlflow_run_id": run_id}))
'''


def test_smoke_flow_runs_on_worker_and_dask(servers, prefect_api, dask_cluster, worker, postgres, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.deploy import cron_schedules, deploy_flow, load_flow
    from mars_core.config import load_config

    source = tmp_path / "source"
    source.mkdir()
    (source / "smoke.py").write_text(SMOKE_FLOW)
    cfg = load_config(None, ["runtime.runner=dask", f"runtime.dask_address={dask_cluster}"])
    out = tmp_path / "smoke.json"
    parameters = {"config": cfg.model_dump(mode="json"), "out": str(out), "tracking_uri": servers["mlflow_tracking_uri"]}

    deployment_id = deploy_flow(
        load_flow(str(source), "smoke.py:team_smoke"), "smoke", POOL, parameters,
        schedules=cron_schedules("0 3 * * *", "UTC"),
    )
    flow_run = _run_deployment("team-smoke/smoke", worker)

    assert flow_run.state.is_completed(), worker.log_tail()
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(flow_run.id).state.is_completed()
        assert client.read_flow_run(flow_run.id).deployment_id == deployment_id
    result = json.loads(out.read_text())
    assert set(result["workers"]) == _dask_workers(dask_cluster)
    rows = _query(
        postgres, "mlflow",
        "SELECT r.status, t.value FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "WHERE r.run_uuid = %s AND t.key = 'prefect.flow_run_id'",
        (result["mlflow_run_id"],),
    )
    assert rows == [("FINISHED", str(flow_run.id))]


def test_redeploy_replaces_then_clears_schedule(prefect_api, worker, tmp_path):
    from prefect.client.orchestration import get_client

    from flows.deploy import clear_schedules, cron_schedules, deploy_flow, load_flow

    source = tmp_path / "source"
    source.mkdir()
    (source / "smoke.py").write_text(SMOKE_FLOW)
    flow = load_flow(str(source), "smoke.py:team_smoke")
    parameters = {"config": {}, "out": str(tmp_path / "unused.json"), "tracking_uri": "unused"}

    deploy_flow(flow, "scheduled", POOL, parameters, schedules=cron_schedules("0 2 * * *", "UTC"))
    deployment_id = deploy_flow(flow, "scheduled", POOL, parameters, schedules=cron_schedules("30 4 * * 1", "Europe/Paris"))
    with get_client(sync_client=True) as client:
        schedules = client.read_deployment_schedules(deployment_id)
    assert [(s.schedule.cron, s.schedule.timezone) for s in schedules] == [("30 4 * * 1", "Europe/Paris")]

    deploy_flow(flow, "scheduled", POOL, parameters)
    with get_client(sync_client=True) as client:
        assert len(client.read_deployment_schedules(deployment_id)) == 1

    assert clear_schedules(deployment_id) == 1
    with get_client(sync_client=True) as client:
        assert client.read_deployment_schedules(deployment_id) == []


SERVE_SMOKE = """
import json, sys
from flows.deploy import load_flow, serve_flow
source, parameters = sys.argv[1], json.loads(sys.argv[2])
serve_flow(load_flow(source, "smoke.py:team_smoke"), "served", parameters)
"""


def test_served_flow_runs_from_serving_process(servers, prefect_api, dask_cluster, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from mars_core.config import load_config

    source = tmp_path / "source"
    source.mkdir()
    (source / "smoke.py").write_text(SMOKE_FLOW)
    cfg = load_config(None, ["runtime.runner=dask", f"runtime.dask_address={dask_cluster}"])
    out = tmp_path / "served.json"
    parameters = {"config": cfg.model_dump(mode="json"), "out": str(out), "tracking_uri": servers["mlflow_tracking_uri"]}
    env = _clean_env(
        PREFECT_API_URL=servers["prefect_api_url"],
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_RUNNER_POLL_FREQUENCY="1",
    )
    serving = Service("serve", [sys.executable, "-c", SERVE_SMOKE, str(source), json.dumps(parameters)], env, tmp_path)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert serving.process.poll() is None, serving.log_tail()
            with get_client(sync_client=True) as client:
                try:
                    client.read_deployment_by_name("team-smoke/served")
                    break
                except ObjectNotFound:
                    pass
            assert time.monotonic() < deadline, f"deployment team-smoke/served not created:\n{serving.log_tail()}"
            time.sleep(1)

        flow_run = _run_deployment("team-smoke/served", serving)
    finally:
        serving.stop()

    assert flow_run.state.is_completed(), serving.log_tail()
    assert len(set(json.loads(out.read_text())["workers"])) == 2


def test_gpu_work_pool_template_is_accepted_by_server(prefect_api):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads((REPO / "infra" / "k8s" / "work-pool-gpu.json").read_text())
    with get_client(sync_client=True) as client:
        pool = client.create_work_pool(
            WorkPoolCreate(name="team-test-gpu", type="kubernetes", base_job_template=template), overwrite=True
        )
    limits = pool.base_job_template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "{{ gpu_count }}"
    assert pool.base_job_template["variables"]["properties"]["gpu_count"]["default"] == 1


# ---------------------------------------------------------------- the search, deployed, failed and retried


def _mars(args: list[str], env: dict[str, str]) -> str:
    """Run `mars ARGS` in a subprocess, as a user would, and return its output."""
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"mars {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def _mlflow_runs(postgres: str, experiment: str) -> dict[str, dict]:
    """Read the experiment's runs and their tags straight from MLflow's PostgreSQL tables."""
    rows = _query(
        postgres, "mlflow",
        "SELECT r.run_uuid, r.status, t.key, t.value FROM runs r "
        "JOIN experiments e ON e.experiment_id = r.experiment_id "
        "JOIN tags t ON t.run_uuid = r.run_uuid WHERE e.name = %s",
        (experiment,),
    )
    runs: dict[str, dict] = {}
    for run_id, status, key, value in rows:
        runs.setdefault(run_id, {"status": status, "tags": {}})["tags"][key] = value
    return runs


def _runs_of(runs: dict[str, dict], flow_run_id, stage: str) -> dict[str, dict]:
    return {
        run_id: run for run_id, run in runs.items()
        if run["tags"].get("prefect.flow_run_id") == str(flow_run_id) and run["tags"].get("mars.stage") == stage
    }


def test_search_deployed_on_dask_retries_from_cache(
    small_base_model, servers, prefect_api, dask_cluster, worker, postgres, tmp_path
):
    from prefect.client.orchestration import get_client

    workdir = tmp_path / "work"
    experiment = "team-search"
    overrides = [
        *REDUCED,
        # The session's small demo model, which the workers read from the same disk.
        f"model.name_or_path={small_base_model.path}",
        # A smaller test split: evaluation generates an answer per example, and this test is about the servers.
        "data.test_fraction=0.05",
        "runtime.runner=dask",
        f"runtime.dask_address={dask_cluster}",
        "runtime.retries=0",
        f"tracking.experiment={experiment}",
        "tracking.run_name=team",
    ]
    env = _clean_env(PREFECT_API_URL=servers["prefect_api_url"], PREFECT_HOME=str(tmp_path / "prefect-home"))
    _mars(
        ["deploy", "--name", "reduced", "--work-pool", POOL, "--workdir", str(workdir),
         "--tracking-uri", servers["mlflow_tracking_uri"], *overrides],
        env,
    )

    # The first run fails in final training: a regular file is where its output folder should go.
    blocker = workdir / "final"
    blocker.write_text("a file where final training writes its folder, so that the stage fails\n")
    first = _run_deployment("mars-search/reduced", worker)
    assert first.state.is_failed(), f"the injected failure did not fail the run ({first.state.type.value}):\n{worker.log_tail()}"

    # A new run of the same deployment, as a team retries from the UI.
    blocker.unlink()
    second = _run_deployment("mars-search/reduced", worker)
    assert second.state.is_completed(), worker.log_tail(80)
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(second.id).state.is_completed()

    runs = _mlflow_runs(postgres, experiment)
    first_probes = _runs_of(runs, first.id, "probe")
    second_probes = _runs_of(runs, second.id, "probe")
    summary = json.loads((workdir / "runs" / "team" / "summary.json").read_text())
    total = summary["probes"]["total"]

    # The failed run trained every probe, spread over both Dask workers.
    trained_first = {run_id: run for run_id, run in first_probes.items() if run["status"] == "FINISHED"}
    assert len(trained_first) == total
    probe_workers = {run["tags"].get("mars.worker") for run in trained_first.values()}
    assert probe_workers == _dask_workers(dask_cluster), f"probes ran on {probe_workers}, not on both Dask workers"
    assert [run["status"] for run in _runs_of(runs, first.id, "final_training").values()] == ["FAILED"]

    # The retry computed no probe again: each one points to the run that trained it.
    assert summary["probes"]["cached"] == total
    assert summary["probes"]["trained"] == 0
    assert len(second_probes) == total
    assert {run["tags"].get("mars.cached_from_run_id") for run in second_probes.values()} == set(trained_first)
    assert [run["status"] for run in _runs_of(runs, second.id, "final_training").values()] == ["FINISHED"]

    # The summary names the MLflow run that PostgreSQL holds for the retry.
    parent = runs[summary["mlflow"]["run_id"]]
    assert parent["status"] == "FINISHED"
    assert parent["tags"]["prefect.flow_run_id"] == str(second.id)
    assert summary["prefect"]["flow_run_id"] == str(second.id)

    # Artifacts went through the tracking server to its artifact store, not to the work directory.
    ((artifact_uri,),) = _query(postgres, "mlflow", "SELECT artifact_uri FROM runs WHERE run_uuid = %s", (summary["mlflow"]["run_id"],))
    assert artifact_uri.startswith("mlflow-artifacts:/")
    stored = list((Path(servers["root"]) / "mlflow-artifacts").rglob("summary.json"))
    assert [path.parent.parent.name for path in stored] == [summary["mlflow"]["run_id"]]

    # Lineage follows every cached link back to the first flow run's task runs.
    lineage = json.loads(_mars(["lineage", "team", "--workdir", str(workdir), "--json"], env))
    assert lineage["missing"] == []
    assert lineage["prefect_flow_run_id"] == str(second.id)
    cached_probes = lineage["probes"]["module_probes"] + lineage["probes"]["joint_probes"]
    assert len(cached_probes) == total
    assert {probe["prefect_flow_run_id"] for probe in cached_probes} == {str(first.id)}
    assert all(probe["prefect_task_run_id"] for probe in cached_probes)
    assert lineage["stages"]["final_training"]["prefect_flow_run_id"] == str(second.id)
    assert Path(lineage["adapter"]).is_dir()
