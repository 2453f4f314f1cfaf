"""Module discovery on the demo model and on other transformers architectures."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from mars_core.model.base import meta_model
from mars_core.config import ModelConfig
from mars_core.model.modules import ModuleDiscoveryError, discover_modules

TEXT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            intermediate_size=128, vocab_size=100)


def _tiny_meta_model(model_type: str, **config):
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(AutoConfig.for_model(model_type, **config))


@pytest.fixture(scope="module")
def demo_tree(small_base_model):
    return meta_model(ModelConfig(), small_base_model)


def test_demo_modules_found_with_their_layers(demo_tree):
    targets = discover_modules(demo_tree)

    assert targets["vision"].prefix == "model.vision_tower"
    assert targets["llm"].prefix == "model.language_model"
    assert targets["projector"].prefix == "model.multi_modal_projector"
    # CLIP layers: q, k, v, out, fc1, fc2; Llama layers: q, k, v, o, gate, up, down.
    assert len(targets["vision"].linear_layers) == 6 * demo_tree.config.vision_config.num_hidden_layers
    assert len(targets["llm"].linear_layers) == 7 * demo_tree.config.text_config.num_hidden_layers
    assert len(targets["projector"].linear_layers) == 2


def test_demo_discovery_covers_every_linear_but_head(demo_tree):
    targets = discover_modules(demo_tree)
    found = [layer for target in targets.values() for layer in target.linear_layers]
    linear = [name for name, module in demo_tree.named_modules() if isinstance(module, torch.nn.Linear)]

    assert len(found) == len(set(found))
    assert sorted(found) == sorted(name for name in linear if name != "lm_head")


def test_nested_projector_not_counted_as_vision():
    # Qwen2-VL keeps its projector ("merger") inside the vision encoder.
    model = _tiny_meta_model(
        "qwen2_vl", vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2), text_config=TEXT
    )
    targets = discover_modules(model)

    assert targets["vision"].prefix == "model.visual"
    assert targets["projector"].prefix == "model.visual.merger"
    assert not any(".merger." in layer for layer in targets["vision"].linear_layers)
    assert len(targets["projector"].linear_layers) == 2


def test_other_module_names_are_discovered():
    # Idefics3 names its parts vision_model, text_model and connector.
    model = _tiny_meta_model(
        "idefics3",
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
        text_config=TEXT,
    )
    targets = discover_modules(model)

    assert targets["vision"].prefix == "model.vision_model"
    assert targets["llm"].prefix == "model.text_model"
    assert targets["projector"].prefix == "model.connector"


def test_pattern_replaces_discovery_of_one_module(demo_tree):
    targets = discover_modules(demo_tree, {"llm": r"^model\.language_model\.layers\.0\."})

    assert len(targets["llm"].linear_layers) == 7
    assert all(layer.startswith("model.language_model.layers.0.") for layer in targets["llm"].linear_layers)
    assert targets["llm"].prefix == "model.language_model.layers.0"
    assert len(targets["vision"].linear_layers) == 12


def test_pattern_matches_parameter_names_too(demo_tree):
    targets = discover_modules(demo_tree, {"attention": r"self_attn\.q_proj\.weight$"})

    assert len(targets["attention"].linear_layers) == 4
    # Layers claimed by a pattern leave the discovered modules.
    assert not any(layer.endswith("q_proj") for layer in targets["llm"].linear_layers)


def test_invalid_pattern_rejected(demo_tree):
    with pytest.raises(ModuleDiscoveryError, match="not a valid regular expression"):
        discover_modules(demo_tree, {"vision": "("})


def test_pattern_without_match_rejected(demo_tree):
    with pytest.raises(ModuleDiscoveryError, match="matches no linear layer"):
        discover_modules(demo_tree, {"audio": r"^model\.audio_tower\."})


def test_overlapping_patterns_rejected(demo_tree):
    with pytest.raises(ModuleDiscoveryError, match="make the patterns disjoint"):
        discover_modules(demo_tree, {"a": r"layers\.0\.", "b": r"language_model\.layers\.0\.mlp"})
