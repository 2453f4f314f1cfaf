"""The demo base model: determinism, caching, the from_pretrained round trip, and base-model lookup."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from mars_core.config import ModelConfig
from mars_core.data import DEMO_VOCABULARY
from mars_core.model import prepare_base_model
from mars_core.model.demo import DemoRecipe

TINY = DemoRecipe(steps=4, batch_size=8)


def _weights(path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_build_is_deterministic(tmp_path):
    first = prepare_base_model(ModelConfig(), tmp_path / "a", recipe=TINY)
    second = prepare_base_model(ModelConfig(), tmp_path / "b", recipe=TINY)

    assert first.fingerprint == second.fingerprint
    a, b = _weights(Path(first.path)), _weights(Path(second.path))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_second_build_reuses_cache(tmp_path):
    first = prepare_base_model(ModelConfig(), tmp_path, recipe=TINY)
    weights = Path(first.path) / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    started = time.perf_counter()
    second = prepare_base_model(ModelConfig(), tmp_path, recipe=TINY)
    elapsed = time.perf_counter() - started

    assert second == first
    assert weights.stat().st_mtime_ns == stamp
    assert elapsed < 5.0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_recipe_change_changes_key(tmp_path):
    first = prepare_base_model(ModelConfig(), tmp_path, recipe=TINY)
    other = prepare_base_model(ModelConfig(), tmp_path, recipe=DemoRecipe(steps=5, batch_size=8))

    assert other.fingerprint != first.fingerprint
    assert other.path != first.path


def test_saved_model_loads_through_auto_classes(small_base_model):
    model = AutoModelForImageTextToText.from_pretrained(small_base_model.path)
    processor = AutoProcessor.from_pretrained(small_base_model.path)

    assert type(model).__name__ == "LlavaForConditionalGeneration"
    assert type(processor).__name__ == "LlavaProcessor"
    assert model.config.vision_config.model_type == "clip_vision_model"
    assert model.config.text_config.model_type == "llama"
    meta = json.loads((Path(small_base_model.path) / "mars_demo.json").read_text())
    assert meta["fingerprint"] == small_base_model.fingerprint


def test_tokenizer_knows_every_demo_word(small_base_model):
    tokenizer = AutoProcessor.from_pretrained(small_base_model.path).tokenizer
    ids = tokenizer(" ".join(DEMO_VOCABULARY), add_special_tokens=False)["input_ids"]

    assert len(ids) == len(DEMO_VOCABULARY)
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == " ".join(DEMO_VOCABULARY)


@pytest.mark.slow
def test_default_demo_captions_validation_digits(tmp_path):
    from mars_core.data.digits import NUMBER_WORDS, _load_digits, pretraining_image, split_indices
    from mars_core.model.prompting import encode_examples
    from mars_core.train.evaluation import greedy_answers

    base = prepare_base_model(ModelConfig(), tmp_path)
    model = AutoModelForImageTextToText.from_pretrained(base.path)
    processor = AutoProcessor.from_pretrained(base.path)
    images, labels = _load_digits()
    held_out = split_indices(labels, 0, 0.15, 0.15)["validation"][:100]
    pairs = [(pretraining_image(images[i]), NUMBER_WORDS[labels[i]]) for i in held_out]
    examples = encode_examples(processor, [image for image, _ in pairs], [""] * len(pairs), ["x"] * len(pairs))

    captions = greedy_answers(model, processor, examples, batch_size=50, max_new_tokens=8)
    correct = sum(word in caption.split() for (_, word), caption in zip(pairs, captions))
    # Ten digits, so chance is one in ten; the default pretraining names about 88 of 100.
    assert correct >= 70


def test_local_folder_fingerprinted_by_content(small_base_model, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_base_model.path, copy)

    first = prepare_base_model(ModelConfig(name_or_path=str(copy)), tmp_path / "cache")
    assert first.path == str(copy.resolve())
    assert first.name == "copy"

    config = json.loads((copy / "config.json").read_text())
    config["projector_hidden_act"] = "relu"
    (copy / "config.json").write_text(json.dumps(config))
    second = prepare_base_model(ModelConfig(name_or_path=str(copy)), tmp_path / "cache")
    assert second.fingerprint != first.fingerprint


def test_missing_path_mentions_network(tmp_path):
    with pytest.raises(FileNotFoundError, match="network"):
        prepare_base_model(ModelConfig(name_or_path="llava-hf/llava-1.5-7b-hf"), tmp_path)


def test_folder_without_config_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        prepare_base_model(ModelConfig(name_or_path=str(tmp_path / "empty")), tmp_path)
