"""Module discovery: which linear layers of a multimodal model belong to which module.

A module is a part of the model that gets its own LoRA rank (``vision``,
``llm``) or its own treatment (``projector``). Discovery reads the module
tree of a loaded model instead of hard-coding the demo's layer names:

- ``vision``: the shallowest submodule named one of ``VISION_NAMES``
  (``model.vision_tower`` in transformers 5 LLaVA, ``model.visual`` in Qwen2-VL);
- ``llm``: the shallowest submodule named one of ``LLM_NAMES``
  (``model.language_model``);
- ``projector``: the shallowest submodule named one of ``PROJECTOR_NAMES``
  (``model.multi_modal_projector``).

Each ``nn.Linear`` layer belongs to the discovered module with the longest
matching prefix, so a projector nested inside the vision encoder (Qwen2-VL's
``visual.merger``) is not also counted as vision. The output head
(``lm_head``) sits outside the language model and is never a LoRA target
unless a pattern names it.

``model.module_patterns`` overrides discovery per module. Each pattern is a
regex searched (``re.search``) in every linear layer's module name and in
its weight's parameter name, and a layer matching either belongs to that
module. Families whose layout the names above get wrong have default
patterns in ``mars_core.model.families``; the user's patterns replace them
module by module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

VISION_NAMES: tuple[str, ...] = ("vision_tower", "visual", "vision_model", "vision_encoder", "image_encoder")
LLM_NAMES: tuple[str, ...] = ("language_model", "text_model", "llm")
PROJECTOR_NAMES: tuple[str, ...] = (
    "multi_modal_projector",
    "mm_projector",
    "multimodal_projector",
    "connector",
    "merger",
    "visual_projection",
    "vision_projection",
)
KNOWN_MODULES: dict[str, tuple[str, ...]] = {
    "vision": VISION_NAMES,
    "llm": LLM_NAMES,
    "projector": PROJECTOR_NAMES,
}


@dataclass(frozen=True)
class ModuleTargets:
    """One module of the model: where it sits and the linear layers LoRA can target in it."""

    name: str
    prefix: str
    linear_layers: tuple[str, ...]

    def param_count(self, model: nn.Module) -> int:
        """Number of parameters under ``prefix``, for a module trained in full."""
        return sum(p.numel() for p in model.get_submodule(self.prefix).parameters())


class ModuleDiscoveryError(ValueError):
    """A module could not be found in the model, or two modules claim the same layer."""


def discover_modules(model: nn.Module, patterns: dict[str, str] | None = None) -> dict[str, ModuleTargets]:
    """Find the vision encoder, language model and projector of ``model`` and their linear layers.

    Parameters
    ----------
    model
        A loaded (or meta-device) transformers model without PEFT adapters.
    patterns
        Module name -> regex; replaces discovery for that module, or adds a module.

    Returns
    -------
    dict
        Module name -> ``ModuleTargets``, only for modules that were found.

    Raises
    ------
    ModuleDiscoveryError
        When a pattern is not a valid regex, matches no linear layer, or two
        pattern modules claim the same layer.
    """
    from mars_core.model.families import family_patterns

    patterns = {**family_patterns(model), **(patterns or {})}
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]

    prefixes = {}
    for module_name, candidates in KNOWN_MODULES.items():
        if module_name in patterns:
            continue
        prefix = _find_shallowest(model, candidates)
        if prefix is not None:
            prefixes[module_name] = prefix

    layers_by_module: dict[str, list[str]] = {name: [] for name in prefixes}
    for layer in linear_names:
        owner = _longest_prefix_owner(layer, prefixes)
        if owner is not None:
            layers_by_module[owner].append(layer)

    pattern_layers = _match_patterns(linear_names, patterns)
    claimed = {layer for layers in pattern_layers.values() for layer in layers}
    for module_name in layers_by_module:
        layers_by_module[module_name] = [layer for layer in layers_by_module[module_name] if layer not in claimed]

    targets = {
        name: ModuleTargets(name=name, prefix=prefixes[name], linear_layers=tuple(layers))
        for name, layers in layers_by_module.items()
    }
    for name, layers in pattern_layers.items():
        targets[name] = ModuleTargets(name=name, prefix=_common_prefix(layers), linear_layers=tuple(layers))
    return targets


def _find_shallowest(model: nn.Module, candidates: tuple[str, ...]) -> str | None:
    best: tuple[int, int, str] | None = None
    for name, _module in model.named_modules():
        if not name:
            continue
        parts = name.split(".")
        if parts[-1] not in candidates:
            continue
        key = (len(parts), candidates.index(parts[-1]), name)
        if best is None or key < best:
            best = key
    return None if best is None else best[2]


def _longest_prefix_owner(layer: str, prefixes: dict[str, str]) -> str | None:
    owner, owner_len = None, -1
    for module_name, prefix in prefixes.items():
        # A module may be a single linear layer (Mllama's projector), so the layer itself counts.
        inside = layer == prefix or layer.startswith(prefix + ".")
        if inside and len(prefix) > owner_len:
            owner, owner_len = module_name, len(prefix)
    return owner


def _match_patterns(linear_names: list[str], patterns: dict[str, str]) -> dict[str, list[str]]:
    matched: dict[str, list[str]] = {}
    owner_of: dict[str, str] = {}
    for module_name, pattern in patterns.items():
        try:
            regex = re.compile(pattern)
        except re.error as exc:
            raise ModuleDiscoveryError(
                f"model.module_patterns.{module_name}={pattern!r} is not a valid regular expression: {exc}"
            ) from exc
        layers = [name for name in linear_names if regex.search(name) or regex.search(f"{name}.weight")]
        if not layers:
            sample = ", ".join(linear_names[:5])
            raise ModuleDiscoveryError(
                f"model.module_patterns.{module_name}={pattern!r} matches no linear layer; "
                f"linear layers are named like: {sample}"
            )
        for layer in layers:
            if layer in owner_of:
                raise ModuleDiscoveryError(
                    f"linear layer {layer!r} matches model.module_patterns of both "
                    f"{owner_of[layer]!r} and {module_name!r}; make the patterns disjoint"
                )
            owner_of[layer] = module_name
        matched[module_name] = layers
    return matched


def _common_prefix(layers: list[str]) -> str:
    split = [layer.split(".") for layer in layers]
    common: list[str] = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    # A single matched layer is its own prefix; several share their parent path.
    return ".".join(common) if common else ""


def describe_modules(targets: dict[str, ModuleTargets]) -> str:
    """Describe each module by name, prefix and number of linear layers, for logs and errors."""
    return "; ".join(f"{t.name}: {t.prefix or '<root>'} ({len(t.linear_layers)} linear layers)" for t in targets.values())


def describe_children(model: nn.Module, depth: int = 2) -> str:
    """List the submodules of ``model`` down to ``depth`` levels with their parameter counts, for errors."""
    lines = []
    for name, module in model.named_modules():
        if not name or name.count(".") >= depth:
            continue
        count = sum(p.numel() for p in module.parameters())
        lines.append(f"{name} ({type(module).__name__}, {count:,} parameters)")
    return "; ".join(lines)


def split_model(
    model: nn.Module, patterns: dict[str, str] | None = None, required: tuple[str, ...] | list[str] = ("vision", "llm")
) -> dict[str, ModuleTargets]:
    """Run ``discover_modules`` and check that every module of ``required`` was found with linear layers.

    Raises ``ModuleDiscoveryError`` that lists the model's top-level
    submodules and their parameter counts, so the user can write
    ``model.module_patterns`` for a layout discovery does not know.
    """
    targets = discover_modules(model, patterns)
    missing = [name for name in required if name not in targets or not targets[name].linear_layers]
    if missing:
        example = "; ".join(f"{name}: '^model\\.<submodule>\\.'" for name in missing)
        found = describe_modules(targets) or "nothing"
        raise ModuleDiscoveryError(
            f"cannot split {type(model).__name__} into modules: no linear layers found for {missing} "
            f"(found {found}). Its submodules are: {describe_children(model)}. "
            f"Set model.module_patterns, e.g. {example}"
        )
    return targets
