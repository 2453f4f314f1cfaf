"""Task runners for probes: the `runtime.runner` option and `make_task_runner`."""

from __future__ import annotations

import os

import pytest
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ValidationError

from flows.runners import make_task_runner, worker_identity
from mars_core.config import load_config


def test_local_runner_is_thread_pool_of_probe_parallelism():
    runner = make_task_runner(load_config(None, ["runtime.probe_parallelism=3"]))
    assert isinstance(runner, ThreadPoolTaskRunner)
    assert runner._max_workers == 3


def test_dask_runner_connects_to_given_address():
    prefect_dask = pytest.importorskip("prefect_dask")
    cfg = load_config(None, ["runtime.runner=dask", "runtime.dask_address=tcp://127.0.0.1:8786"])
    runner = make_task_runner(cfg)
    assert isinstance(runner, prefect_dask.DaskTaskRunner)
    assert runner.address == "tcp://127.0.0.1:8786"
    assert runner.cluster_kwargs == {}


def test_dask_runner_without_address_sizes_local_cluster():
    pytest.importorskip("prefect_dask")
    cfg = load_config(None, ["runtime.runner=dask", "runtime.probe_parallelism=3"])
    runner = make_task_runner(cfg)
    assert runner.address is None
    assert runner.cluster_kwargs["n_workers"] == 3
    assert runner.cluster_kwargs["threads_per_worker"] == 1
    assert runner.cluster_kwargs["host"] == "127.0.0.1"


def test_dask_address_without_dask_runner_is_rejected():
    with pytest.raises(ValidationError, match="runtime.runner=dask"):
        load_config(None, ["runtime.dask_address=tcp://127.0.0.1:8786"])


@pytest.mark.parametrize("address", ["", "tcp://host :8786"])
def test_malformed_dask_address_is_rejected(address):
    with pytest.raises(ValidationError, match="not a scheduler address"):
        load_config(None, ["runtime.runner=dask", f"runtime.dask_address='{address}'"])


def test_unknown_runner_is_rejected():
    with pytest.raises(ValidationError, match="runtime.runner"):
        load_config(None, ["runtime.runner=ray"])


def test_worker_identity_outside_dask_is_host_and_pid():
    assert worker_identity().endswith(f":{os.getpid()}")
