"""Default module patterns for model families whose layout name-based discovery splits wrongly.

Discovery (``mars_core.model.modules``) finds the vision encoder, the
projector and the language model by submodule name, which is right for
LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL, Qwen2.5-VL, Idefics3,
SmolVLM, PaliGemma, Gemma 3, Mllama, InternVL and Mistral 3 as
transformers 5.25 names them. The table holds only what names alone get
wrong, keyed by ``config.model_type``. It is empty for the families above.

Qwen3-VL's ``visual.deepstack_merger_list`` (mergers that feed
intermediate vision features into the language model) sits inside the
vision encoder and so gets the vision rank; only ``visual.merger`` is the
projector. A pattern cannot move them to the projector when it is trained
in full, because a fully trained module must be one submodule
(``LoraPlan.full_modules``) and the two share only ``visual`` as parent.
"""

from __future__ import annotations

from torch import nn

FAMILY_PATTERNS: dict[str, dict[str, str]] = {}


def model_type(model: nn.Module) -> str | None:
    """Return the ``config.model_type`` of a transformers model, or None for other modules."""
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def family_patterns(model: nn.Module) -> dict[str, str]:
    """Default ``model.module_patterns`` of the model's family; empty for families that need none."""
    return dict(FAMILY_PATTERNS.get(model_type(model) or "", {}))
