"""LoRA per module: ranks layer by layer, the projector's treatment, exact parameter counts."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForImageTextToText

from mars_core.config import MarsConfig
from mars_core.model.lora import apply_lora, count_trainable_params, plan_lora, validate_ranks
from mars_core.model.modules import discover_modules


def _config(**lora) -> MarsConfig:
    return MarsConfig.model_validate({"lora": lora})


def _load(base):
    return AutoModelForImageTextToText.from_pretrained(base.path)


def _lora_layers(model) -> dict[str, torch.nn.Module]:
    return {name: module for name, module in model.named_modules() if hasattr(module, "lora_A") and "default" in module.lora_A}


def _layer_path(peft_name: str) -> str:
    return peft_name.removeprefix("base_model.model.")


def _trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("ranks", [{"vision": 4, "llm": 16}, {"vision": 32, "llm": 2}])
def test_each_layer_gets_its_module_rank(small_base_model, ranks):
    targets = discover_modules(_load(small_base_model))
    model, _plan = apply_lora(_load(small_base_model), _config(), ranks, seed=0)

    layers = _lora_layers(model)
    for module_name in ("vision", "llm"):
        for layer in targets[module_name].linear_layers:
            lora = layers[f"base_model.model.{layer}"]
            rank = ranks[module_name]
            assert lora.lora_A["default"].weight.shape == (rank, lora.in_features), layer
            assert lora.lora_B["default"].weight.shape == (lora.out_features, rank), layer


def test_alpha_gives_constant_scale(small_base_model):
    cfg = _config(alpha_ratio=2.0)
    model, _ = apply_lora(_load(small_base_model), cfg, {"vision": 4, "llm": 64}, seed=0)

    scales = {module.scaling["default"] for module in _lora_layers(model).values()}
    assert scales == {2.0}


def test_rslora_scale_is_alpha_over_sqrt_rank(small_base_model):
    cfg = _config(alpha_ratio=2.0, use_rslora=True)
    ranks = {"vision": 4, "llm": 64}
    targets = discover_modules(_load(small_base_model))
    model, _ = apply_lora(_load(small_base_model), cfg, ranks, seed=0)

    for name, module in _lora_layers(model).items():
        module_name = "vision" if _layer_path(name) in targets["vision"].linear_layers else "llm"
        rank = ranks[module_name]
        assert module.scaling["default"] == pytest.approx(2.0 * rank / math.sqrt(rank))


def test_rank_zero_leaves_module_without_adapters(small_base_model):
    model, _ = apply_lora(_load(small_base_model), _config(), {"vision": 0, "llm": 8}, seed=0)

    adapted = [_layer_path(name) for name in _lora_layers(model)]
    assert adapted
    assert not any(".vision_tower." in layer for layer in adapted)
    vision_trainable = [n for n, p in model.named_parameters() if p.requires_grad and ".vision_tower." in n]
    assert vision_trainable == []


def test_trained_projector_saved_in_full(small_base_model):
    model, plan = apply_lora(_load(small_base_model), _config(projector="train"), {"vision": 2, "llm": 2}, seed=0)

    assert plan.full_modules == {"projector": "model.multi_modal_projector"}
    assert model.peft_config["default"].modules_to_save == ["model.multi_modal_projector"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "multi_modal_projector" in n]
    assert trainable and all(".modules_to_save.default." in n for n in trainable)


def test_frozen_projector_has_no_trainable_weights(small_base_model):
    model, plan = apply_lora(_load(small_base_model), _config(projector="freeze"), {"vision": 2, "llm": 2}, seed=0)

    assert plan.full_modules == {}
    assert not any(p.requires_grad for n, p in model.named_parameters() if "multi_modal_projector" in n)


def test_projector_lora_uses_projector_rank(small_base_model):
    cfg = _config(projector="lora", projector_rank=4)
    model, _ = apply_lora(_load(small_base_model), cfg, {"vision": 2, "llm": 8}, seed=0)

    projector_layers = {n: m for n, m in _lora_layers(model).items() if "multi_modal_projector" in n}
    assert len(projector_layers) == 2
    assert {m.lora_A["default"].weight.shape[0] for m in projector_layers.values()} == {4}


@pytest.mark.parametrize(
    ("lora", "ranks"),
    [
        ({}, {"vision": 8, "llm": 8}),
        ({}, {"vision": 0, "llm": 128}),
        ({"projector": "freeze"}, {"vision": 2, "llm": 0}),
        ({"projector": "lora", "projector_rank": 4}, {"vision": 16, "llm": 4}),
        ({"use_rslora": True}, {"vision": 64, "llm": 32}),
    ],
)
def test_count_matches_requires_grad_sum(small_base_model, lora, ranks):
    cfg = _config(**lora)
    model, _ = apply_lora(_load(small_base_model), cfg, ranks, seed=0)

    assert count_trainable_params(cfg, small_base_model, ranks) == _trainable_count(model)


def test_count_grows_linearly_with_rank(small_base_model):
    cfg = _config()
    at = {r: count_trainable_params(cfg, small_base_model, {"vision": r, "llm": 4}) for r in (2, 4, 8)}

    assert at[8] - at[4] == 2 * (at[4] - at[2])
    assert at[4] > at[2]


def test_lora_init_depends_only_on_seed(small_base_model):
    first, _ = apply_lora(_load(small_base_model), _config(), {"vision": 4, "llm": 4}, seed=3)
    torch.manual_seed(12345)  # the global generator must not matter
    second, _ = apply_lora(_load(small_base_model), _config(), {"vision": 4, "llm": 4}, seed=3)
    other, _ = apply_lora(_load(small_base_model), _config(), {"vision": 4, "llm": 4}, seed=4)

    a, b, c = (dict(m.named_parameters()) for m in (first, second, other))
    lora_a = [n for n in a if ".lora_A." in n]
    assert all(torch.equal(a[n], b[n]) for n in lora_a)
    assert not all(torch.equal(a[n], c[n]) for n in lora_a)
    assert all(torch.count_nonzero(a[n.replace("lora_A", "lora_B")]) == 0 for n in lora_a)


@pytest.mark.parametrize(
    ("ranks", "message"),
    [
        ({"vision": 8}, "missing \\['llm'\\]"),
        ({"vision": 8, "llm": 8, "audio": 4}, "unknown \\['audio'\\]"),
        ({"vision": -1, "llm": 8}, "expected an integer >= 0"),
        ({"vision": 2.5, "llm": 8}, "expected an integer >= 0"),
    ],
)
def test_invalid_ranks_rejected(ranks, message):
    with pytest.raises(ValueError, match=message):
        validate_ranks(_config(), ranks)


def test_nothing_to_train_rejected(small_base_model):
    targets = discover_modules(_load(small_base_model))
    with pytest.raises(ValueError, match="leave nothing to train"):
        plan_lora(_config(projector="freeze"), targets, {"vision": 0, "llm": 0})


def test_unknown_module_needs_pattern(small_base_model):
    cfg = MarsConfig.model_validate(
        {"lora": {"modules": ["vision", "llm", "audio"]}, "search": {"default_ranks": {"vision": 8, "llm": 8, "audio": 8}}}
    )
    targets = discover_modules(_load(small_base_model))
    with pytest.raises(ValueError, match="module 'audio' of lora.modules was not found"):
        plan_lora(cfg, targets, {"vision": 2, "llm": 2, "audio": 2})


def test_third_module_from_pattern_gets_own_rank(small_base_model):
    cfg = MarsConfig.model_validate(
        {
            "model": {"module_patterns": {"llm_mlp": r"language_model\.layers\.\d+\.mlp\."}},
            "lora": {"modules": ["vision", "llm", "llm_mlp"]},
            "search": {"default_ranks": {"vision": 8, "llm": 8, "llm_mlp": 8}},
        }
    )
    ranks = {"vision": 2, "llm": 4, "llm_mlp": 16}
    model, _ = apply_lora(_load(small_base_model), cfg, ranks, seed=0)

    for name, module in _lora_layers(model).items():
        if "language_model" not in name:
            expected = ranks["vision"]
        elif ".mlp." in name:
            expected = ranks["llm_mlp"]
        else:
            expected = ranks["llm"]
        assert module.lora_A["default"].weight.shape[0] == expected, name
    assert count_trainable_params(cfg, small_base_model, ranks) == _trainable_count(model)


@pytest.mark.parametrize("projector", ["train", "freeze", "lora"])
def test_coefficients_reproduce_counts(small_base_model, projector):
    from mars_core.model.lora import trainable_param_coefficients

    cfg = _config(projector=projector)
    n0, per_rank = trainable_param_coefficients(cfg, small_base_model)

    for ranks in ({"vision": 2, "llm": 8}, {"vision": 64, "llm": 1}):
        expected = n0 + sum(per_rank[m] * r for m, r in ranks.items())
        assert count_trainable_params(cfg, small_base_model, ranks) == expected
