"""Inspection of a base model: its modules, their LoRA targets, and trainable parameters per rank."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mars_core.config import MarsConfig
from mars_core.model.base import ProcessorLoadError, load_processor, meta_model, prepare_base_model
from mars_core.model.families import model_type
from mars_core.model.modules import split_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModuleReport:
    """One module: where it sits, its LoRA-targetable linear layers, and what a rank costs."""

    name: str
    prefix: str
    linear_layers: tuple[str, ...]
    params_per_rank: int
    total_params: int


@dataclass(frozen=True)
class ModelReport:
    """The modules of a base model, as module discovery and ``model.module_patterns`` split it."""

    path: str
    architecture: str
    model_type: str | None
    modules: tuple[ModuleReport, ...]
    processor_problem: str | None = None


def inspect_model(cfg: MarsConfig, cache_root: Path) -> ModelReport:
    """Split the base model of ``cfg.model`` into modules without loading its weights.

    The module tree is built on the meta device. ``params_per_rank`` is the
    sum of ``in_features + out_features`` over a module's linear layers: the
    LoRA parameters one unit of rank adds to that module.

    Raises ``ModuleDiscoveryError`` (with the model's submodules listed)
    when a module of ``lora.modules`` is not found.
    """
    base = prepare_base_model(cfg.model, cache_root, check_processor=False)
    model = meta_model(cfg.model, base)
    targets = split_model(model, cfg.model.module_patterns, cfg.lora.modules)

    modules = []
    for target in targets.values():
        per_rank = 0
        for layer in target.linear_layers:
            linear = model.get_submodule(layer)
            per_rank += linear.in_features + linear.out_features
        total = sum(p.numel() for p in model.get_submodule(target.prefix).parameters()) if target.prefix else 0
        modules.append(ModuleReport(target.name, target.prefix, target.linear_layers, per_rank, total))
    log.info("inspect: %s (%s) has modules %s", base.path, type(model).__name__, [m.name for m in modules])
    processor_problem = None
    if cfg.model.name_or_path != "demo":
        try:
            load_processor(cfg.model, Path(base.path))
        except ProcessorLoadError as exc:
            processor_problem = str(exc)
    return ModelReport(base.path, type(model).__name__, model_type(model), tuple(modules), processor_problem)


def format_report(report: ModelReport, show_layers: bool = True) -> str:
    """Render a ``ModelReport`` as text for the terminal."""
    lines = [f"model: {report.path}", f"architecture: {report.architecture} (model_type {report.model_type})", ""]
    for module in report.modules:
        lines.append(
            f"{module.name}: {module.prefix or '<root>'}, {module.total_params:,} parameters, "
            f"{len(module.linear_layers)} linear layers, {module.params_per_rank:,} trainable parameters per unit of rank"
        )
        if show_layers:
            lines += [f"    {layer}" for layer in module.linear_layers]
    if report.processor_problem:
        lines += ["", f"warning: `mars run` would stop at the base-model stage: {report.processor_problem}"]
    return "\n".join(lines)
