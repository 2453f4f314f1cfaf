"""Greedy decoding in batches, and scoring per question type."""

from __future__ import annotations

import pytest
from transformers import AutoModelForImageTextToText, AutoProcessor

from mars_core.data import load_split
from mars_core.model.prompting import EncodedExample
from mars_core.train.batches import encode_vqa
from mars_core.train.evaluation import greedy_answers, score


def test_batched_greedy_matches_one_by_one(small_base_model, demo_dataset):
    model = AutoModelForImageTextToText.from_pretrained(small_base_model.path)
    processor = AutoProcessor.from_pretrained(small_base_model.path)
    examples = encode_vqa(processor, load_split(demo_dataset.path, "validation")[:12])

    batched = greedy_answers(model, processor, examples, batch_size=12, max_new_tokens=6)
    single = greedy_answers(model, processor, examples, batch_size=1, max_new_tokens=6)

    assert batched == single
    assert len(batched) == 12


def _example(answer: str, question_type: str) -> EncodedExample:
    import torch

    return EncodedExample(torch.zeros(1), torch.zeros(1), torch.zeros(1), 0, answer, question_type)


def test_score_weights_loss_by_token_and_accuracy_by_example():
    examples = [_example("seven", "digit"), _example("Yes", "greater"), _example("no", "greater")]
    sums = [(2.0, 2), (1.0, 1), (3.0, 1)]
    predictions = ["seven", "yes.", "yes"]

    report = score(examples, sums, predictions)

    assert report["loss"] == pytest.approx(6.0 / 4)
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["n"] == 3
    assert report["per_type"]["digit"] == {"loss": 1.0, "accuracy": 1.0, "n": 1}
    assert report["per_type"]["greater"]["loss"] == pytest.approx(2.0)
    assert report["per_type"]["greater"]["accuracy"] == pytest.approx(0.5)
