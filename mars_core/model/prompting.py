"""Turn visual questions into model inputs with answer-only labels.

A conversation is rendered with the processor's own chat template: the image
and earlier turns (``history``) go into the prompt, then the generation
prompt of the assistant. The answer tokens and the end token after them
follow. Labels copy the answer and end tokens and set every prompt and
image position to ``IGNORE_INDEX``, so only the answer counts in the loss.
Earlier answers in ``history`` are context and are not trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

IGNORE_INDEX = -100


@dataclass
class EncodedExample:
    """One example as tensors: token ids, labels (``IGNORE_INDEX`` outside the answer) and pixels."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    prompt_length: int
    answer: str
    question_type: str


def build_messages(question: str, history: Sequence[tuple[str, str]] = ()) -> list[dict]:
    """Chat messages for one question: the image sits in the first user turn."""
    turns = [*history, (question, None)]
    messages: list[dict] = []
    for index, (user_text, assistant_text) in enumerate(turns):
        content: list[dict] = [{"type": "image"}] if index == 0 else []
        if user_text:
            content.append({"type": "text", "text": user_text})
        messages.append({"role": "user", "content": content})
        if assistant_text is not None:
            messages.append({"role": "assistant", "content": [{"type": "text", "text": assistant_text}]})
    return messages


def render_prompt(processor, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    """Prompt text up to and including the assistant's generation prompt."""
    return processor.apply_chat_template(build_messages(question, history), add_generation_prompt=True, tokenize=False)


def end_token_id(processor) -> int:
    """Id of the token that ends an answer (the tokenizer's end-of-sequence token)."""
    token_id = processor.tokenizer.eos_token_id
    if token_id is None:
        raise ValueError("the tokenizer has no eos_token: answers need an end token for training and greedy decoding")
    return int(token_id)


def encode_prompts(
    processor, images: Sequence[Image.Image], prompts: Sequence[str]
) -> tuple[list[list[int]], torch.Tensor]:
    """Token ids (image token expanded by the processor) and pixel values for prompts with one image each."""
    encoded = processor(text=list(prompts), images=list(images), add_special_tokens=False, return_tensors=None)
    pixel_values = encoded["pixel_values"]
    if not isinstance(pixel_values, torch.Tensor):
        pixel_values = torch.as_tensor(_stack(pixel_values))
    return [list(ids) for ids in encoded["input_ids"]], pixel_values.float()


def _stack(arrays):
    import numpy as np

    return np.stack([np.asarray(array) for array in arrays])


def encode_examples(
    processor,
    images: Sequence[Image.Image],
    questions: Sequence[str],
    answers: Sequence[str],
    question_types: Sequence[str] | None = None,
    histories: Sequence[Sequence[tuple[str, str]]] | None = None,
    chunk_size: int = 256,
) -> list[EncodedExample]:
    """Encode examples for training or loss evaluation, with answer-only labels.

    Processing runs in chunks of ``chunk_size`` because the processor is much
    faster per example on a list than on one example at a time.
    """
    n = len(images)
    if not len(questions) == len(answers) == n:
        raise ValueError(f"got {n} images, {len(questions)} questions and {len(answers)} answers; they must match")
    question_types = question_types or [""] * n
    histories = histories or [()] * n
    eos = end_token_id(processor)

    encoded: list[EncodedExample] = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        prompts = [render_prompt(processor, questions[i], histories[i]) for i in range(start, stop)]
        prompt_ids, pixel_values = encode_prompts(processor, images[start:stop], prompts)
        answer_ids = processor.tokenizer(list(answers[start:stop]), add_special_tokens=False)["input_ids"]
        for offset, index in enumerate(range(start, stop)):
            prompt = prompt_ids[offset]
            target = [*answer_ids[offset], eos]
            input_ids = torch.tensor(prompt + target, dtype=torch.long)
            labels = torch.tensor([IGNORE_INDEX] * len(prompt) + target, dtype=torch.long)
            encoded.append(
                EncodedExample(
                    input_ids=input_ids,
                    labels=labels,
                    pixel_values=pixel_values[offset],
                    prompt_length=len(prompt),
                    answer=answers[index],
                    question_type=question_types[index],
                )
            )
    return encoded


def collate(examples: Sequence[EncodedExample], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a batch: ``input_ids``, ``attention_mask``, ``labels`` and stacked ``pixel_values``.

    Training pads on the right. Greedy decoding pads prompts on the left, so
    that every prompt ends where generation starts.
    """
    length = max(len(example.input_ids) for example in examples)
    batch = len(examples)
    input_ids = torch.full((batch, length), pad_token_id, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    for row, example in enumerate(examples):
        size = len(example.input_ids)
        span = slice(0, size) if padding_side == "right" else slice(length - size, length)
        input_ids[row, span] = example.input_ids
        labels[row, span] = example.labels
        attention_mask[row, span] = 1
    pixel_values = torch.stack([example.pixel_values for example in examples])
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "pixel_values": pixel_values}


def answer_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over answer tokens and their number.

    Position ``t`` of ``logits`` predicts token ``t + 1``, so labels shift
    left by one. Positions labelled ``IGNORE_INDEX`` do not count.
    """
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:].to(shifted_logits.device)
    total = torch.nn.functional.cross_entropy(
        shifted_logits.reshape(-1, shifted_logits.shape[-1]),
        shifted_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return total, int((shifted_labels != IGNORE_INDEX).sum())


def answer_loss_per_example(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over each example's answer tokens, and each example's answer-token count."""
    shifted_logits = logits[:, :-1, :].float()
    shifted_labels = labels[:, 1:].to(shifted_logits.device)
    per_token = torch.nn.functional.cross_entropy(
        shifted_logits.transpose(1, 2), shifted_labels, ignore_index=IGNORE_INDEX, reduction="none"
    )
    return per_token.sum(dim=1), (shifted_labels != IGNORE_INDEX).sum(dim=1)
