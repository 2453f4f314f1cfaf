"""Read-only queries of the MLflow runs that a MARS search recorded.

``flows.tracking`` writes runs; this module reads them back, for commands
such as ``mars lineage`` that inspect a finished search. It never creates
an experiment or changes a run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from flows.tracking import TAG_CACHED_FROM, TAG_STAGE

# A search nests at most three levels (search, probe family, probe); the
# bound stops a malformed parent chain from looping.
_MAX_DEPTH = 4
_PAGE_SIZE = 1000


class RunNotFound(LookupError):
    """No MLflow run with the requested id exists at the tracking URI."""


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One MLflow run as lineage needs it: ids, stage, tags, metrics and times."""

    run_id: str
    name: str
    status: str
    experiment_id: str
    parent_id: str | None
    tags: dict[str, str]
    metrics: dict[str, float]
    artifact_uri: str
    start_time: int | None
    end_time: int | None

    @property
    def stage(self) -> str | None:
        return self.tags.get(TAG_STAGE)

    @property
    def task_run_id(self) -> str | None:
        return self.tags.get("prefect.task_run_id")

    @property
    def flow_run_id(self) -> str | None:
        return self.tags.get("prefect.flow_run_id")

    @property
    def cached_from(self) -> str | None:
        return self.tags.get(TAG_CACHED_FROM)


def _record(run: Any) -> RunRecord:
    tags = dict(run.data.tags)
    return RunRecord(
        run_id=run.info.run_id,
        name=tags.get(MLFLOW_RUN_NAME) or run.info.run_name or "",
        status=run.info.status,
        experiment_id=run.info.experiment_id,
        parent_id=tags.get(MLFLOW_PARENT_RUN_ID),
        tags=tags,
        metrics=dict(run.data.metrics),
        artifact_uri=run.info.artifact_uri,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
    )


class RunReader:
    """Read runs and their nested runs from one MLflow tracking URI."""

    def __init__(self, tracking_uri: str):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)

    def get(self, run_id: str) -> RunRecord:
        """Return run ``run_id``.

        Raises
        ------
        RunNotFound
            When the tracking server has no such run.
        """
        try:
            return _record(self.client.get_run(run_id))
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise RunNotFound(f"no MLflow run {run_id!r} at {self.tracking_uri}") from exc
            raise

    def children(self, parent: RunRecord) -> list[RunRecord]:
        """Return the runs nested directly under ``parent``, oldest first."""
        found: list[RunRecord] = []
        token = None
        while True:
            page = self.client.search_runs(
                [parent.experiment_id],
                filter_string=f"tags.{MLFLOW_PARENT_RUN_ID} = '{parent.run_id}'",
                max_results=_PAGE_SIZE,
                order_by=["attributes.start_time ASC"],
                page_token=token,
            )
            found.extend(_record(run) for run in page)
            token = page.token
            if not token:
                return found

    def descendants(self, root: RunRecord) -> dict[str, list[RunRecord]]:
        """Map each run id under ``root`` (and ``root`` itself) to its nested runs."""
        tree: dict[str, list[RunRecord]] = {}
        level = [root]
        for _ in range(_MAX_DEPTH):
            next_level = []
            for run in level:
                tree[run.run_id] = self.children(run)
                next_level.extend(tree[run.run_id])
            if not next_level:
                break
            level = next_level
        return tree
