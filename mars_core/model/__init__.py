"""Base models for MARS: the embedded demo, module discovery and LoRA per module."""

from mars_core.model.base import BaseModelInfo, load_base_model, prepare_base_model
from mars_core.model.lora import apply_lora, count_trainable_params, plan_lora, validate_ranks
from mars_core.model.modules import ModuleDiscoveryError, ModuleTargets, discover_modules

__all__ = [
    "BaseModelInfo",
    "ModuleDiscoveryError",
    "ModuleTargets",
    "apply_lora",
    "count_trainable_params",
    "discover_modules",
    "load_base_model",
    "plan_lora",
    "prepare_base_model",
    "validate_ranks",
]
