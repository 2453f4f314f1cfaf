"""`mars lineage` on MLflow runs laid out as the search records them, in a SQLite store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from flows import lineage as lineage_lib
from flows.tracking import TAG_CACHED_FROM, TAG_STAGE, Tracker
from flows.tracking_queries import RunNotFound, RunReader

FINGERPRINT = "data-3f2a9c"
OLD_FLOW_RUN = "flow-run-old"
NEW_FLOW_RUN = "flow-run-new"


def _stage(tracker, parent, stage, flow_run, task, status="FINISHED", name=None, **tags):
    all_tags = {TAG_STAGE: stage, "prefect.flow_run_id": flow_run, "prefect.task_run_id": task, **tags}
    run_id = tracker.start_run(name or stage, parent_id=parent, tags=all_tags)
    tracker.finish(run_id, status)
    return run_id


def _pointer(tracker, parent, stage, origin, name=None):
    tags = {TAG_STAGE: stage, "prefect.flow_run_id": NEW_FLOW_RUN, TAG_CACHED_FROM: origin}
    run_id = tracker.start_run(f"{name or stage} (cached)", parent_id=parent, tags=tags)
    tracker.finish(run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two searches: an old one that failed in final training, and a rerun that reused its finished stages."""
    # Module scope: creating an MLflow SQLite store takes seconds (schema migrations).
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tracker = Tracker(uri, "mars", artifact_root=folder / "artifacts")
    ids = {}

    old = tracker.start_run("demo", tags={"prefect.flow_run_id": OLD_FLOW_RUN})
    ids["old_dataset"] = _stage(tracker, old, "dataset", OLD_FLOW_RUN, "task-dataset", **{"mars.dataset_fingerprint": FINGERPRINT})
    old_family = _stage(tracker, old, "module_probes", OLD_FLOW_RUN, None)
    ids["old_probe"] = _stage(
        tracker, old_family, "probe", OLD_FLOW_RUN, "task-probe-a", name="probe vision r2",
        **{"mars.probe_id": "probe-a", "mars.probe_status": "ok", "mars.worker": "tcp://127.0.0.1:4001"},
    )
    _stage(tracker, old, "final_training", OLD_FLOW_RUN, "task-final-old", status="FAILED")
    tracker.finish(old, "FAILED")

    new = tracker.start_run(
        "demo",
        tags={
            "prefect.flow_run_id": NEW_FLOW_RUN, "git.commit": "abc123", "mars.base_model": "demo",
            "mars.dataset_fingerprint": FINGERPRINT, "mars.chosen": json.dumps({"vision": 4, "llm": 8}),
        },
    )
    ids["new_dataset"] = _pointer(tracker, new, "dataset", ids["old_dataset"])
    _stage(tracker, new, "base_model", NEW_FLOW_RUN, "task-base", **{"mars.base_model": "demo"})
    family = _stage(tracker, new, "module_probes", NEW_FLOW_RUN, None)
    ids["cached_probe"] = _pointer(tracker, family, "probe", ids["old_probe"], name="probe vision r2")
    _stage(tracker, family, "probe", NEW_FLOW_RUN, "task-probe-b1", status="FAILED", name="probe llm r8")
    ids["trained_probe"] = _stage(
        tracker, family, "probe", NEW_FLOW_RUN, "task-probe-b2", name="probe llm r8",
        **{"mars.probe_id": "probe-b", "mars.probe_status": "ok", "mars.worker": "tcp://127.0.0.1:4002"},
    )
    law_t = _stage(tracker, new, "law_t", NEW_FLOW_RUN, "task-law-t")
    tracker.log_metrics(law_t, {"candidates_after_pruning": 3})
    _stage(tracker, new, "joint_probes", NEW_FLOW_RUN, None)
    _stage(tracker, new, "law_p", NEW_FLOW_RUN, "task-law-p")
    ids["final"] = _stage(tracker, new, "final_training", NEW_FLOW_RUN, "task-final")
    evaluation = _stage(tracker, new, "evaluation", NEW_FLOW_RUN, "task-eval")
    tracker.log_metrics(evaluation, {"test_loss": 0.25})
    tracker.finish(new)
    ids["new"], ids["old"] = new, old
    return uri, ids


def test_lineage_follows_cached_dataset_to_origin(store):
    uri, ids = store
    lineage = lineage_lib.build_lineage(RunReader(uri), ids["new"])
    dataset = lineage.links["dataset"]
    assert dataset.cached
    assert dataset.run.run_id == ids["new_dataset"]
    assert dataset.computed_by.run_id == ids["old_dataset"]
    assert dataset.computed_by.task_run_id == "task-dataset"
    assert dataset.computed_by.flow_run_id == OLD_FLOW_RUN
    assert lineage.dataset_fingerprint == FINGERPRINT


def test_lineage_lists_trained_and_cached_probes(store):
    uri, ids = store
    lineage = lineage_lib.build_lineage(RunReader(uri), ids["new"])
    probes = {link.computed_by.tags["mars.probe_id"]: link for link in lineage.probes["module_probes"]}
    assert set(probes) == {"probe-a", "probe-b"}
    assert probes["probe-a"].cached
    assert probes["probe-a"].computed_by.run_id == ids["old_probe"]
    assert not probes["probe-b"].cached
    assert probes["probe-b"].run.run_id == ids["trained_probe"]
    assert probes["probe-b"].failed_attempts == 1
    assert lineage.probes["joint_probes"] == []


def test_lineage_has_every_stage_of_finished_run(store):
    uri, ids = store
    lineage = lineage_lib.build_lineage(RunReader(uri), ids["new"])
    assert lineage.missing == []
    assert lineage.links["final_training"].run.run_id == ids["final"]
    assert lineage.chosen == {"vision": 4, "llm": 8}
    assert lineage.adapter.endswith("/adapter")


def test_lineage_of_failed_run_names_missing_stages(store):
    uri, ids = store
    lineage = lineage_lib.build_lineage(RunReader(uri), ids["old"])
    assert lineage.root.status == "FAILED"
    assert "evaluation" in lineage.missing
    assert "law_t" in lineage.missing
    assert lineage.links["final_training"].failed_attempts == 1
    assert "stages not recorded" in lineage_lib.format_lineage(lineage)


def test_format_lineage_prints_ids_in_data_order(store):
    uri, ids = store
    text = lineage_lib.format_lineage(lineage_lib.build_lineage(RunReader(uri), ids["new"]))
    order = [text.index(label) for _, label in lineage_lib.STAGES]
    assert order == sorted(order)
    assert f"cached from mlflow {ids['old_dataset']}  task task-dataset  flow run {OLD_FLOW_RUN}" in text
    assert "task task-final" in text
    assert "worker tcp://127.0.0.1:4002" in text
    assert "chosen ranks vision 4, llm 8" in text
    assert "3 aligned candidates" in text
    assert "1 trained in this run, 1 cached" in text


def test_lineage_dict_is_json_ready(store):
    uri, ids = store
    data = lineage_lib.lineage_as_dict(lineage_lib.build_lineage(RunReader(uri), ids["new"]))
    assert json.loads(json.dumps(data)) == data
    assert data["stages"]["dataset"]["computed_by_mlflow_run_id"] == ids["old_dataset"]
    assert data["stages"]["evaluation"]["prefect_task_run_id"] == "task-eval"
    assert data["prefect_flow_run_id"] == NEW_FLOW_RUN


def test_unknown_run_id_raises_run_not_found(store):
    uri, _ = store
    with pytest.raises(RunNotFound, match="no MLflow run"):
        RunReader(uri).get("0" * 32)


def test_locate_run_reads_summary(tmp_path):
    run_dir = tmp_path / "runs" / "demo"
    run_dir.mkdir(parents=True)
    summary = {"mlflow": {"run_id": "a" * 32, "tracking_uri": "http://127.0.0.1:5000"}, "paths": {"adapter": "/x/adapter"}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    run_id, uri, found = lineage_lib.locate_run("demo", tmp_path, None)
    assert run_id == "a" * 32
    assert uri == "http://127.0.0.1:5000"
    assert found == summary


def test_locate_run_prefers_given_tracking_uri(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"mlflow": {"run_id": "b" * 32, "tracking_uri": "http://mlflow:5000"}}))
    _, uri, _ = lineage_lib.locate_run(str(tmp_path / "summary.json"), tmp_path, "http://127.0.0.1:5000")
    assert uri == "http://127.0.0.1:5000"


def test_locate_run_rejects_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="no summary found for run 'nope'"):
        lineage_lib.locate_run("nope", tmp_path, None)


def test_locate_run_id_without_database_is_rejected(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="no MLflow database"):
        lineage_lib.locate_run("c" * 32, tmp_path, None)
    assert not (tmp_path / "mlflow.db").exists()


def test_lineage_command_prints_chain(store, capsys):
    uri, ids = store
    parser = argparse.ArgumentParser(prog="mars")
    lineage_lib.add_lineage_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lineage", ids["new"], "--tracking-uri", uri])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"MARS lineage of run demo (MLflow run {ids['new']}, FINISHED)")
    assert "-> final adapter" in out
