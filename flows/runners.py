"""Task runners for the probes: a thread pool here, or the workers of a Dask cluster.

``runtime.runner: local`` trains probes in threads of the flow's own process.
``runtime.runner: dask`` sends each probe to a worker of a Dask cluster through
prefect-dask's ``DaskTaskRunner``: the cluster at ``runtime.dask_address``, or a
temporary local cluster when no address is given. Every Dask worker must be
able to import ``flows`` and ``mars_core`` and read the work directory, because
probes load the dataset and the base model from there and persist their
results there for the cache.
"""

from __future__ import annotations

import logging
import os
import socket

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from mars_core.config import MarsConfig

log = logging.getLogger("mars")

TAG_WORKER = "mars.worker"

_TEAM_EXTRA_HINT = "install the team extra: pip install 'mars-lora[team]' (or pip install prefect-dask)"


def make_task_runner(cfg: MarsConfig) -> TaskRunner:
    """Build the task runner that ``runtime.runner`` selects, sized by ``runtime.probe_parallelism``.

    Raises
    ------
    RuntimeError
        When ``runtime.runner`` is ``dask`` and prefect-dask is not installed.
    """
    runtime = cfg.runtime
    if runtime.runner == "local":
        return ThreadPoolTaskRunner(max_workers=runtime.probe_parallelism)

    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise RuntimeError(f"runtime.runner=dask needs prefect-dask, which is not installed; {_TEAM_EXTRA_HINT}") from exc

    if runtime.dask_address:
        log.info("probes run on the Dask cluster at %s", runtime.dask_address)
        return DaskTaskRunner(address=runtime.dask_address)

    # One single-threaded worker process per parallel probe: a probe sets its own torch thread count.
    log.info("probes run on a temporary local Dask cluster of %d workers", runtime.probe_parallelism)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": runtime.probe_parallelism,
            "threads_per_worker": 1,
            "processes": True,
            "host": "127.0.0.1",
            "dashboard_address": None,
        },
    )


def worker_identity() -> str:
    """Name the process a task runs in: the Dask worker's address, else ``host:pid``.

    It is the value of the ``mars.worker`` tag on each stage's MLflow run, which
    shows a team which machine trained which probe.
    """
    try:
        from distributed import get_worker
    except ImportError:
        get_worker = None

    if get_worker is not None:
        try:
            return get_worker().address
        except ValueError:
            pass  # not inside a Dask worker
    return f"{socket.gethostname()}:{os.getpid()}"
