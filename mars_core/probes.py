"""Probe planning and execution: from the configuration to probe-table rows.

This module joins the training engine (``mars_core.train``) to the search
core (``mars_core.search``): it plans the module and joint probes of the
method, trains one probe, and measures its convergence time.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

from mars_core.config import MarsConfig
from mars_core.data import DatasetInfo
from mars_core.model import BaseModelInfo
from mars_core.search import (
    LawTResult,
    ProbeRow,
    PruneResult,
    Selection,
    curve_to_convergence,
    joint_design,
    joint_probe_budget,
    module_probe_ranks,
    probe_id,
)
from mars_core.train import RunSpec, train_run

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeSpec:
    """One planned probe: which ranks, on how many examples, for how many samples."""

    kind: str
    module: str
    ranks: dict[str, int] = field(hash=False)
    n_train: int
    budget_samples: int
    probe_id: str

    @property
    def label(self) -> str:
        if self.kind == "module":
            return f"{self.module} r={self.ranks[self.module]} D={self.n_train}"
        return "joint " + " ".join(f"{m}={r}" for m, r in self.ranks.items())

    def params(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "module": self.module,
            "ranks": dict(self.ranks),
            "n_train": self.n_train,
            "budget_samples": self.budget_samples,
        }


# Runs with more passes over their data than this get a warning. On a small dataset the default budgets,
# which suit thousands of examples, mostly cost time.
MANY_PASSES = 20


def data_sizes(cfg: MarsConfig, n_train_total: int) -> tuple[int, int]:
    """D1 and D2 in examples, from the configured fractions of the training split."""
    d1, d2 = (max(1, round(fraction * n_train_total)) for fraction in cfg.probes.data_fractions)
    if d1 >= d2:
        raise ValueError(
            f"the training split has {n_train_total} examples, too few for distinct probe data sizes "
            f"{cfg.probes.data_fractions}; use a larger dataset or wider probes.data_fractions"
        )
    return d1, d2


def _make_spec(
    cfg: MarsConfig, kind: str, module: str, ranks: dict[str, int], n_train: int, budget: int, content: str
) -> ProbeSpec:
    pid = probe_id(kind, ranks, n_train, budget, f"{cfg.digest('lora', 'train', 'model')}-{content}")
    return ProbeSpec(kind, module, ranks, n_train, budget, pid)


def plan_module_probes(cfg: MarsConfig, dataset: DatasetInfo, base: BaseModelInfo) -> list[ProbeSpec]:
    """Module probes: each module alone, at a few ranks spread over the grid, at D1 and D2."""
    content = f"{dataset.fingerprint}-{base.fingerprint}"
    ranks = module_probe_ranks(cfg.probes.grid(), cfg.probes.ranks_per_module)
    sizes = data_sizes(cfg, dataset.n_train)
    d1 = sizes[0]
    passes = cfg.probes.module_budget_samples / d1
    if passes > MANY_PASSES:
        log.warning("module probes: probes.module_budget_samples=%d is %.0f passes over D1=%d examples; "
                    "on a dataset this small, lower it to save time", cfg.probes.module_budget_samples, passes, d1)
    specs = []
    for module in cfg.lora.modules:
        for n_train in sizes:
            for rank in ranks:
                probe_ranks = {m: (rank if m == module else 0) for m in cfg.lora.modules}
                specs.append(
                    _make_spec(cfg, "module", module, probe_ranks, n_train, cfg.probes.module_budget_samples, content)
                )
    return specs


def plan_joint_probes(
    cfg: MarsConfig, law_t: LawTResult, dataset: DatasetInfo, base: BaseModelInfo
) -> list[ProbeSpec]:
    """Joint probes at D2: grid corners plus a Latin-hypercube fill, trained long enough to converge per Law-T."""
    content = f"{dataset.fingerprint}-{base.fingerprint}"
    _, d2 = data_sizes(cfg, dataset.n_train)
    design = joint_design(cfg.probes.grid(), cfg.lora.modules, cfg.probes.joint_probes, seed=cfg.search.seed)
    budget = joint_probe_budget(
        law_t, design, d2, cfg.probes.joint_budget_margin, tuple(cfg.probes.joint_budget_bounds)
    )
    log.info("joint probes: %d pairs at D2=%d, %d samples each (from Law-T)", len(design), d2, budget)
    return [_make_spec(cfg, "joint", "", dict(ranks), d2, budget, content) for ranks in design]


def run_probe(
    cfg: MarsConfig, base: BaseModelInfo, dataset: DatasetInfo, spec: ProbeSpec, threads: int | None = None
) -> ProbeRow:
    """Train one probe and measure its convergence time; a failed run gives a ``failed`` row."""
    run = RunSpec(ranks=dict(spec.ranks), n_train=spec.n_train, budget_samples=spec.budget_samples, kind="probe")
    result = train_run(cfg, base, dataset, run, out_dir=None, threads=threads)
    if result.status != "ok":
        log.warning("probe %s failed: %s", spec.label, result.reason)
        return _row(spec, result.curve, result.samples_seen, None, None, "failed", result.wall_seconds,
                    result.trainable_params)

    t_conv, status, _fit = curve_to_convergence(result.curve, result.samples_seen, cfg.search.delta)
    log.info(
        "probe %s: val loss %.4f, t_conv %s (%s), %.1f s",
        spec.label, result.final_val_loss, "n/a" if t_conv is None else f"{t_conv:.0f}", status, result.wall_seconds,
    )
    return _row(spec, result.curve, result.samples_seen, t_conv, result.final_val_loss, status,
                result.wall_seconds, result.trainable_params)


def failed_row(spec: ProbeSpec, trainable_params: int | None = None) -> ProbeRow:
    """Return the row of a probe that failed after its retries: kept in the table, left out of the fits."""
    return _row(spec, [], 0, None, None, "failed", None, trainable_params)


def _row(spec, curve, samples_seen, t_conv, final_val_loss, status, wall_seconds, trainable_params) -> ProbeRow:
    return ProbeRow(
        probe_id=spec.probe_id,
        kind=spec.kind,
        module=spec.module,
        ranks=dict(spec.ranks),
        n_train=spec.n_train,
        samples_seen=int(samples_seen),
        t_conv=t_conv,
        final_val_loss=final_val_loss,
        status=status,
        wall_seconds=wall_seconds,
        trainable_params=trainable_params,
        curve=[(int(s), float(v)) for s, v in curve],
    )


def final_budget(cfg: MarsConfig, selection: Selection, n_train: int) -> int:
    """Samples for the final run: ``(1 + margin) * max_m t_m`` at Dstar within bounds, or whole epochs."""
    if cfg.final.budget == "epochs":
        return max(1, math.ceil(cfg.final.epochs * n_train))
    times = [t for t in selection.chosen_t_conv.values() if t is not None and math.isfinite(t)]
    if not times:
        log.warning("final budget: Law-T gives no finite convergence time for %s; using final.max_samples", selection.chosen)
        return cfg.final.max_samples
    budget = int(min(max(math.ceil((1 + cfg.final.margin) * max(times)), cfg.final.min_samples), cfg.final.max_samples))
    if budget / n_train > MANY_PASSES:
        log.warning("final budget: %d samples are %.0f passes over the %d training examples; on a dataset this "
                    "small, lower final.min_samples (now %d)", budget, budget / n_train, n_train, cfg.final.min_samples)
    return budget


def row_metrics(row: ProbeRow) -> dict[str, float | None]:
    return {
        "t_conv": row.t_conv,
        "final_val_loss": row.final_val_loss,
        "samples": row.samples_seen,
        "trainable_params": row.trainable_params,
        "wall_seconds": row.wall_seconds,
    }


def law_t_metrics(law_t: LawTResult, pruned: PruneResult) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {"candidates_after_pruning": len(pruned.kept())}
    for module, law in law_t.laws.items():
        metrics[f"law_t.{module}.r2"] = law.r2_log
        metrics[f"law_t.{module}.loo_rel_error"] = law.loo_relative_error
        for name, value in law.params.items():
            metrics[f"law_t.{module}.{name}"] = value
    return metrics


def selection_metrics(selection: Selection) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {f"chosen.r_{m}": r for m, r in selection.chosen.items()}
    metrics["chosen.predicted_val_loss"] = selection.chosen_predicted_loss
    metrics["chosen.trainable_params"] = selection.chosen_trainable_params
    if selection.law_p is not None:
        metrics["law_p.r2"] = selection.law_p.r2
        metrics["law_p.loo_rel_error"] = selection.law_p.loo_relative_error
        for name, value in selection.law_p.params.items():
            metrics[f"law_p.{name}"] = value
    return metrics
