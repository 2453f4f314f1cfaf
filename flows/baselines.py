"""The baselines MARS is compared with, as Prefect flows.

Each flow prepares the dataset and base model through the search's own
cached tasks, trains with ``tasks.final_training`` on the full training split
for ``budget_samples`` samples, evaluates on the test split and returns one
``MethodResult`` dict per variant:

- ``uniform_baseline``: one rank for every module (8, and 128 where it fits
  ``search.max_trainable_params``);
- ``differential_lr_baseline``: uniform rank 8 with the vision learning rate
  scaled by 0.1 and by 10;
- ``adalora_baseline``: PEFT's AdaLoRA at the average target rank whose
  parameter count is nearest to a reference pair's (the MARS choice);
- ``grid_baseline``: every pair of the rank grid; the best on validation
  loss is evaluated on the test split.

Runs of one flow (the variants, the grid's pairs) train as many at a time
as its task runner allows (``with_parallelism`` sets it to
``runtime.probe_parallelism``), with the cores divided among them, as
probes do: ``train.torch_threads`` threads each when set.

A run with the same content as another has the same cache key, whatever
its thread count. So the grid pair equal to the MARS choice reuses the
search's final run, and the grid's (8, 8) pair reuses uniform rank 8.

In MLflow each flow opens one run for its method (nested under
``parent_run_id`` when given), one child run per variant, and under that
the stage runs of final training and evaluation.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import Flow, flow
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm.auto import tqdm

from flows import tasks
from flows.stages import TrackingContext, unwrap, was_cached
from flows.tracking import Tracker, default_tracking_uri, git_commit
from mars_core.benchmark import (
    UNIFORM_RANKS,
    VISION_LR_SCALES,
    GridPoint,
    MethodResult,
    adalora_final_ranks,
    best_grid_point,
    count_adapter_params,
    match_adalora_rank,
)
from mars_core.config import MarsConfig
from mars_core.data import DatasetInfo
from mars_core.model import BaseModelInfo, count_trainable_params
from mars_core.model.lora import adapted_layer_counts, trainable_param_coefficients

log = logging.getLogger("mars")

TAG_METHOD = "mars.method"
TAG_VARIANT = "mars.variant"


@flow(name="baseline-uniform", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
def uniform_baseline(
    config: dict[str, Any],
    budget_samples: int | None = None,
    ranks: tuple[int, ...] = UNIFORM_RANKS,
    parent_run_id: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train one rank for every module, once per rank in ``ranks``; ranks above the parameter cap are skipped."""
    cfg = MarsConfig.model_validate(config)
    with _method_run(cfg, "uniform", parent_run_id) as track:
        dataset, base = _prepare(cfg, track)
        budget = resolve_budget(cfg, budget_samples, dataset.n_train)
        variants, skipped = [], []
        for rank in ranks:
            variant = Variant(f"uniform r={rank}", "uniform", {module: rank for module in cfg.lora.modules})
            too_large = _above_cap(cfg, base, variant.ranks)
            if too_large:
                log.info("%s skipped: %s", variant.name, too_large)
                skipped.append(MethodResult.not_run(variant.name, "uniform", variant.ranks, "skipped", too_large))
            else:
                variants.append(variant)
        rows = _train_variants(cfg, track, variants, budget, dataset, base, progress) + skipped
    return [row.to_dict() for row in rows]


@flow(name="baseline-differential-lr", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
def differential_lr_baseline(
    config: dict[str, Any],
    budget_samples: int | None = None,
    rank: int = UNIFORM_RANKS[0],
    lr_scales: tuple[float, ...] = VISION_LR_SCALES,
    module: str = "vision",
    parent_run_id: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train uniform rank ``rank`` with ``module``'s learning rate scaled by each factor of ``lr_scales``."""
    cfg = MarsConfig.model_validate(config)
    if module not in cfg.lora.modules:
        raise ValueError(
            f"differential-lr scales the learning rate of module {module!r}, which is not in lora.modules "
            f"{cfg.lora.modules}; pass module= one of them"
        )
    with _method_run(cfg, "differential-lr", parent_run_id) as track:
        dataset, base = _prepare(cfg, track)
        budget = resolve_budget(cfg, budget_samples, dataset.n_train)
        pair = {m: rank for m in cfg.lora.modules}
        variants = [
            Variant(f"differential-lr {module} lr x{scale:g}", "differential-lr", pair, lr_scale={module: scale})
            for scale in lr_scales
        ]
        rows = _train_variants(cfg, track, variants, budget, dataset, base, progress)
    return [row.to_dict() for row in rows]


@flow(name="baseline-adalora", log_prints=False)
def adalora_baseline(
    config: dict[str, Any],
    reference_ranks: dict[str, int],
    budget_samples: int | None = None,
    parent_run_id: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train AdaLoRA at the average target rank whose parameters best match LoRA with ``reference_ranks``."""
    cfg = MarsConfig.model_validate(config)
    with _method_run(cfg, "adalora", parent_run_id) as track:
        dataset, base = _prepare(cfg, track)
        budget = resolve_budget(cfg, budget_samples, dataset.n_train)
        match = adalora_match(cfg, base, reference_ranks)
        log.info("AdaLoRA: target rank %d gives %d parameters for the %d of LoRA %s (%+.1f%%)",
                 match.target_rank, match.matched_params, match.reference_params, reference_ranks,
                 100 * match.relative_gap)
        pair = {module: match.target_rank for module in cfg.lora.modules}
        variant = Variant(f"adalora target r={match.target_rank}", "adalora", pair, adapter="adalora")
        (row,) = _train_variants(cfg, track, [variant], budget, dataset, base, progress)
        row.details["match"] = match.to_dict()
        row.details["reference_ranks"] = dict(reference_ranks)
    return [row.to_dict()]


@flow(name="baseline-grid", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=False)
def grid_baseline(
    config: dict[str, Any],
    budget_samples: int | None = None,
    parent_run_id: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train every pair of the rank grid, pick the lowest validation loss and evaluate that pair on the test split.

    Returns ``{"rows": [the best pair's row], "points": [every pair]}``; a
    pair that fails after its retries is kept as a point with status ``failed``.
    """
    cfg = MarsConfig.model_validate(config)
    with _method_run(cfg, "grid", parent_run_id) as track:
        dataset, base = _prepare(cfg, track)
        budget = resolve_budget(cfg, budget_samples, dataset.n_train)
        pairs = grid_pairs(cfg)
        points = _train_grid(cfg, track, pairs, budget, dataset, base, progress)

        best = best_grid_point(points)
        log.info("grid: best pair %s, validation loss %.4f", best.ranks, best.val_loss)
        (row,) = _train_variants(cfg, track, [Variant("grid best", "grid", best.ranks)], budget, dataset, base,
                                 progress)
        row.wall_seconds = sum(p.wall_seconds or 0.0 for p in points)
        row.samples = sum(p.samples or 0 for p in points)
        row.details["pairs"] = len(points)
        row.details["failed_pairs"] = sum(p.status != "ok" for p in points)
        track.tracker().log_metrics(track.parent_run_id, {"grid_seconds": row.wall_seconds, "grid_samples": row.samples})
    return {"rows": [row.to_dict()], "points": [point.to_dict() for point in points]}


def with_parallelism(baseline: Flow, cfg: MarsConfig) -> Flow:
    """Return the baseline flow set to train ``runtime.probe_parallelism`` runs at a time."""
    return baseline.with_options(task_runner=ThreadPoolTaskRunner(max_workers=cfg.runtime.probe_parallelism))


def grid_pairs(cfg: MarsConfig) -> list[dict[str, int]]:
    """List every combination of the grid's ranks over ``lora.modules``, in grid order."""
    grid = cfg.probes.grid()
    return [dict(zip(cfg.lora.modules, combo, strict=True)) for combo in itertools.product(grid, repeat=len(cfg.lora.modules))]


def resolve_budget(cfg: MarsConfig, budget_samples: int | None, n_train: int) -> int:
    """Samples per run: the given budget, else ``final.epochs`` passes when ``final.budget`` is ``epochs``."""
    if budget_samples is not None:
        if isinstance(budget_samples, bool) or not isinstance(budget_samples, int) or budget_samples < 1:
            raise ValueError(f"budget_samples={budget_samples!r} must be an integer >= 1")
        return budget_samples
    if cfg.final.budget == "epochs":
        return max(1, math.ceil(cfg.final.epochs * n_train))
    raise ValueError(
        "final.budget=auto takes the budget from a MARS search's Law-T, so a baseline alone has none: pass "
        "budget_samples (`mars benchmark` passes the MARS final run's), or set final.budget=epochs"
    )


def adalora_match(cfg: MarsConfig, base: BaseModelInfo, reference_ranks: dict[str, int]):
    """AdaLoRA's average target rank whose parameter count after pruning is nearest to LoRA at ``reference_ranks``.

    NOTE: with ``lora.projector: lora`` AdaLoRA also replaces the projector's
    LoRA, which this count keeps at ``lora.projector_rank``; the match is
    then approximate.
    """
    reference = count_trainable_params(cfg, base, reference_ranks)
    fixed, widths = trainable_param_coefficients(cfg, base)
    layers = adapted_layer_counts(cfg, base)
    return match_adalora_rank(reference, fixed, sum(widths.values()), sum(layers.values()))


# ---------------------------------------------------------------- shared steps


@contextlib.contextmanager
def _method_run(cfg: MarsConfig, method: str, parent_run_id: str | None) -> Iterator[TrackingContext]:
    """Open the method's MLflow run; it is FAILED when the block raises."""
    workdir = Path(cfg.runtime.workdir).resolve()
    uri = default_tracking_uri(workdir)
    tracker = Tracker(uri, cfg.tracking.experiment, artifact_root=workdir / "mlflow-artifacts")
    tags = {"prefect.flow_run_id": str(flow_run.id), "git.commit": git_commit(), TAG_METHOD: method}
    log.info("baseline %s: started", method)
    with tracker.run(method, parent_id=parent_run_id, tags=tags) as run_id:
        if parent_run_id is None:
            tracker.log_params(run_id, cfg.model_dump(mode="json"))
        yield TrackingContext(uri, cfg.tracking.experiment, run_id, tags)
    log.info("baseline %s: finished", method)


def _prepare(cfg: MarsConfig, track: TrackingContext) -> tuple[DatasetInfo, BaseModelInfo]:
    dataset = unwrap(track, tasks.prepare_dataset(cfg, track), "dataset")
    base = unwrap(track, tasks.prepare_base(cfg, track), "base_model")
    return dataset, base


def _final_task(cfg: MarsConfig):
    return tasks.final_training.with_options(
        retries=cfg.runtime.retries, retry_delay_seconds=cfg.runtime.retry_delay_seconds
    )


@dataclasses.dataclass(frozen=True)
class Variant:
    """One training run of a baseline: its row name, ranks, and what differs from plain LoRA."""

    name: str
    method: str
    ranks: dict[str, int]
    lr_scale: dict[str, float] | None = None
    adapter: str = "lora"


def _threads_per_run(cfg: MarsConfig) -> int:
    return cfg.train.torch_threads or max(1, (os.cpu_count() or 1) // cfg.runtime.probe_parallelism)


def _train_variants(
    cfg: MarsConfig,
    track: TrackingContext,
    variants: list[Variant],
    budget: int,
    dataset: DatasetInfo,
    base: BaseModelInfo,
    progress: bool,
) -> list[MethodResult]:
    """Train the variants at final length, as many at a time as the flow's task runner allows, then evaluate each.

    Each variant records under its own MLflow run. A variant whose training
    or evaluation fails after the retries becomes a ``failed`` row, so one
    diverging baseline does not stop the others.
    """
    tracker = track.tracker()
    final_task = _final_task(cfg)
    started = []
    for variant in variants:
        run_id = tracker.start_run(variant.name, parent_id=track.parent_run_id,
                                   tags={**track.tags, TAG_VARIANT: variant.name})
        future = final_task.submit(cfg, variant.ranks, budget, dataset, base, track.under(run_id),
                                   lr_scale=variant.lr_scale, adapter=variant.adapter, threads=_threads_per_run(cfg),
                                   progress=progress and len(variants) == 1)
        started.append((variant, run_id, future))

    rows = []
    for variant, run_id, future in started:
        try:
            row = _evaluate_variant(cfg, track.under(run_id), variant, future, dataset, base)
        except Exception as exc:  # recorded as a failed row; the traceback is in the task's log
            log.warning("%s failed: %s: %s", variant.name, type(exc).__name__, exc)
            tracker.finish(run_id, "FAILED")
            rows.append(MethodResult.not_run(variant.name, variant.method, variant.ranks, "failed",
                                             f"{type(exc).__name__}: {exc}"))
            continue
        tracker.log_metrics(run_id, {"val_loss": row.val_loss, "test_loss": row.test_loss,
                                     "test_accuracy": row.test_accuracy, "seconds": row.wall_seconds,
                                     "samples": row.samples, "trainable_params": row.trainable_params})
        tracker.finish(run_id, "FINISHED")
        log.info("%s: val loss %.4f, test loss %.4f, accuracy %.3f, %.0f s", variant.name, row.val_loss,
                 row.test_loss, row.test_accuracy, row.wall_seconds)
        rows.append(row)
    return rows


def _evaluate_variant(cfg, track, variant: Variant, future, dataset, base) -> MethodResult:
    staged = future.result()
    final = unwrap(track, staged, "final_training")
    run_dir = Path(cfg.runtime.workdir).resolve() / "baselines" / cfg.digest()[:10] / _slug(variant.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    report = unwrap(track, tasks.evaluate(cfg, final["adapter_dir"], dataset, base, track, run_dir), "evaluation")

    details: dict[str, Any] = {"adapter": variant.adapter, "lr_scale": variant.lr_scale,
                               "final_cached": was_cached(staged), "adapter_dir": final["adapter_dir"]}
    trainable = final["trainable_params"]
    if variant.adapter == "adalora":
        # AdaLoRA trains at its initial rank and saves each layer cut to its final rank.
        details["trained_params"] = trainable
        trainable = count_adapter_params(final["adapter_dir"])
        details["final_ranks"] = adalora_final_ranks(final["adapter_dir"])
    return MethodResult(
        name=variant.name, method=variant.method, ranks=dict(variant.ranks), val_loss=final["val_loss"],
        test_loss=report["loss"], test_accuracy=report["accuracy"], wall_seconds=final["seconds"],
        samples=final["samples"], trainable_params=trainable, details=details,
    )


def _train_grid(cfg, track, pairs, budget, dataset, base, progress) -> list[GridPoint]:
    """Train the grid's pairs in parallel; a pair that fails after its retries becomes a ``failed`` point."""
    final_task = _final_task(cfg)
    futures = [
        final_task.submit(cfg, ranks, budget, dataset, base, track, threads=_threads_per_run(cfg), progress=False)
        for ranks in pairs
    ]
    points, cached = [], 0
    bar = tqdm(total=len(pairs), desc="grid", unit="pair", disable=not progress)
    for ranks, future in zip(pairs, futures, strict=True):
        state = future.wait() or future.state
        if state.is_completed():
            staged = future.result()
            cached += was_cached(staged)
            final = unwrap(track, staged, "final_training", name=f"final_training {ranks}")
            points.append(GridPoint(ranks=dict(ranks), val_loss=final["val_loss"], wall_seconds=final["seconds"],
                                    samples=final["samples"], trainable_params=final["trainable_params"],
                                    cached=was_cached(staged)))
        else:
            log.warning("grid pair %s failed after its retries: %s", ranks, future.result(raise_on_failure=False))
            points.append(GridPoint(ranks=dict(ranks), val_loss=None, wall_seconds=None, samples=None,
                                    trainable_params=None, status="failed"))
        bar.update(1)
    bar.close()
    failed = sum(point.status != "ok" for point in points)
    log.info("grid: %d pairs, %d trained, %d cached, %d failed", len(pairs), len(pairs) - cached - failed, cached, failed)
    return points


def _above_cap(cfg: MarsConfig, base: BaseModelInfo, ranks: dict[str, int]) -> str | None:
    cap = cfg.search.max_trainable_params
    if cap is None:
        return None
    count = count_trainable_params(cfg, base, ranks)
    if count <= cap:
        return None
    return f"{count} trainable parameters, above search.max_trainable_params={cap}"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-")
