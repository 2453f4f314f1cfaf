"""The one place that talks to MLflow.

Every stage records through a :class:`Tracker`, which wraps an explicit
``MlflowClient`` and run ids instead of MLflow's fluent API. Probes train in
parallel threads, and the fluent API keeps one active run per thread, so it
would nest runs under the wrong parent.

Key names are shared with ``summary.json`` and the logs: ``val_loss``,
``t_conv``, ``r2``, ``loo_rel_error``, ``seconds``, ``samples``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

log = logging.getLogger(__name__)

# MLflow rejects a param value longer than this many characters.
_MAX_PARAM_LENGTH = 6000
# MLflow rejects a dataset digest longer than this many characters.
_MAX_DIGEST_LENGTH = 36
# Batches for log_batch stay well under MLflow's limit of 1000 metrics per call.
_BATCH = 500

TAG_CACHED_FROM = "mars.cached_from_run_id"
TAG_STAGE = "mars.stage"


def default_tracking_uri(workdir: Path) -> str:
    """Return ``MLFLOW_TRACKING_URI`` when set, else SQLite under the work directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{workdir.resolve() / 'mlflow.db'}"


def git_commit() -> str:
    """Return the commit of the checkout MARS runs from, or ``unknown`` outside git."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings into ``a.b.c`` keys, as MLflow params expect."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class Tracker:
    """MLflow records for one MARS experiment: runs, params, metrics, artifacts, inputs."""

    def __init__(self, tracking_uri: str, experiment: str, artifact_root: Path | None = None):
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is not None:
            self.experiment_id = found.experiment_id
        else:
            location = artifact_root.resolve().as_uri() if artifact_root is not None else None
            self.experiment_id = self.client.create_experiment(experiment, artifact_location=location)

    def start_run(self, name: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        """Create a run (nested under ``parent_id`` when given) and return its id."""
        all_tags = {MLFLOW_RUN_NAME: name, **(tags or {})}
        if parent_id is not None:
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_id
        run = self.client.create_run(self.experiment_id, tags={k: str(v) for k, v in all_tags.items()}, run_name=name)
        return run.info.run_id

    @contextlib.contextmanager
    def run(self, name: str, parent_id: str | None = None, tags: Mapping[str, str] | None = None) -> Iterator[str]:
        """Open a run, mark it FINISHED on success and FAILED when the block raises."""
        run_id = self.start_run(name, parent_id, tags)
        try:
            yield run_id
        except BaseException:
            self.finish(run_id, "FAILED")
            raise
        self.finish(run_id, "FINISHED")

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def nest_under(self, run_id: str, parent_id: str) -> None:
        """Make an existing run a child of ``parent_id``, e.g. a search that a benchmark ran as one of its methods."""
        self.client.set_tag(run_id, MLFLOW_PARENT_RUN_ID, parent_id)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, _param_value(v)) for k, v in flatten(params).items()]
        for start in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[start : start + 100])

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(run_id, tags=items)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None], step: int = 0) -> None:
        """Log finite numeric metrics; None and NaN values are skipped, not recorded as 0."""
        items = [
            Metric(k, float(v), 0, step)
            for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        ]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, metrics=items[start : start + _BATCH])

    def log_curve(self, run_id: str, key: str, curve: list[tuple[int, float]]) -> None:
        """Log a loss curve with samples seen as the step."""
        items = [Metric(key, float(loss), 0, int(step)) for step, loss in curve if math.isfinite(loss)]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(run_id, metrics=items[start : start + _BATCH])

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_json(self, run_id: str, data: Any, filename: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / filename
            target.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
            self.client.log_artifact(run_id, str(target))

    def log_table(self, run_id: str, columns: Mapping[str, list[Any]], filename: str) -> None:
        """Log a table, one list per column, as a JSON artifact that the MLflow UI shows as a table."""
        lengths = {name: len(values) for name, values in columns.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"table {filename}: columns differ in length {lengths}; give every column one value per row")
        self.client.log_table(run_id, data=dict(columns), artifact_file=filename)

    def log_dataset(self, run_id: str, name: str, fingerprint: str, source: str, context: str, profile: dict) -> None:
        """Record the dataset as an MLflow input of the run, keyed by its content fingerprint."""
        dataset = Dataset(
            name=name,
            digest=fingerprint[:_MAX_DIGEST_LENGTH],
            source_type="local",
            source=json.dumps({"uri": source}),
            profile=json.dumps(profile),
        )
        tag = InputTag(key="mlflow.data.context", value=context)
        self.client.log_inputs(run_id, datasets=[DatasetInput(dataset=dataset, tags=[tag])])


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
    return text if len(text) <= _MAX_PARAM_LENGTH else text[: _MAX_PARAM_LENGTH - 3] + "..."
