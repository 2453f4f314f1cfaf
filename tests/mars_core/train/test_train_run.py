"""train_run: curves, final runs, resume, failure on non-finite values, the saved adapter."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForImageTextToText, AutoProcessor

from mars_core.data import load_split
from mars_core.train import RunSpec, TrainHooks, evaluate, train_run
from mars_core.train.batches import encode_vqa
from mars_core.train.checkpoint import checkpoint_path, load_checkpoint
from mars_core.train.evaluation import validation_loss

PROBE = dict(n_train=256, budget_samples=192, kind="probe")


class Interrupted(Exception):
    """Raised by a test hook to stop a run as a crash would."""


def _probe(ranks, **kwargs) -> RunSpec:
    return RunSpec(ranks=ranks, **{**PROBE, **kwargs})


def _final(budget=256) -> RunSpec:
    return RunSpec(ranks={"vision": 4, "llm": 8}, n_train=512, budget_samples=budget, kind="final")


def test_probe_curve_starts_at_zero_and_falls(engine_config, small_base_model, demo_dataset):
    result = train_run(engine_config, small_base_model, demo_dataset, _probe({"vision": 4, "llm": 8}), None, threads=1)

    assert result.status == "ok"
    assert [s for s, _ in result.curve] == [0, 64, 128, 192]
    assert result.samples_seen == 192
    assert result.steps == 12
    assert result.final_val_loss == result.curve[-1][1]
    assert result.final_val_loss < result.curve[0][1]
    assert result.adapter_dir is None
    assert 0 < result.train_seconds < result.wall_seconds


def test_budget_not_multiple_of_batch(engine_config, small_base_model, demo_dataset):
    result = train_run(engine_config, small_base_model, demo_dataset, _probe({"vision": 2, "llm": 2}, budget_samples=72),
                       None, threads=1)

    assert result.samples_seen == 72
    assert result.steps == 5
    assert [s for s, _ in result.curve] == [0, 64, 72]


def test_rank_zero_module_probe_trains_other_module(engine_config, small_base_model, demo_dataset):
    from mars_core.model import count_trainable_params

    ranks = {"vision": 0, "llm": 4}
    result = train_run(engine_config, small_base_model, demo_dataset, _probe(ranks), None, threads=1)

    assert result.status == "ok"
    assert result.trainable_params == count_trainable_params(engine_config, small_base_model, ranks)


def test_lr_scale_slows_its_module(engine_config, small_base_model, demo_dataset):
    cfg = engine_config.model_copy(deep=True)
    cfg.lora.projector = "freeze"
    ranks = {"vision": 0, "llm": 8}

    normal = train_run(cfg, small_base_model, demo_dataset, _probe(ranks, budget_samples=64), None, threads=1)
    frozen = train_run(cfg, small_base_model, demo_dataset, _probe(ranks, budget_samples=64, lr_scale={"llm": 1e-9}),
                       None, threads=1)

    assert normal.curve[0][1] == pytest.approx(frozen.curve[0][1])
    assert abs(frozen.final_val_loss - frozen.curve[0][1]) < 1e-3
    assert normal.curve[0][1] - normal.final_val_loss > 0.1


def test_parallel_runs_match_sequential(engine_config, small_base_model, demo_dataset):
    specs = [_probe({"vision": 2, "llm": 4}, budget_samples=64), _probe({"vision": 8, "llm": 2}, budget_samples=64)]

    sequential = [train_run(engine_config, small_base_model, demo_dataset, spec, None, threads=1) for spec in specs]
    with ThreadPoolExecutor(max_workers=2) as pool:
        parallel = list(pool.map(lambda spec: train_run(engine_config, small_base_model, demo_dataset, spec, None, threads=1), specs))

    for one, other in zip(sequential, parallel):
        assert one.curve == other.curve


def test_final_run_saves_loadable_adapter(engine_config, small_base_model, demo_dataset, tmp_path):
    result = train_run(engine_config, small_base_model, demo_dataset, _final(), tmp_path, threads=1)

    assert result.status == "ok"
    adapter = Path(result.adapter_dir)
    assert adapter == tmp_path / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["rank_pattern"].values()) == {4, 8}
    assert config["modules_to_save"] == ["model.multi_modal_projector"]

    processor = AutoProcessor.from_pretrained(small_base_model.path)
    examples = encode_vqa(processor, load_split(demo_dataset.path, "validation")[: engine_config.train.val_subset])
    pad = processor.tokenizer.pad_token_id
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(small_base_model.path), adapter)
    loaded_loss = validation_loss(model, examples, pad, 16)
    merged_loss = validation_loss(model.merge_and_unload(), examples, pad, 16)

    assert loaded_loss == pytest.approx(result.final_val_loss, abs=1e-5)
    assert merged_loss == pytest.approx(result.final_val_loss, abs=1e-4)


def test_resumed_run_matches_uninterrupted(engine_config, small_base_model, demo_dataset, tmp_path):
    whole = train_run(engine_config, small_base_model, demo_dataset, _final(), tmp_path / "whole", threads=1)

    def crash_after_160(samples_seen, _model):
        if samples_seen == 160:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_run(engine_config, small_base_model, demo_dataset, _final(), tmp_path / "split", threads=1,
                  hooks=TrainHooks(after_step=crash_after_160))
    assert load_checkpoint(tmp_path / "split")["samples_seen"] == 128
    assert not (tmp_path / "split" / "adapter").exists()

    resumed = train_run(engine_config, small_base_model, demo_dataset, _final(), tmp_path / "split", threads=1)

    # CPU training with one thread is deterministic, so the tolerance only absorbs float printing.
    assert resumed.resumed_from == 128
    assert resumed.samples_seen == whole.samples_seen == 256
    assert [s for s, _ in resumed.curve] == [s for s, _ in whole.curve]
    for (_, a), (_, b) in zip(resumed.curve, whole.curve):
        assert a == pytest.approx(b, abs=1e-6)
    weights_whole = _adapter_weights(whole.adapter_dir)
    weights_resumed = _adapter_weights(resumed.adapter_dir)
    assert all(torch.allclose(weights_whole[k], weights_resumed[k], atol=1e-6) for k in weights_whole)


def test_finished_final_run_is_not_retrained(engine_config, small_base_model, demo_dataset, tmp_path):
    first = train_run(engine_config, small_base_model, demo_dataset, _final(128), tmp_path, threads=1)
    again = train_run(engine_config, small_base_model, demo_dataset, _final(128), tmp_path, threads=1)

    assert again.resumed_from == 128
    assert again.steps == first.steps
    assert again.curve == first.curve


def test_checkpoint_of_other_run_rejected(engine_config, small_base_model, demo_dataset, tmp_path):
    train_run(engine_config, small_base_model, demo_dataset, _final(64), tmp_path, threads=1)
    other = RunSpec(ranks={"vision": 2, "llm": 2}, n_train=512, budget_samples=64, kind="final")

    with pytest.raises(ValueError, match="belongs to a different run"):
        train_run(engine_config, small_base_model, demo_dataset, other, tmp_path, threads=1)


def _poison_at(target_samples: int):
    def poison(samples_seen, model):
        if samples_seen == target_samples:
            with torch.no_grad():
                for name, param in model.named_parameters():
                    if ".lora_B." in name and "language_model" in name:
                        param.fill_(float("nan"))
                        return

    return poison


def test_nan_in_training_fails_run(engine_config, small_base_model, demo_dataset, tmp_path):
    result = train_run(engine_config, small_base_model, demo_dataset, _final(), tmp_path, threads=1,
                       hooks=TrainHooks(after_step=_poison_at(16)))

    assert result.status == "failed"
    assert "non-finite training loss" in result.reason
    assert result.adapter_dir is None
    assert not (tmp_path / "adapter").exists()
    assert not checkpoint_path(tmp_path).exists()


def test_nan_at_evaluation_writes_no_checkpoint(engine_config, small_base_model, demo_dataset, tmp_path):
    result = train_run(engine_config, small_base_model, demo_dataset, _final(), tmp_path, threads=1,
                       hooks=TrainHooks(after_step=_poison_at(128)))

    assert result.status == "failed"
    assert "non-finite validation loss" in result.reason
    assert not (tmp_path / "adapter").exists()
    state = load_checkpoint(tmp_path)
    assert state["samples_seen"] == 64
    assert all(torch.isfinite(tensor).all() for tensor in state["trainable"].values())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(n_train=0), "n_train"),
        (dict(n_train=10**7), "n_train"),
        (dict(budget_samples=0), "budget_samples"),
        (dict(kind="grid"), "kind"),
        (dict(lr_scale={"audio": 2.0}), "unknown module 'audio'"),
        (dict(lr_scale={"vision": 0.0}), "must be a number > 0"),
        (dict(ranks={"vision": 2}), "missing"),
    ],
)
def test_invalid_spec_rejected_before_training(engine_config, small_base_model, demo_dataset, change, message):
    spec = _probe({"vision": 2, "llm": 2}, **{k: v for k, v in change.items() if k != "ranks"})
    if "ranks" in change:
        spec.ranks = change["ranks"]
    with pytest.raises(ValueError, match=message):
        train_run(engine_config, small_base_model, demo_dataset, spec, None)


def test_final_run_needs_out_dir(engine_config, small_base_model, demo_dataset):
    with pytest.raises(ValueError, match="needs an out_dir"):
        train_run(engine_config, small_base_model, demo_dataset, _final(), None)


def test_evaluate_reports_overall_and_per_type(engine_config, small_base_model, demo_dataset, tmp_path):
    result = train_run(engine_config, small_base_model, demo_dataset, _final(128), tmp_path, threads=1)
    report = evaluate(engine_config, small_base_model, demo_dataset, result.adapter_dir, split="validation")

    assert report["n"] == demo_dataset.n_val
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert 0.0 <= report["accuracy"] <= 1.0
    assert set(report["per_type"]) == set(demo_dataset.question_types)
    assert sum(entry["n"] for entry in report["per_type"].values()) == report["n"]

    base_report = evaluate(engine_config, small_base_model, demo_dataset, None, split="validation")
    assert report["loss"] < base_report["loss"]


def _adapter_weights(adapter_dir: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
