"""Prefect tasks: one per stage of the method, each a thin call into ``mars_core``.

Caching is declared here, on the tasks: every key is derived from content
(dataset and base-model fingerprints, the stage's configuration, the stage's
code version), never from run ids, so a rerun of the same search reuses
every finished stage. Results persist under the work directory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from prefect import task

from flows.cache import cache_key
from flows.stages import Staged, TrackingContext, stage_run
from mars_core import probes as probe_lib
from mars_core.config import MarsConfig
from mars_core.data import DatasetInfo, prepare_dataset as build_dataset, validate_dataset
from mars_core.model import BaseModelInfo, prepare_base_model
from mars_core import search
from mars_core.search import ProbeRow, PruneResult, Selection
from mars_core.train import RunSpec, evaluate as evaluate_adapter, train_run

log = logging.getLogger("mars")


def _workdir(cfg: MarsConfig) -> Path:
    return Path(cfg.runtime.workdir).resolve()


# ---------------------------------------------------------------- dataset


def _path_stage_key(stage: str, section: str, cfg: MarsConfig) -> str:
    """Key a stage whose result is a path under the work directory, so another work directory does not reuse it."""
    return cache_key(stage, **{section: getattr(cfg, section).model_dump(mode="json")}, workdir=str(_workdir(cfg)))


def _dataset_key(_ctx: Any, p: dict[str, Any]) -> str:
    return _path_stage_key("dataset", "data", p["cfg"])


@task(name="prepare-dataset", cache_key_fn=_dataset_key, persist_result=True)
def prepare_dataset(cfg: MarsConfig, track: TrackingContext, progress: bool = True) -> Staged[DatasetInfo]:
    """Build or convert the dataset into Parquet shards and check every row once."""
    with stage_run(track, "dataset") as rec:
        info = build_dataset(cfg.data, _workdir(cfg) / "datasets", progress=progress)
        validate_dataset(info.path)
        rec.tracker.set_tags(rec.run_id, {"mars.dataset_fingerprint": info.fingerprint})
        rec.tracker.log_params(rec.run_id, {"data": cfg.data.model_dump(mode="json")})
        rec.tracker.log_dataset(
            rec.run_id, name=f"{cfg.data.source}", fingerprint=info.fingerprint, source=info.path,
            context="train", profile={"n_train": info.n_train, "n_val": info.n_val, "n_test": info.n_test},
        )
        rec.tracker.log_artifact(rec.run_id, Path(info.path) / "manifest.json")
        rec.metrics.update(n_train=info.n_train, n_val=info.n_val, n_test=info.n_test)
    log.info("dataset: %d train / %d val / %d test, fingerprint %s", info.n_train, info.n_val, info.n_test, info.fingerprint)
    return rec.staged(info)


# ---------------------------------------------------------------- base model


def _base_key(_ctx: Any, p: dict[str, Any]) -> str:
    return _path_stage_key("base_model", "model", p["cfg"])


@task(name="prepare-base-model", cache_key_fn=_base_key, persist_result=True)
def prepare_base(cfg: MarsConfig, track: TrackingContext, progress: bool = True) -> Staged[BaseModelInfo]:
    """Build (demo) or locate the base model and fingerprint it."""
    with stage_run(track, "base_model") as rec:
        base = prepare_base_model(cfg.model, _workdir(cfg) / "models", progress=progress)
        rec.tracker.log_params(rec.run_id, {"model": cfg.model.model_dump(mode="json")})
        rec.tracker.set_tags(rec.run_id, {"mars.base_model": base.name, "mars.base_model_fingerprint": base.fingerprint})
    log.info("base model: %s (fingerprint %s)", base.name, base.fingerprint)
    return rec.staged(base)


# ---------------------------------------------------------------- probes


def _probe_key(_ctx: Any, p: dict[str, Any]) -> str:
    cfg: MarsConfig = p["cfg"]
    spec: probe_lib.ProbeSpec = p["spec"]
    return cache_key(
        "probe",
        spec=spec.probe_id,
        dataset=p["dataset"].fingerprint,
        base=p["base"].fingerprint,
        settings=cfg.digest("lora", "train"),
        delta=cfg.search.delta,
    )


@task(name="probe", cache_key_fn=_probe_key, persist_result=True, task_run_name="probe-{spec.probe_id}")
def run_probe(
    cfg: MarsConfig,
    spec: probe_lib.ProbeSpec,
    dataset: DatasetInfo,
    base: BaseModelInfo,
    track: TrackingContext,
    threads: int | None = None,
) -> Staged[ProbeRow]:
    """Train one probe and turn its validation-loss curve into a probe-table row."""
    with stage_run(track, "probe", name=f"probe {spec.label}") as rec:
        row = probe_lib.run_probe(cfg, base, dataset, spec, threads=threads)
        rec.tracker.log_params(rec.run_id, spec.params())
        rec.tracker.log_curve(rec.run_id, "val_loss", row.curve)
        rec.tracker.set_tags(rec.run_id, {"mars.probe_id": row.probe_id, "mars.probe_status": row.status})
        rec.metrics.update(probe_lib.row_metrics(row))
        if row.status == "failed":
            # Raising lets Prefect retry; after the last retry the flow keeps a `failed` row.
            raise RuntimeError(f"probe {spec.label} failed; see the log above for the reason")
    return rec.staged(row)


# ---------------------------------------------------------------- laws


@task(name="fit-law-t-and-prune")
def fit_law_t_and_prune(
    cfg: MarsConfig, rows: list[ProbeRow], n_train: int, track: TrackingContext
) -> Staged[PruneResult]:
    """Fit Law-T per module on the module probes and keep the aligned rank pairs."""
    with stage_run(track, "law_t") as rec:
        law_t = search.fit_convergence_laws(
            rows, cfg.lora.modules, bootstrap=cfg.search.bootstrap, seed=cfg.search.seed
        )
        pruned = search.prune(law_t, cfg.probes.grid(), n_train, cfg.search.tolerance, cfg.search.default_ranks)
        rec.metrics.update(probe_lib.law_t_metrics(law_t, pruned))
        rec.tracker.log_json(rec.run_id, pruned.to_dict() | {"law_t": law_t.to_dict()}, "law_t.json")
    return rec.staged(pruned)


@task(name="fit-law-p-and-select")
def fit_law_p_and_select(
    cfg: MarsConfig,
    pruned: PruneResult,
    module_rows: list[ProbeRow],
    joint_rows: list[ProbeRow],
    n_train: int,
    track: TrackingContext,
    run_dir: Path,
) -> Staged[Selection]:
    """Fit Law-P on the joint probes and select the aligned pair with the lowest predicted loss."""
    with stage_run(track, "law_p") as rec:
        rows = module_rows + joint_rows
        param_model = search.fit_trainable_params(rows, cfg.lora.modules)
        law_p = search.fit_performance_law(
            rows, cfg.lora.modules, param_model,
            form=cfg.search.law_p_form, bootstrap=cfg.search.bootstrap, seed=cfg.search.seed,
        )
        selection = search.select(pruned, law_p, param_model, cfg.search.max_trainable_params)
        search.write_probe_table(rows, run_dir / "probes.parquet", cfg.lora.modules)
        search.write_selection_outputs(selection, run_dir)
        for name in ("probes.parquet", "selection.json"):
            rec.tracker.log_artifact(rec.run_id, run_dir / name)
        for plot in sorted(run_dir.glob("*.png")):
            rec.tracker.log_artifact(rec.run_id, plot, "plots")
        rec.metrics.update(probe_lib.selection_metrics(selection))
    return rec.staged(selection)


# ---------------------------------------------------------------- final training and evaluation


def _lr_scale_content(lr_scale: dict[str, float] | None) -> dict[str, float] | None:
    """Drop learning-rate scales of 1, which change nothing, so that equal runs get equal cache keys."""
    scales = {module: float(scale) for module, scale in sorted((lr_scale or {}).items()) if float(scale) != 1.0}
    return scales or None


def _final_key(_ctx: Any, p: dict[str, Any]) -> str:
    cfg: MarsConfig = p["cfg"]
    return cache_key(
        "final",
        workdir=str(_workdir(cfg)),
        ranks=p["ranks"],
        budget=p["budget_samples"],
        lr_scale=_lr_scale_content(p.get("lr_scale")),
        adapter=p.get("adapter") or "lora",
        dataset=p["dataset"].fingerprint,
        base=p["base"].fingerprint,
        settings=cfg.digest("lora", "train", "final"),
    )


@task(name="final-training", cache_key_fn=_final_key, persist_result=True)
def final_training(
    cfg: MarsConfig,
    ranks: dict[str, int],
    budget_samples: int,
    dataset: DatasetInfo,
    base: BaseModelInfo,
    track: TrackingContext,
    lr_scale: dict[str, float] | None = None,
    adapter: str = "lora",
    threads: int | None = None,
    progress: bool = True,
) -> Staged[dict[str, Any]]:
    """Train once on the full training split with the given ranks; resumes from a checkpoint.

    ``lr_scale`` and ``adapter`` are passed to ``RunSpec`` (the baselines
    use them) and are part of the cache key. ``threads`` (default:
    ``train.torch_threads``, else every core) only sets torch's thread count
    and ``progress`` shows a progress bar, so neither is.
    """
    out_dir = _workdir(cfg) / "final" / _final_key(None, locals())
    with stage_run(track, "final_training") as rec:
        spec = RunSpec(ranks=dict(ranks), n_train=dataset.n_train, budget_samples=budget_samples, kind="final",
                       lr_scale=_lr_scale_content(lr_scale), adapter=adapter)
        threads = threads or cfg.train.torch_threads or os.cpu_count()
        result = train_run(cfg, base, dataset, spec, out_dir, threads=threads, progress=progress)
        rec.tracker.log_params(
            rec.run_id,
            {"ranks": ranks, "budget_samples": budget_samples, "lr_scale": spec.lr_scale or {}, "adapter": adapter},
        )
        rec.tracker.log_curve(rec.run_id, "val_loss", result.curve)
        if result.status != "ok":
            raise RuntimeError(f"final training failed: {result.reason}")
        rec.tracker.log_artifact(rec.run_id, Path(result.adapter_dir), "adapter")
        rec.metrics.update(
            val_loss=result.final_val_loss, samples=result.samples_seen, trainable_params=result.trainable_params
        )
    outcome = {
        "adapter_dir": result.adapter_dir,
        "val_loss": result.final_val_loss,
        "samples": result.samples_seen,
        "seconds": result.wall_seconds,
        "trainable_params": result.trainable_params,
        "curve": result.curve,
        "lr_scale": spec.lr_scale,
        "adapter": adapter,
    }
    log.info(
        "final training: ranks %s, %d samples, val loss %.4f, %.1f s",
        ranks, result.samples_seen, result.final_val_loss, result.wall_seconds,
    )
    return rec.staged(outcome)


def _evaluation_key(_ctx: Any, p: dict[str, Any]) -> str:
    return cache_key("evaluation", adapter=p["adapter_dir"], dataset=p["dataset"].fingerprint, base=p["base"].fingerprint)


@task(name="evaluate", cache_key_fn=_evaluation_key, persist_result=True)
def evaluate(
    cfg: MarsConfig, adapter_dir: str, dataset: DatasetInfo, base: BaseModelInfo, track: TrackingContext, run_dir: Path,
    progress: bool = True,
) -> Staged[dict[str, Any]]:
    """Evaluate the final adapter on the held-out test split."""
    with stage_run(track, "evaluation") as rec:
        report = evaluate_adapter(cfg, base, dataset, adapter_dir, split="test", progress=progress)
        path = run_dir / "evaluation.json"
        path.write_text(json.dumps(report, indent=2, sort_keys=True))
        rec.tracker.log_artifact(rec.run_id, path)
        rec.metrics.update(test_loss=report["loss"], test_perplexity=report["perplexity"], test_accuracy=report["accuracy"])
    log.info("evaluation: test loss %.4f, accuracy %.3f on %d examples", report["loss"], report["accuracy"], report["n"])
    return rec.staged(report)


def copy_adapter(adapter_dir: str, run_dir: Path) -> Path:
    target = run_dir / "adapter"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(adapter_dir, target)
    return target
