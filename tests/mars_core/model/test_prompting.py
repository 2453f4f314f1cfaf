"""Answer-only labels and batch padding."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from mars_core.model.prompting import IGNORE_INDEX, answer_loss_per_example, answer_loss_sum, collate, encode_examples


@pytest.fixture(scope="module")
def processor(small_base_model):
    return AutoProcessor.from_pretrained(small_base_model.path)


def _images(n: int) -> list[Image.Image]:
    return [Image.new("L", (16, 16), color=20 * i) for i in range(n)]


def test_labels_cover_exactly_answer_and_end(processor):
    answers = ["seven", "yes", "two"]
    encoded = encode_examples(processor, _images(3), ["what digit is this ?"] * 3, answers)

    eos = processor.tokenizer.eos_token_id
    for example, answer in zip(encoded, answers):
        answer_ids = processor.tokenizer(answer, add_special_tokens=False)["input_ids"]
        trained = example.labels[example.labels != IGNORE_INDEX].tolist()
        assert trained == [*answer_ids, eos]
        # Trained positions are the tail of the sequence and match the inputs there.
        n = len(trained)
        assert example.input_ids[-n:].tolist() == trained
        assert (example.labels[:-n] == IGNORE_INDEX).all()


def test_image_and_prompt_tokens_masked(processor):
    (example,) = encode_examples(processor, _images(1), ["is the digit even or odd ?"], ["odd"])

    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    image_positions = example.input_ids == image_id
    assert int(image_positions.sum()) == 16
    assert (example.labels[image_positions] == IGNORE_INDEX).all()
    assert (example.labels[: example.prompt_length] == IGNORE_INDEX).all()


def test_history_answers_are_not_trained(processor):
    history = [("what digit is this ?", "three")]
    (example,) = encode_examples(
        processor, _images(1), ["is the digit even or odd ?"], ["odd"], histories=[history]
    )

    odd = processor.tokenizer.convert_tokens_to_ids("odd")
    three = processor.tokenizer.convert_tokens_to_ids("three")
    assert three in example.input_ids[: example.prompt_length].tolist()
    assert example.labels[example.labels != IGNORE_INDEX].tolist() == [odd, processor.tokenizer.eos_token_id]
    # Only the first user turn carries the image.
    assert int((example.input_ids == processor.tokenizer.convert_tokens_to_ids("<image>")).sum()) == 16


def test_collate_pads_right_and_left(processor):
    encoded = encode_examples(processor, _images(2), ["what digit is this ?", "is the digit greater than two ?"], ["one", "no"])
    pad = processor.tokenizer.pad_token_id

    right = collate(encoded, pad)
    left = collate(encoded, pad, padding_side="left")

    short = min(range(2), key=lambda i: len(encoded[i].input_ids))
    size = len(encoded[short].input_ids)
    assert right["input_ids"][short, :size].tolist() == encoded[short].input_ids.tolist()
    assert right["attention_mask"][short].sum() == size
    assert (right["labels"][short, size:] == IGNORE_INDEX).all()
    assert left["input_ids"][short, -size:].tolist() == encoded[short].input_ids.tolist()
    assert (left["input_ids"][short, :-size] == pad).all()
    assert right["pixel_values"].shape == (2, 3, 16, 16)


def test_loss_per_example_sums_to_batch_loss():
    torch.manual_seed(0)
    logits = torch.randn(3, 6, 11)
    labels = torch.full((3, 6), IGNORE_INDEX)
    labels[0, 4:] = torch.tensor([1, 2])
    labels[1, 3:] = torch.tensor([3, 4, 5])
    labels[2, 5] = 6

    totals, counts = answer_loss_per_example(logits, labels)
    total, count = answer_loss_sum(logits, labels)

    assert counts.tolist() == [2, 3, 1]
    assert count == 6
    assert float(totals.sum()) == pytest.approx(float(total), rel=1e-6)
    # Position t predicts token t + 1.
    expected = torch.nn.functional.cross_entropy(logits[2, 4:5], torch.tensor([6]), reduction="sum")
    assert float(totals[2]) == pytest.approx(float(expected), rel=1e-6)
