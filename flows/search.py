"""The MARS search as a Prefect flow: the method, one stage per line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm.auto import tqdm

from flows import tasks
from flows.runners import make_task_runner
from flows.stages import Staged, TrackingContext, unwrap, was_cached
from flows.tracking import Tracker, default_tracking_uri, git_commit
from mars_core import probes as probe_lib
from mars_core.config import MarsConfig
from mars_core.summary import build_summary

log = logging.getLogger("mars")


@flow(name="mars-search", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
def mars_search(config: dict[str, Any], run_name: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Pick one LoRA rank per module from probe fine-tunes, train once, evaluate."""
    cfg = MarsConfig.model_validate(config)
    run_name = run_name or cfg.tracking.run_name or f"mars-{cfg.digest()[:10]}"
    run_dir = Path(cfg.runtime.workdir).resolve() / "runs" / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    with _parent_run(cfg, run_name) as track:
        dataset = unwrap(track, tasks.prepare_dataset(cfg, track, progress), "dataset")
        base = unwrap(track, tasks.prepare_base(cfg, track, progress), "base_model")
        track = _tag_inputs(track, dataset, base)

        module_specs = probe_lib.plan_module_probes(cfg, dataset, base)
        module_rows, module_stats = _run_probes(cfg, module_specs, dataset, base, track, "module_probes", progress)

        pruned = unwrap(track, tasks.fit_law_t_and_prune(cfg, module_rows, dataset.n_train, track), "law_t")

        joint_specs = probe_lib.plan_joint_probes(cfg, pruned.law_t, dataset, base)
        joint_rows, joint_stats = _run_probes(cfg, joint_specs, dataset, base, track, "joint_probes", progress)

        selected = tasks.fit_law_p_and_select(cfg, pruned, module_rows, joint_rows, dataset.n_train, track, run_dir)
        selection = unwrap(track, selected, "law_p")

        budget = probe_lib.final_budget(cfg, selection, dataset.n_train)
        final_staged = _final_training(cfg, selection.chosen, budget, dataset, base, track, progress)
        final = unwrap(track, final_staged, "final_training")
        tasks.copy_adapter(final["adapter_dir"], run_dir)

        report = unwrap(track, tasks.evaluate(cfg, final["adapter_dir"], dataset, base, track, run_dir, progress), "evaluation")

        summary = build_summary(
            cfg=cfg, run_name=run_name, run_dir=run_dir, dataset=dataset, base=base, selection=selection,
            probe_stats=[module_stats, joint_stats], final=final, final_cached=was_cached(final_staged),
            evaluation=report, tracking=_tracking_ids(track), prefect={"flow_run_id": str(flow_run.id)},
            wall_seconds=time.perf_counter() - started,
        )
        _write_summary(summary, run_dir, track)
    return summary


@contextlib.contextmanager
def _parent_run(cfg: MarsConfig, run_name: str) -> Iterator[TrackingContext]:
    """Open the flow run's MLflow parent run: FINISHED when the flow ends, FAILED when a stage raises."""
    workdir = Path(cfg.runtime.workdir).resolve()
    uri = default_tracking_uri(workdir)
    # A tracking server stores artifacts where it is configured to (S3, a volume); a local store keeps them here.
    artifact_root = None if uri.startswith(("http://", "https://")) else workdir / "mlflow-artifacts"
    tracker = Tracker(uri, cfg.tracking.experiment, artifact_root=artifact_root)
    tags = {"prefect.flow_run_id": str(flow_run.id), "git.commit": git_commit()}
    with tracker.run(run_name, tags=tags) as parent:
        tracker.log_params(parent, cfg.model_dump(mode="json"))
        yield TrackingContext(uri, cfg.tracking.experiment, parent, tags)


def _tag_inputs(track: TrackingContext, dataset, base) -> TrackingContext:
    """Add the dataset fingerprint and base model to the tags of the parent run and every later run."""
    track = track.with_tags(**{"mars.dataset_fingerprint": dataset.fingerprint, "mars.base_model": base.name})
    track.tracker().set_tags(track.parent_run_id, track.tags)
    return track


def _tracking_ids(track: TrackingContext) -> dict[str, str]:
    return {
        "tracking_uri": track.tracking_uri,
        "experiment_id": track.tracker().experiment_id,
        "run_id": track.parent_run_id,
    }


def _run_probes(cfg, specs, dataset, base, track, stage, progress):
    """Train the probes of one family in parallel; a probe that fails after its retries becomes a `failed` row."""
    tracker = track.tracker()
    stage_run_id = tracker.start_run(stage, parent_id=track.parent_run_id, tags={**track.tags, "mars.stage": stage})
    probe_track = track.under(stage_run_id)
    threads = max(1, (os.cpu_count() or 1) // cfg.runtime.probe_parallelism)
    probe_task = tasks.run_probe.with_options(
        retries=cfg.runtime.retries, retry_delay_seconds=cfg.runtime.retry_delay_seconds
    )
    started = time.perf_counter()
    # Closing a Dask runner drops its client, so the futures are read inside the block.
    with make_task_runner(cfg) as runner:
        futures = [
            runner.submit(probe_task, {"cfg": cfg, "spec": spec, "dataset": dataset, "base": base, "track": probe_track, "threads": threads})
            for spec in specs
        ]

        rows, trained, cached, failed = [], 0, 0, 0
        bar = tqdm(total=len(specs), desc=stage.replace("_", " "), unit="probe", disable=not progress)
        for spec, future in zip(specs, futures):
            state = future.wait() or future.state
            if state.is_completed():
                staged: Staged = future.result()
                cached += was_cached(staged)
                trained += not was_cached(staged)
                rows.append(unwrap(probe_track, staged, "probe", name=f"probe {spec.label}"))
            else:
                failed += 1
                log.warning("probe %s failed after its retries: %s", spec.label, future.result(raise_on_failure=False))
                rows.append(probe_lib.failed_row(spec))
            bar.update(1)
        bar.close()

    stats = {"family": stage, "total": len(specs), "trained": trained, "cached": cached, "failed": failed,
             "seconds": sum(r.wall_seconds for r in rows if r.wall_seconds), "samples": sum(r.samples_seen for r in rows)}
    tracker.log_metrics(stage_run_id, {**stats, "wall_seconds": time.perf_counter() - started})
    tracker.finish(stage_run_id, "FINISHED")
    log.info("%s: %d probes, %d trained, %d cached, %d failed", stage, len(specs), trained, cached, failed)
    return rows, stats


def _final_training(cfg, ranks, budget, dataset, base, track, progress):
    final_task = tasks.final_training.with_options(
        retries=cfg.runtime.retries, retry_delay_seconds=cfg.runtime.retry_delay_seconds
    )
    return final_task(cfg, ranks, budget, dataset, base, track, progress=progress)


def _write_summary(summary: dict[str, Any], run_dir: Path, track: TrackingContext) -> None:
    path = run_dir / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True))
    tmp.replace(path)
    tracker = track.tracker()
    tracker.log_artifact(track.parent_run_id, path)
    tracker.log_metrics(track.parent_run_id, {"final": summary["final"], "cost": summary["cost"]})
    tracker.set_tags(track.parent_run_id, {"mars.chosen": json.dumps(summary["chosen"])})
