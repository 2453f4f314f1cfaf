"""Each supported model family, tiny and random, through the public path: load, split, LoRA per module, train, evaluate."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from mars_core.config import MarsConfig, ModelConfig
from mars_core.model import prepare_base_model
from mars_core.model.base import ProcessorLoadError, load_base_model, torchvision_problem
from mars_core.model.lora import apply_lora
from mars_core.model.modules import split_model
from mars_core.model.prompting import IGNORE_INDEX, encode_examples, end_token_ids
from mars_core.train.evaluation import evaluate
from mars_core.train.loop import train_run
from mars_core.train.spec import RunSpec
from tests.mars_core.model.tiny_families import FAMILIES, family_params, save_family

pytestmark = pytest.mark.slow

RANKS = {"vision": 2, "llm": 4}

# Where discovery must put each module, by family (prefixes in transformers 5.25).
EXPECTED_PREFIXES = {
    "llava": ("model.vision_tower", "model.language_model", "model.multi_modal_projector"),
    "llava_next": ("model.vision_tower", "model.language_model", "model.multi_modal_projector"),
    "llava_onevision": ("model.vision_tower", "model.language_model", "model.multi_modal_projector"),
    "qwen2_vl": ("model.visual", "model.language_model", "model.visual.merger"),
    "qwen2_5_vl": ("model.visual", "model.language_model", "model.visual.merger"),
    "qwen3_vl": ("model.visual", "model.language_model", "model.visual.merger"),
    "idefics3": ("model.vision_model", "model.text_model", "model.connector"),
    "smolvlm": ("model.vision_model", "model.text_model", "model.connector"),
    "paligemma": ("model.vision_tower", "model.language_model", "model.multi_modal_projector"),
    "gemma3": ("model.vision_tower", "model.language_model", "model.multi_modal_projector"),
    "mllama": ("model.vision_model", "model.language_model", "model.multi_modal_projector"),
    "internvl": ("model.vision_tower", "model.language_model", "model.multi_modal_projector"),
    "mistral3": ("model.vision_tower", "model.language_model", "model.multi_modal_projector"),
}


@pytest.fixture(scope="module")
def family_folders(tmp_path_factory):
    """Every family saved once: name -> (folder, processor error or None)."""
    root = tmp_path_factory.mktemp("families")
    return {name: (root / name, save_family(name, root / name)) for name in FAMILIES}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    """The demo task with about 36 validation examples, so evaluating every family stays quick."""
    from mars_core.config import DataConfig
    from mars_core.data import prepare_dataset

    data = DataConfig(val_fraction=0.01, test_fraction=0.01, max_train_examples=64)
    return prepare_dataset(data, tmp_path_factory.mktemp("small-dataset"))


def _config(folder) -> MarsConfig:
    return MarsConfig.model_validate({
        "model": {"name_or_path": str(folder)},
        "train": {"batch_size": 4, "learning_rate": 3e-3, "warmup_samples": 0, "eval_every": 8, "val_subset": 8,
                  "eval_batch_size": 4},
    })


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_split_and_lora_ranks(family, family_folders):
    folder, _error = family_folders[family]
    model = AutoModelForImageTextToText.from_pretrained(folder)
    targets = split_model(model)

    vision, llm, projector = EXPECTED_PREFIXES[family]
    assert targets["vision"].prefix == vision
    assert targets["llm"].prefix == llm
    assert targets["projector"].prefix == projector
    assert not set(targets["vision"].linear_layers) & set(targets["projector"].linear_layers)

    peft_model, plan = apply_lora(model, _config(folder), RANKS, seed=0)
    modules = dict(peft_model.named_modules())
    for module in ("vision", "llm"):
        for layer in targets[module].linear_layers:
            wrapped = modules[f"base_model.model.{layer}"]
            in_features = wrapped.base_layer.in_features
            assert wrapped.lora_A["default"].weight.shape == (RANKS[module], in_features), layer
    assert plan.full_modules == {"projector": projector}


@pytest.mark.parametrize("family", family_params())
def test_family_masks_trains_and_evaluates(family, family_folders, small_dataset, tmp_path):
    folder, error = family_folders[family]
    assert error is None, f"the {family} processor cannot be built: {error}"
    cfg = _config(folder)
    base = prepare_base_model(cfg.model, tmp_path)
    model, processor = load_base_model(cfg.model, base)

    from PIL import Image

    images = [Image.new("RGB", (20, 16), color=(40 * i, 0, 0)) for i in range(2)]
    examples = encode_examples(processor, images, ["what digit is this ?"] * 2, ["seven", "two"],
                               histories=[[], [("what color ?", "red")]])
    end_ids = end_token_ids(processor)
    for example, answer in zip(examples, ["seven", "two"]):
        trained = example.input_ids[example.labels != IGNORE_INDEX].tolist()
        answer_ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
        assert trained == [*answer_ids, *end_ids]
        assert processor.tokenizer.decode(trained[: len(answer_ids)]).strip() == answer
        assert (example.labels[: example.prompt_length] == IGNORE_INDEX).all()
    assert "red" in processor.tokenizer.decode(examples[1].input_ids[: examples[1].prompt_length])

    result = train_run(cfg, base, small_dataset, RunSpec(RANKS, n_train=8, budget_samples=8, kind="final"),
                       out_dir=tmp_path / "run")
    assert result.status == "ok", result.reason
    assert len(result.curve) >= 2
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.curve)

    report = evaluate(cfg, base, small_dataset, result.adapter_dir, split="validation", max_new_tokens=2)
    assert report["n"] > 0
    assert torch.isfinite(torch.tensor(report["loss"]))


@pytest.mark.skipif(torchvision_problem() is None, reason="torchvision imports here, so the processor loads")
def test_processor_without_torchvision_fails_early(tmp_path):
    from tests.mars_core.model.tiny_families import save_qwen2_vl_files_without_processor

    folder = tmp_path / "qwen2_vl"
    save_qwen2_vl_files_without_processor(folder)

    expected = r"model type qwen2_vl.*torchvision is not installed.*torchvision==0\.29\.1"
    with pytest.raises(ProcessorLoadError, match=expected):
        prepare_base_model(ModelConfig(name_or_path=str(folder)), tmp_path / "cache")
