import math

from flows.tracking import Tracker, flatten


def test_flatten_nests_with_dots():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_tracker_records_nested_runs_and_skips_non_finite_metrics(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "unit", artifact_root=tmp_path / "artifacts")
    parent = tracker.start_run("parent")
    with tracker.run("child", parent_id=parent) as child:
        tracker.log_metrics(child, {"val_loss": 1.5, "bad": math.nan, "missing": None})
        tracker.log_curve(child, "curve", [(0, 3.0), (16, 2.0)])
        tracker.log_params(child, {"ranks": {"vision": 8, "llm": 4}})
    run = tracker.client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.metrics == {"val_loss": 1.5, "curve": 2.0}
    assert run.data.params == {"ranks.vision": "8", "ranks.llm": "4"}
    assert run.info.status == "FINISHED"
    history = tracker.client.get_metric_history(child, "curve")
    assert [(m.step, m.value) for m in history] == [(0, 3.0), (16, 2.0)]


def test_run_block_that_raises_marks_the_run_failed(tmp_path):
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "unit")
    run_ids = []
    try:
        with tracker.run("doomed") as run_id:
            run_ids.append(run_id)
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert tracker.client.get_run(run_ids[0]).info.status == "FAILED"
