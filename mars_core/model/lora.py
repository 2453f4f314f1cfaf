"""LoRA per module: one rank per module through PEFT's ``rank_pattern``.

Every linear layer of a module with rank ``r > 0`` gets a LoRA adapter of
rank ``r`` and ``lora_alpha = alpha_ratio * r``, so a rank changes capacity
and not the effective learning rate (with rsLoRA the scale is
``alpha / sqrt(r)`` instead). Rank 0 leaves the module without adapters.
The projector is trained in full (PEFT ``modules_to_save``, so the saved
adapter carries it), frozen, or given LoRA of ``lora.projector_rank``.

Target layers and ranks are listed by full module name, so the saved
``adapter_config.json`` states the rank of every layer exactly.

``adapter="adalora"`` puts PEFT's AdaLoRA on the same layers instead: every
layer starts at ``ADALORA_INIT_RATIO`` times the target rank, and AdaLoRA
prunes singular values during training until the layers average the target
rank. The training loop adds the orthogonality penalty and calls
``update_and_allocate`` after each optimizer step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import re
from dataclasses import dataclass

import torch
from peft import AdaLoraConfig, LoraConfig, PeftModel, get_peft_model
from torch import nn

from mars_core.config import MarsConfig, ModelConfig
from mars_core.model.modules import ModuleTargets, describe_modules, discover_modules, split_model

log = logging.getLogger(__name__)

PROJECTOR = "projector"
ADAPTERS = ("lora", "adalora")

# AdaLoRA settings, taken from PEFT 0.21's AdaLoraConfig: layers start at 1.5
# times the target rank (its defaults init_r=12, target_r=8); the rank budget
# stays at its initial value for the first 10% of the optimizer steps,
# shrinks until 80% and is fixed for the last 20% (its docstring's example of
# tinit=10, tfinal=20, total_step=100); the orthogonality weight is its default.
ADALORA_INIT_RATIO = 1.5
ADALORA_WARMUP_SHARE = 0.1
ADALORA_FINAL_SHARE = 0.2
ADALORA_ORTH_REG_WEIGHT = 0.5


@dataclass(frozen=True)
class LoraPlan:
    """Training plan of a run: LoRA layers with their ranks, and modules trained in full."""

    layer_ranks: dict[str, int]
    layer_modules: dict[str, str]
    full_modules: dict[str, str]
    config: LoraConfig | AdaLoraConfig | None


def validate_ranks(cfg: MarsConfig, ranks: dict[str, int]) -> dict[str, int]:
    """Check that ``ranks`` gives one non-negative integer rank per module of ``lora.modules``."""
    expected = list(cfg.lora.modules)
    missing = [m for m in expected if m not in ranks]
    unknown = [m for m in ranks if m not in expected]
    if missing or unknown:
        raise ValueError(
            f"ranks {ranks} do not match lora.modules {expected}: "
            f"missing {missing}, unknown {unknown}; give one rank per module (0 = no adapter)"
        )
    clean = {}
    for module, rank in ranks.items():
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank of module {module!r} is {rank!r}; expected an integer >= 0 (0 = no adapter)")
        clean[module] = rank
    return clean


def adalora_target_rank(ranks: dict[str, int]) -> int:
    """Return AdaLoRA's average target rank from per-module ranks, which must agree where above 0.

    AdaLoRA has one rank budget for all its layers, so it cannot take a
    different rank per module.
    """
    used = sorted({rank for rank in ranks.values() if rank > 0})
    if len(used) != 1:
        raise ValueError(
            f"ranks {ranks} are invalid for AdaLoRA, which takes one average target rank: give every module "
            "with an adapter the same rank (0 = no adapter)"
        )
    return used[0]


def plan_lora(cfg: MarsConfig, targets: dict[str, ModuleTargets], ranks: dict[str, int]) -> LoraPlan:
    """Decide which layers get which rank and which modules are trained in full.

    Raises ``ValueError`` when a module of ``lora.modules`` was not found in
    the model, when the projector is needed but missing, or when nothing at
    all would be trained.
    """
    ranks = validate_ranks(cfg, ranks)
    _check_modules_found(cfg, targets)

    module_ranks = dict(ranks)
    full_modules: dict[str, str] = {}
    if PROJECTOR not in cfg.lora.modules and cfg.lora.projector != "freeze":
        projector = targets.get(PROJECTOR)
        if projector is None:
            raise ValueError(
                f"lora.projector={cfg.lora.projector!r} but no projector was found in the model "
                f"(found {describe_modules(targets)}); set lora.projector=freeze or name it in "
                "model.module_patterns.projector"
            )
        if cfg.lora.projector == "lora":
            module_ranks[PROJECTOR] = cfg.lora.projector_rank
        else:
            if not projector.prefix:
                raise ValueError("the projector pattern matches layers with no common parent; narrow model.module_patterns.projector")
            full_modules[PROJECTOR] = projector.prefix

    layer_ranks: dict[str, int] = {}
    layer_modules: dict[str, str] = {}
    for module, rank in module_ranks.items():
        if rank == 0:
            continue
        for layer in targets[module].linear_layers:
            layer_ranks[layer] = rank
            layer_modules[layer] = module

    if not layer_ranks and not full_modules:
        raise ValueError(f"ranks {ranks} leave nothing to train: give at least one module a rank >= 1")
    return LoraPlan(layer_ranks, layer_modules, full_modules, _lora_config(cfg, layer_ranks, full_modules))


def _check_modules_found(cfg: MarsConfig, targets: dict[str, ModuleTargets]) -> None:
    for module in cfg.lora.modules:
        if module not in targets:
            raise ValueError(
                f"module {module!r} of lora.modules was not found in the model (found {describe_modules(targets)}); "
                f"add a regex for it to model.module_patterns, e.g. {module}: '^model\\.{module}\\.'"
            )
        if not targets[module].linear_layers:
            raise ValueError(f"module {module!r} ({targets[module].prefix}) has no linear layer for LoRA to target")


def _lora_config(cfg: MarsConfig, layer_ranks: dict[str, int], full_modules: dict[str, str]) -> LoraConfig | None:
    if not layer_ranks:
        return None
    default_rank = max(layer_ranks.values())
    return LoraConfig(
        r=default_rank,
        lora_alpha=cfg.lora.alpha_ratio * default_rank,
        lora_dropout=cfg.lora.dropout,
        use_rslora=cfg.lora.use_rslora,
        target_modules=sorted(layer_ranks),
        rank_pattern={re.escape(layer): rank for layer, rank in sorted(layer_ranks.items())},
        alpha_pattern={re.escape(layer): cfg.lora.alpha_ratio * rank for layer, rank in sorted(layer_ranks.items())},
        modules_to_save=sorted(full_modules.values()) or None,
        bias="none",
    )


def _adalora_config(cfg: MarsConfig, plan: LoraPlan, target_rank: int, total_steps: int) -> AdaLoraConfig:
    init_rank = math.ceil(ADALORA_INIT_RATIO * target_rank)
    return AdaLoraConfig(
        target_r=target_rank,
        init_r=init_rank,
        tinit=int(ADALORA_WARMUP_SHARE * total_steps),
        tfinal=int(ADALORA_FINAL_SHARE * total_steps),
        deltaT=1,
        total_step=total_steps,
        orth_reg_weight=ADALORA_ORTH_REG_WEIGHT,
        # AdaLoRA scales by lora_alpha / init_r, so this keeps the scale at alpha_ratio, as for LoRA.
        lora_alpha=cfg.lora.alpha_ratio * init_rank,
        lora_dropout=cfg.lora.dropout,
        target_modules=sorted(plan.layer_ranks),
        modules_to_save=sorted(plan.full_modules.values()) or None,
        bias="none",
    )


def apply_lora(
    model: nn.Module,
    cfg: MarsConfig,
    ranks: dict[str, int],
    seed: int,
    adapter: str = "lora",
    total_steps: int | None = None,
) -> tuple[nn.Module, LoraPlan]:
    """Wrap ``model`` with LoRA (or AdaLoRA) adapters per module and freeze everything else.

    The LoRA ``A`` matrices are re-initialised from a generator seeded with
    ``seed`` (``B`` starts at zero, as PEFT does), so two runs in parallel
    threads do not draw from torch's shared global generator. AdaLoRA's
    factors are drawn the same way (``E`` starts at zero, as PEFT does).
    AdaLoRA needs ``total_steps``, the optimizer steps of the run, for its
    rank budget schedule.

    Returns the model to train and its plan. When only full modules are
    trained (every rank 0, projector trained), the model is returned without
    a PEFT wrapper and only the projector has ``requires_grad``.
    """
    targets = split_model(model, cfg.model.module_patterns, cfg.lora.modules)
    plan = plan_lora(cfg, targets, ranks)

    if plan.config is None:
        for param in model.parameters():
            param.requires_grad_(False)
        for prefix in plan.full_modules.values():
            for param in model.get_submodule(prefix).parameters():
                param.requires_grad_(True)
        return model, plan

    if adapter == "adalora":
        if total_steps is None or total_steps < 1:
            raise ValueError(f"AdaLoRA needs total_steps >= 1 for its rank schedule, got {total_steps!r}")
        config = _adalora_config(cfg, plan, adalora_target_rank(ranks), total_steps)
        if cfg.lora.use_rslora:
            log.warning("lora.use_rslora does not apply to AdaLoRA, which scales by lora_alpha / init_r")
        peft_model = get_peft_model(model, config)
        _reset_adalora_weights(peft_model, seed)
        return peft_model, dataclasses.replace(plan, config=config)
    if adapter != "lora":
        raise ValueError(f"adapter={adapter!r}; expected one of {list(ADAPTERS)}")

    peft_model = get_peft_model(model, plan.config)
    _reset_lora_weights(peft_model, seed)
    return peft_model, plan


def _reset_lora_weights(model: PeftModel, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    lora_layers = sorted(
        (name, module) for name, module in model.named_modules() if hasattr(module, "lora_A") and "default" in module.lora_A
    )
    with torch.no_grad():
        for _name, module in lora_layers:
            weight_a = module.lora_A["default"].weight
            # Same initialisation as PEFT's default (kaiming-uniform A, zero B), drawn on the CPU generator.
            values = torch.empty(weight_a.shape, dtype=torch.float32)
            nn.init.kaiming_uniform_(values, a=math.sqrt(5), generator=generator)
            weight_a.copy_(values.to(device=weight_a.device, dtype=weight_a.dtype))
            module.lora_B["default"].weight.zero_()


def _reset_adalora_weights(model: PeftModel, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    layers = sorted(
        (name, module) for name, module in model.named_modules() if hasattr(module, "lora_E") and "default" in module.lora_E
    )
    with torch.no_grad():
        for _name, module in layers:
            # AdaLoRA's initialisation: small normal P and Q, zero singular values, so the update starts at zero.
            for factor in (module.lora_A["default"], module.lora_B["default"]):
                values = torch.empty(factor.shape, dtype=torch.float32).normal_(0.0, 0.02, generator=generator)
                factor.copy_(values.to(device=factor.device, dtype=factor.dtype))
            module.lora_E["default"].zero_()


def adalora_orthogonality_penalty(model: nn.Module) -> torch.Tensor:
    """Return AdaLoRA's regulariser: the mean of ``||Q Q^T - I||_F`` and ``||P^T P - I||_F`` over the factors.

    ``Q`` is a layer's ``lora_A`` (rank x in) and ``P`` its ``lora_B``
    (out x rank). The penalty keeps them near orthogonal, so that the
    entries of ``lora_E`` act as singular values. PEFT adds this term only
    when the model computes the loss itself, which the training loop does
    not, so the loop adds it.
    """
    terms = []
    for name, param in model.named_parameters():
        parts = name.split(".")
        if not param.requires_grad:
            continue
        if "lora_A" in parts:
            gram = param @ param.T
        elif "lora_B" in parts:
            gram = param.T @ param
        else:
            continue
        identity = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
        terms.append(torch.linalg.matrix_norm(gram - identity))
    if not terms:
        raise ValueError("the model has no trainable AdaLoRA factors (lora_A, lora_B) for the orthogonality penalty")
    return torch.stack(terms).mean()


@dataclass(frozen=True)
class ModelShapes:
    """Module layout and layer sizes of a model, as parameter counting needs them."""

    targets: dict[str, ModuleTargets]
    layer_widths: dict[str, int]
    prefix_params: dict[str, int]


def model_shapes(model: nn.Module, patterns: dict[str, str] | None = None) -> ModelShapes:
    """Read module discovery and layer sizes from ``model``, which may live on the meta device."""
    targets = discover_modules(model, patterns)
    widths = {}
    for target in targets.values():
        for layer in target.linear_layers:
            linear = model.get_submodule(layer)
            widths[layer] = linear.in_features + linear.out_features
    prefix_params = {
        target.prefix: sum(p.numel() for p in model.get_submodule(target.prefix).parameters())
        for target in targets.values()
        if target.prefix
    }
    return ModelShapes(targets, widths, prefix_params)


def count_from_shapes(shapes: ModelShapes, cfg: MarsConfig, ranks: dict[str, int]) -> int:
    """Exact trainable parameter count: ``r * (in + out)`` per LoRA layer plus every full module's parameters."""
    plan = plan_lora(cfg, shapes.targets, ranks)
    total = sum(rank * shapes.layer_widths[layer] for layer, rank in plan.layer_ranks.items())
    total += sum(shapes.prefix_params[prefix] for prefix in plan.full_modules.values())
    return total


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """Parameters with ``requires_grad``, in a stable order, by name."""
    return [(name, param) for name, param in model.named_parameters() if param.requires_grad]


def module_of_parameter(name: str, plan: LoraPlan) -> str:
    """Return the module a trainable parameter belongs to, for per-module learning rates."""
    # PEFT prefixes names with "base_model.model." and puts the adapter after
    # the layer path ("<layer>.lora_A.default.weight"), so match on the path.
    path, sep, _ = name.partition(".lora_")
    if sep:
        for layer, module in plan.layer_modules.items():
            if path == layer or path.endswith("." + layer):
                return module
    for module, prefix in plan.full_modules.items():
        if name.startswith(prefix + ".") or f".{prefix}." in name:
            return module
    raise KeyError(f"trainable parameter {name!r} belongs to no planned module")


def count_trainable_params(cfg: MarsConfig, base, ranks: dict[str, int]) -> int:
    """Exact trainable parameter count of a run with ``ranks`` on ``base``, without loading weights.

    The module tree is built once per base model and pattern set on the meta
    device and kept in a small in-process cache, because the search counts
    every candidate pair.
    """
    shapes = _cached_shapes(base.path, base.fingerprint, json.dumps(cfg.model.module_patterns, sort_keys=True),
                            cfg.model.trust_remote_code)
    return count_from_shapes(shapes, cfg, ranks)


@functools.lru_cache(maxsize=8)
def _cached_shapes(path: str, fingerprint: str, patterns_json: str, trust_remote_code: bool) -> ModelShapes:
    from mars_core.model.base import BaseModelInfo, meta_model

    base = BaseModelInfo(path=path, fingerprint=fingerprint, name="")
    model = meta_model(ModelConfig(name_or_path=path, trust_remote_code=trust_remote_code), base)
    return model_shapes(model, json.loads(patterns_json))



def trainable_param_coefficients(cfg: MarsConfig, base) -> tuple[int, dict[str, int]]:
    """Coefficients of the exact count ``N(ranks) = n0 + sum_m per_rank[m] * r_m``.

    ``per_rank[m]`` is the sum of ``in + out`` over module ``m``'s linear
    layers. ``n0`` counts what is trained whatever the ranks are: the
    projector in full, or its LoRA of ``lora.projector_rank``.
    """
    shapes = _cached_shapes(base.path, base.fingerprint, json.dumps(cfg.model.module_patterns, sort_keys=True),
                            cfg.model.trust_remote_code)
    _check_modules_found(cfg, shapes.targets)
    per_rank = {
        module: sum(shapes.layer_widths[layer] for layer in shapes.targets[module].linear_layers)
        for module in cfg.lora.modules
    }

    n0 = 0
    projector = shapes.targets.get(PROJECTOR)
    if PROJECTOR not in cfg.lora.modules and projector is not None:
        if cfg.lora.projector == "train":
            n0 = shapes.prefix_params[projector.prefix]
        elif cfg.lora.projector == "lora":
            n0 = cfg.lora.projector_rank * sum(shapes.layer_widths[layer] for layer in projector.linear_layers)
    return n0, per_rank


def adapted_layer_counts(cfg: MarsConfig, base) -> dict[str, int]:
    """Linear layers that get an adapter in each module of ``lora.modules``, without loading weights."""
    shapes = _cached_shapes(base.path, base.fingerprint, json.dumps(cfg.model.module_patterns, sort_keys=True),
                            cfg.model.trust_remote_code)
    _check_modules_found(cfg, shapes.targets)
    return {module: len(shapes.targets[module].linear_layers) for module in cfg.lora.modules}
