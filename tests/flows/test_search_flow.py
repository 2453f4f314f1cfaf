"""The search flow end to end on a reduced configuration: summary, MLflow records, cache, retries, failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.task_runners import ThreadPoolTaskRunner

from flows import tasks
from flows.runner import run_search
from flows.search import mars_search
from mars_core import probes as probe_lib
from mars_core.config import MarsConfig, load_config

pytestmark = pytest.mark.slow

# Small enough to run in well under a minute, large enough for both laws:
# ranks 2, 4, 8 (module probes at 2 and 8), six joint probes for Law-P.
REDUCED = [
    "probes.min_rank=2",
    "probes.max_rank=8",
    "probes.ranks_per_module=2",
    "probes.joint_probes=6",
    "probes.module_budget_samples=384",
    "probes.joint_budget_bounds=[128, 384]",
    "train.eval_every=32",
    "train.val_subset=64",
    "train.warmup_samples=32",
    "train.learning_rate=0.002",
    "final.budget=epochs",
    "final.epochs=0.5",
    "data.max_train_examples=320",
    "runtime.retry_delay_seconds=0",
]

REQUIRED_KEYS = [
    "chosen.vision", "chosen.llm",
    "laws.convergence.vision.params", "laws.convergence.vision.r2",
    "laws.convergence.llm.params", "laws.convergence.llm.r2",
    "laws.performance.params", "laws.performance.r2",
    "candidates_after_pruning",
    "probes.total", "probes.trained", "probes.cached", "probes.failed",
    "final.val_loss", "final.test_loss", "final.test_accuracy", "final.predicted_val_loss",
    "cost.probe_seconds", "cost.final_seconds", "cost.probe_samples", "cost.final_samples",
    "mlflow.tracking_uri", "mlflow.experiment_id", "mlflow.run_id",
    "prefect.flow_run_id",
    "fallback_reason",
]

STAGES = {"dataset", "base_model", "module_probes", "law_t", "joint_probes", "law_p", "final_training", "evaluation"}


def reduced_config(workdir: Path, base_model_path: str, *extra: str) -> MarsConfig:
    return load_config(None, [*REDUCED, f"runtime.workdir={workdir}", f"model.name_or_path={base_model_path}", *extra])


def lookup(data: dict, dotted: str):
    for part in dotted.split("."):
        data = data[part]
    return data


def child_runs(client: MlflowClient, summary: dict) -> list:
    """Every run nested, at any depth, under the summary's parent run."""
    runs = client.search_runs([summary["mlflow"]["experiment_id"]], max_results=5000)
    by_parent: dict[str, list] = {}
    for run in runs:
        by_parent.setdefault(run.data.tags.get("mlflow.parentRunId"), []).append(run)
    found, frontier = [], [summary["mlflow"]["run_id"]]
    while frontier:
        children = by_parent.get(frontier.pop(), [])
        found += children
        frontier += [run.info.run_id for run in children]
    return found


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("flow")


@pytest.fixture(scope="module")
def first_run(workdir, small_base_model):
    cfg = reduced_config(workdir, small_base_model.path)
    return cfg, run_search(cfg, run_name="first", progress=False)


def test_summary_has_every_documented_key(first_run):
    cfg, summary = first_run
    for key in REQUIRED_KEYS:
        lookup(summary, key)
    on_disk = json.loads((Path(cfg.runtime.workdir) / "runs" / "first" / "summary.json").read_text())
    assert on_disk == summary
    assert summary["probes"]["total"] == 8 + 6
    assert summary["probes"]["trained"] == summary["probes"]["total"]
    assert summary["probes"]["cached"] == 0
    assert summary["chosen"]["vision"] in (2, 4, 8)
    assert summary["chosen"]["llm"] in (2, 4, 8)
    assert summary["final"]["samples"] == 160
    assert 0.0 <= summary["final"]["test_accuracy"] <= 1.0


def test_run_folder_holds_outputs(first_run):
    cfg, summary = first_run
    run_dir = Path(summary["paths"]["run_dir"])
    for name in ("selection.json", "probes.parquet", "evaluation.json", "adapter/adapter_config.json"):
        assert (run_dir / name).is_file(), name
    assert len(list(run_dir.glob("*.png"))) >= 3


def test_mlflow_records_parent_stages_and_probes(first_run):
    cfg, summary = first_run
    client = MlflowClient(summary["mlflow"]["tracking_uri"])
    parent = client.get_run(summary["mlflow"]["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["probes.max_rank"] == "8"
    assert parent.data.tags["prefect.flow_run_id"] == summary["prefect"]["flow_run_id"]
    assert parent.data.tags["mars.dataset_fingerprint"] == summary["dataset"]["fingerprint"]
    assert "git.commit" in parent.data.tags

    children = child_runs(client, summary)
    stages = {run.data.tags.get("mars.stage") for run in children}
    assert STAGES <= stages
    probe_runs = [run for run in children if run.data.tags.get("mars.stage") == "probe"]
    assert len(probe_runs) == summary["probes"]["total"]
    for run in probe_runs:
        assert run.info.status == "FINISHED"
        assert run.data.tags["prefect.task_run_id"]
        assert run.data.tags["mars.dataset_fingerprint"] == summary["dataset"]["fingerprint"]
    history = client.get_metric_history(probe_runs[0].info.run_id, "val_loss")
    assert len(history) >= 5
    assert history[0].step == 0

    artifacts_by_stage = {
        run.data.tags["mars.stage"]: {a.path for a in client.list_artifacts(run.info.run_id)}
        for run in children if run.data.tags.get("mars.stage") in STAGES
    }
    assert "summary.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"probes.parquet", "selection.json", "plots"} <= artifacts_by_stage["law_p"]
    assert "adapter" in artifacts_by_stage["final_training"]
    assert "evaluation.json" in artifacts_by_stage["evaluation"]
    assert "manifest.json" in artifacts_by_stage["dataset"]

    dataset_run = next(run for run in children if run.data.tags.get("mars.stage") == "dataset")
    inputs = dataset_run.inputs.dataset_inputs
    assert inputs and inputs[0].dataset.digest == summary["dataset"]["fingerprint"][:36]


def test_rerun_trains_nothing_and_links_cached_runs(first_run):
    cfg, first = first_run
    second = run_search(cfg, run_name="second", progress=False)
    assert second["probes"]["trained"] == 0
    assert second["probes"]["cached"] == first["probes"]["total"]
    assert second["final"]["cached"] is True
    assert second["chosen"] == first["chosen"]
    assert second["final"]["test_loss"] == pytest.approx(first["final"]["test_loss"])

    client = MlflowClient(second["mlflow"]["tracking_uri"])
    first_ids = {run.info.run_id for run in child_runs(client, first)}
    cached = [run for run in child_runs(client, second) if "mars.cached_from_run_id" in run.data.tags]
    assert len(cached) >= second["probes"]["total"]
    assert all(run.data.tags["mars.cached_from_run_id"] in first_ids for run in cached)


def test_failed_stage_fails_the_run_and_rerun_resumes(workdir, small_base_model, monkeypatch):
    # A new delta and final length give new cache keys, so this run trains its own probes and final adapter.
    cfg = reduced_config(
        workdir, small_base_model.path, "search.delta=0.06", "final.epochs=0.4", "runtime.retries=1"
    )
    real_run_probe = probe_lib.run_probe
    calls: dict[str, int] = {}

    def flaky_run_probe(cfg_, base, dataset, spec, threads=None):
        calls[spec.probe_id] = calls.get(spec.probe_id, 0) + 1
        if len(calls) == 1 and calls[spec.probe_id] == 1:
            raise RuntimeError("injected probe failure")
        return real_run_probe(cfg_, base, dataset, spec, threads=threads)

    def broken_evaluation(*args, **kwargs):
        raise RuntimeError("injected evaluation failure")

    monkeypatch.setattr(tasks.probe_lib, "run_probe", flaky_run_probe)
    monkeypatch.setattr(tasks, "evaluate_adapter", broken_evaluation)
    flow = mars_search.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))
    state = flow(config=cfg.model_dump(mode="json"), run_name="broken", progress=False, return_state=True)
    assert state.is_failed()
    assert max(calls.values()) == 2  # the failing probe was retried once and then succeeded

    summary_path = Path(cfg.runtime.workdir) / "runs" / "broken" / "summary.json"
    assert not summary_path.exists()
    client = MlflowClient(f"sqlite:///{Path(cfg.runtime.workdir) / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(cfg.tracking.experiment)
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.mlflow.runName = 'broken'")
    assert parent.info.status == "FAILED"

    monkeypatch.undo()
    resumed = run_search(cfg, run_name="broken", progress=False)
    assert resumed["probes"]["trained"] == 0
    assert resumed["probes"]["failed"] == 0
    assert resumed["final"]["cached"] is True
    assert summary_path.is_file()
