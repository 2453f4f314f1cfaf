"""Bookkeeping shared by every task: its MLflow run, timing and lineage.

A task body runs inside :func:`stage_run`, which opens a nested MLflow run,
tags it with the Prefect ids, and returns the task's value wrapped in
:class:`Staged`, which remembers the MLflow run and flow run that produced
it. When a later flow run gets that value from Prefect's cache, the task
body does not run, so :func:`unwrap` records a small run that points to the
original one: lineage stays complete across reruns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

from prefect.runtime import flow_run, task_run

from flows.runners import TAG_WORKER, worker_identity
from flows.tracking import TAG_CACHED_FROM, TAG_STAGE, Tracker

log = logging.getLogger("mars")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class TrackingContext:
    """Tracking URI, experiment, parent run and tags: all a task needs to record under the flow's MLflow run."""

    tracking_uri: str
    experiment: str
    parent_run_id: str
    tags: dict[str, str]

    def tracker(self) -> Tracker:
        return Tracker(self.tracking_uri, self.experiment)

    def with_tags(self, **tags: str) -> "TrackingContext":
        return dataclasses.replace(self, tags={**self.tags, **tags})

    def under(self, run_id: str) -> "TrackingContext":
        """Return the same context with ``run_id`` as parent, for probes under their stage run."""
        return dataclasses.replace(self, parent_run_id=run_id)


@dataclasses.dataclass(frozen=True)
class Staged(Generic[T]):
    """A task's value with the records of the run that computed it."""

    value: T
    mlflow_run_id: str
    flow_run_id: str
    seconds: float
    metrics: dict[str, float]


@dataclasses.dataclass
class StageRecord:
    tracker: Tracker
    run_id: str
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def staged(self, value: T) -> Staged[T]:
        return Staged(
            value=value,
            mlflow_run_id=self.run_id,
            flow_run_id=str(flow_run.id),
            seconds=time.perf_counter() - self.started,
            metrics=dict(self.metrics),
        )


def prefect_tags() -> dict[str, str]:
    tags = {"prefect.flow_run_id": str(flow_run.id), TAG_WORKER: worker_identity()}
    if task_run.id is not None:
        tags["prefect.task_run_id"] = str(task_run.id)
    return tags


@contextlib.contextmanager
def stage_run(ctx: TrackingContext, stage: str, name: str | None = None) -> Iterator[StageRecord]:
    """Run a stage body inside a nested MLflow run; the run is FAILED if the body raises."""
    tracker = ctx.tracker()
    tags = {**ctx.tags, **prefect_tags(), TAG_STAGE: stage}
    with tracker.run(name or stage, parent_id=ctx.parent_run_id, tags=tags) as run_id:
        record = StageRecord(tracker, run_id)
        yield record
        record.metrics.setdefault("seconds", time.perf_counter() - record.started)
        tracker.log_metrics(run_id, record.metrics)


def unwrap(ctx: TrackingContext, staged: Staged[T], stage: str, name: str | None = None) -> T:
    """Return the task's value; record a pointer run when it came from an earlier flow run's cache."""
    if staged.flow_run_id != str(flow_run.id):
        tracker = ctx.tracker()
        tags = {
            **ctx.tags,
            "prefect.flow_run_id": str(flow_run.id),
            TAG_STAGE: stage,
            TAG_CACHED_FROM: staged.mlflow_run_id,
            "mars.cached_from_flow_run_id": staged.flow_run_id,
        }
        run_id = tracker.start_run(f"{name or stage} (cached)", parent_id=ctx.parent_run_id, tags=tags)
        tracker.log_metrics(run_id, {**staged.metrics, "cached": 1})
        tracker.finish(run_id)
    return staged.value


def was_cached(staged: Staged[Any]) -> bool:
    return staged.flow_run_id != str(flow_run.id)
