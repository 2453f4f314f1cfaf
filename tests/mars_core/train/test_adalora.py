"""AdaLoRA runs (``RunSpec.adapter="adalora"``): rank budget, saved adapter, orthogonality penalty, input checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor

from mars_core.data import load_split
from mars_core.model.lora import ADALORA_INIT_RATIO, adalora_orthogonality_penalty, adalora_target_rank
from mars_core.train import RunSpec, train_run
from mars_core.train.batches import encode_vqa
from mars_core.train.evaluation import validation_loss


def test_adalora_final_run_prunes_to_target_and_reloads(engine_config, small_base_model, demo_dataset, tmp_path):
    spec = RunSpec(ranks={"vision": 4, "llm": 4}, n_train=256, budget_samples=320, kind="final", adapter="adalora")
    result = train_run(engine_config, small_base_model, demo_dataset, spec, tmp_path, threads=1)

    assert result.status == "ok"
    assert result.final_val_loss < result.curve[0][1]
    config = json.loads((Path(result.adapter_dir) / "adapter_config.json").read_text())
    assert config["peft_type"] == "ADALORA"
    assert config["init_r"] == int(ADALORA_INIT_RATIO * 4)
    kept = [sum(flags) for flags in config["rank_pattern"].values()]
    assert sum(kept) == 4 * len(kept)  # the budget: the target rank on average over the layers
    assert config["modules_to_save"] == ["model.multi_modal_projector"]

    processor = AutoProcessor.from_pretrained(small_base_model.path)
    examples = encode_vqa(processor, load_split(demo_dataset.path, "validation")[: engine_config.train.val_subset])
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(small_base_model.path),
                                      result.adapter_dir)
    loaded_loss = validation_loss(model, examples, processor.tokenizer.pad_token_id, 16)
    assert loaded_loss == pytest.approx(result.final_val_loss, abs=1e-5)


@pytest.mark.parametrize(
    "ranks, adapter, message",
    [
        ({"vision": 4, "llm": 8}, "adalora", "one average target rank"),
        ({"vision": 4, "llm": 4}, "dora", "RunSpec.adapter='dora'"),
    ],
)
def test_invalid_adalora_spec_rejected(engine_config, small_base_model, demo_dataset, ranks, adapter, message):
    spec = RunSpec(ranks=ranks, n_train=64, budget_samples=32, kind="probe", adapter=adapter)
    with pytest.raises(ValueError, match=message):
        train_run(engine_config, small_base_model, demo_dataset, spec, None)


def test_target_rank_ignores_modules_without_adapter():
    assert adalora_target_rank({"vision": 0, "llm": 8}) == 8


def test_target_rank_needs_one_adapter():
    with pytest.raises(ValueError, match="one average target rank"):
        adalora_target_rank({"vision": 0, "llm": 0})


class _Factors(nn.Module):
    """A stand-in for an AdaLoRA layer: parameters named like PEFT's."""

    def __init__(self, left: torch.Tensor, right: torch.Tensor):
        super().__init__()
        self.lora_A = nn.ParameterDict({"default": nn.Parameter(right)})
        self.lora_B = nn.ParameterDict({"default": nn.Parameter(left)})


def test_orthogonality_penalty_zero_for_orthonormal_factors():
    q, _ = torch.linalg.qr(torch.randn(16, 4))
    layer = _Factors(left=q.clone(), right=q.T.clone())
    assert adalora_orthogonality_penalty(layer).item() == pytest.approx(0.0, abs=1e-5)


def test_orthogonality_penalty_grows_with_scale():
    q, _ = torch.linalg.qr(torch.randn(16, 4))
    near = adalora_orthogonality_penalty(_Factors(left=1.1 * q, right=1.1 * q.T)).item()
    far = adalora_orthogonality_penalty(_Factors(left=2.0 * q, right=2.0 * q.T)).item()
    assert 0 < near < far


def test_orthogonality_penalty_without_factors_is_rejected():
    with pytest.raises(ValueError, match="no trainable AdaLoRA factors"):
        adalora_orthogonality_penalty(nn.Linear(4, 4))
