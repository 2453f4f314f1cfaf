"""Turn visual questions into model inputs with answer-only labels.

A conversation is rendered with the processor's own chat template: the image
and earlier turns (``history``) go into the prompt, then the generation
prompt of the assistant. The answer tokens and the end-of-turn token(s)
after them follow. Labels copy the answer and end tokens and set every
prompt and image position to ``IGNORE_INDEX``, so only the answer counts in
the loss. Earlier answers in ``history`` are context and are not trained on.

The end-of-turn tokens come from the chat template itself: the text the
template writes after an assistant message, without surrounding whitespace
(``<|im_end|>`` for ChatML, ``<end_of_turn>`` for Gemma, ``<|eot_id|>`` for
Llama 3). When a template writes nothing there, or the processor has no
template, the tokenizer's ``eos_token`` ends the answer.

A processor without a chat template (PaliGemma's) gets the plain question
text, and the processor adds the image tokens itself; earlier turns are
joined as "question answer" lines.

The processor expands the image placeholder into image tokens. Besides
``input_ids`` and ``pixel_values`` it may return more model inputs
(``image_grid_thw``, ``image_sizes``, ``pixel_attention_mask``,
``token_type_ids``, ``cross_attention_mask``, ...). Those go into
``EncodedExample.extra_inputs`` and ``collate`` batches them, so the
training loop passes every input the model's forward expects.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from PIL import Image

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

# Processor outputs with one entry per token (batch, sequence, ...): they are
# extended over the answer tokens and padded with the token ids.
SEQUENCE_INPUTS = ("token_type_ids", "mm_token_type_ids", "cross_attention_mask")
# Processor outputs that are not model inputs.
_NOT_MODEL_INPUTS = ("input_ids", "attention_mask", "labels")
# Token type of answer tokens, by processor class, where it is not the type
# of the last prompt token. PaliGemma attends bidirectionally within type 0
# (image and prompt) and causally over type 1 (the answer).
ANSWER_TOKEN_TYPE = {"PaliGemmaProcessor": 1}
# A placeholder answer, for reading what a chat template writes after an answer.
_ANSWER_MARK = "MARSANSWERMARK"


@dataclass
class EncodedExample:
    """One example as tensors: token ids, labels (``IGNORE_INDEX`` outside the answer) and pixels."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor | None
    prompt_length: int
    answer: str
    question_type: str
    extra_inputs: dict[str, torch.Tensor] = field(default_factory=dict)

    def prompt_only(self) -> EncodedExample:
        """Return the same example cut after its prompt, for greedy decoding."""
        length = self.prompt_length
        extra = {
            key: value[:, :length] if key in SEQUENCE_INPUTS else value for key, value in self.extra_inputs.items()
        }
        return EncodedExample(
            input_ids=self.input_ids[:length],
            labels=self.labels[:length],
            pixel_values=self.pixel_values,
            prompt_length=length,
            answer=self.answer,
            question_type=self.question_type,
            extra_inputs=extra,
        )


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
    if not getattr(processor, "chat_template", None):
        lines = [f"{user_text} {assistant_text}" for user_text, assistant_text in history]
        return "\n".join([*lines, question])
    return processor.apply_chat_template(build_messages(question, history), add_generation_prompt=True, tokenize=False)


def end_token_ids(processor) -> list[int]:
    """Ids of the tokens that end an answer: the template's end of turn, else the tokenizer's ``eos_token``."""
    tokenizer = processor.tokenizer
    suffix = _template_answer_suffix(processor)
    if suffix:
        ids = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        if ids and ids[0] in tokenizer.all_special_ids:
            return list(ids)
        log.warning("the chat template ends an answer with %r, which does not start with a special token; "
                    "using the eos_token instead", suffix)
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token and the chat template writes no end-of-turn token: "
                         "answers need an end token for training and greedy decoding")
    return [int(tokenizer.eos_token_id)]


def end_token_id(processor) -> int:
    """Id of the first token that ends an answer, where greedy decoding stops."""
    return end_token_ids(processor)[0]


def _template_answer_suffix(processor) -> str:
    """Return the text the chat template writes after an assistant answer, without surrounding whitespace."""
    if not getattr(processor, "chat_template", None):
        return ""
    messages = build_messages("question")
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    answered = [*messages, {"role": "assistant", "content": [{"type": "text", "text": _ANSWER_MARK}]}]
    full = processor.apply_chat_template(answered, tokenize=False)
    if not full.startswith(prompt) or _ANSWER_MARK not in full:
        log.warning("the chat template renders an answered conversation that does not start with the generation "
                    "prompt; answers end with the eos_token")
        return ""
    return full[full.index(_ANSWER_MARK) + len(_ANSWER_MARK):].strip()


def encode_prompts(
    processor, images: Sequence[Image.Image], prompts: Sequence[str]
) -> tuple[list[list[int]], torch.Tensor]:
    """Token ids (image token expanded by the processor) and pixel values for prompts with one image each.

    Only for processors whose outputs are ``input_ids``, ``attention_mask``
    and one ``pixel_values`` entry per image (LLaVA's); ``encode_examples``
    handles every other processor.
    """
    encoded = processor(text=list(prompts), images=list(images), add_special_tokens=False, return_tensors=None)
    pixel_values = encoded["pixel_values"]
    if not isinstance(pixel_values, torch.Tensor):
        pixel_values = torch.as_tensor(_stack(pixel_values))
    return [list(ids) for ids in encoded["input_ids"]], pixel_values.float()


def _stack(arrays):
    import numpy as np

    return np.stack([np.asarray(array) for array in arrays])


def _encode_one(processor, image: Image.Image, prompt: str) -> tuple[list[int], dict[str, torch.Tensor]]:
    """Token ids and the other model inputs of one prompt, each input with a batch axis of one."""
    encoded = processor(text=[prompt], images=[[image]], add_special_tokens=False, return_tensors="pt")
    extra = {key: torch.as_tensor(value) for key, value in encoded.items() if key not in _NOT_MODEL_INPUTS}
    return encoded["input_ids"][0].tolist(), extra


def _has_plain_outputs(extra: dict[str, torch.Tensor]) -> bool:
    """Whether a processor returns only ``pixel_values`` with one row per image, so batches can be stacked."""
    return set(extra) == {"pixel_values"} and extra["pixel_values"].shape[0] == 1


def _extend_sequence_inputs(
    processor, extra: dict[str, torch.Tensor], n_answer: int
) -> dict[str, torch.Tensor]:
    """Extend per-token inputs over ``n_answer`` answer tokens.

    Answer tokens take the values of the last prompt token (text, after the
    image, so ``cross_attention_mask`` lets them attend to it), except the
    token type where ``ANSWER_TOKEN_TYPE`` names one.
    """
    out = dict(extra)
    for key in SEQUENCE_INPUTS:
        if key not in extra:
            continue
        value = extra[key]
        tail = value[:, -1:].expand(value.shape[0], n_answer, *value.shape[2:]).clone()
        if key == "token_type_ids" and type(processor).__name__ in ANSWER_TOKEN_TYPE:
            tail.fill_(ANSWER_TOKEN_TYPE[type(processor).__name__])
        out[key] = torch.cat([value, tail], dim=1)
    return out


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

    Processors with plain outputs (``_has_plain_outputs``) run in chunks of
    ``chunk_size``, because they are much faster per example on a list.
    Others run one example at a time, because their outputs (flattened
    patches, tiles, per-token masks) do not split back into examples
    reliably.
    """
    n = len(images)
    if not len(questions) == len(answers) == n:
        raise ValueError(f"got {n} images, {len(questions)} questions and {len(answers)} answers; they must match")
    if n == 0:
        return []
    question_types = question_types or [""] * n
    histories = histories or [()] * n
    end_ids = end_token_ids(processor)
    prompts = [render_prompt(processor, questions[i], histories[i]) for i in range(n)]
    answer_ids = processor.tokenizer(list(answers), add_special_tokens=False)["input_ids"]

    def example(index: int, prompt: list[int], pixel_values, extra: dict) -> EncodedExample:
        target = [*answer_ids[index], *end_ids]
        return EncodedExample(
            input_ids=torch.tensor(prompt + target, dtype=torch.long),
            labels=torch.tensor([IGNORE_INDEX] * len(prompt) + target, dtype=torch.long),
            pixel_values=pixel_values,
            prompt_length=len(prompt),
            answer=answers[index],
            question_type=question_types[index],
            extra_inputs=_extend_sequence_inputs(processor, extra, len(target)),
        )

    first_ids, first_extra = _encode_one(processor, images[0], prompts[0])
    if not _has_plain_outputs(first_extra):
        encoded = [example(0, first_ids, None, first_extra)]
        for index in range(1, n):
            ids, extra = _encode_one(processor, images[index], prompts[index])
            encoded.append(example(index, ids, None, extra))
        return encoded

    encoded = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        prompt_ids, pixel_values = encode_prompts(processor, images[start:stop], prompts[start:stop])
        for offset, index in enumerate(range(start, stop)):
            encoded.append(example(index, prompt_ids[offset], pixel_values[offset], {}))
    return encoded


def collate(examples: Sequence[EncodedExample], pad_token_id: int, padding_side: str = "right") -> dict[str, torch.Tensor]:
    """Pad a batch: ``input_ids``, ``attention_mask``, ``labels``, ``pixel_values`` and any extra inputs.

    Training pads on the right. Greedy decoding pads prompts on the left, so
    that every prompt ends where generation starts. Extra inputs are joined
    along their first axis (one row per image, or per patch for Qwen-VL),
    and zero-padded in the other axes where examples differ, as the
    processors pad a batch themselves (image tiles, patches, per-token masks).
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
    out = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if all(example.pixel_values is not None for example in examples):
        out["pixel_values"] = torch.stack([example.pixel_values for example in examples])
    for key in examples[0].extra_inputs:
        values = [example.extra_inputs[key] for example in examples]
        out[key] = _join_padded(values, sequence_length=length if key in SEQUENCE_INPUTS else None,
                                padding_side=padding_side)
    return out


def _join_padded(values: list[torch.Tensor], sequence_length: int | None, padding_side: str) -> torch.Tensor:
    """Concatenate along axis 0 after zero-padding the other axes to their maximum size.

    With ``sequence_length``, axis 1 is the token axis: it is padded to that
    length on ``padding_side``, the same side as the token ids.
    """
    shape = [max(value.shape[axis] for value in values) for axis in range(values[0].dim())]
    if sequence_length is not None:
        shape[1] = sequence_length
    padded = []
    for value in values:
        target = value.new_zeros((value.shape[0], *shape[1:]))
        region = [slice(0, size) for size in value.shape]
        if sequence_length is not None and padding_side == "left":
            region[1] = slice(sequence_length - value.shape[1], sequence_length)
        target[tuple(region)] = value
        padded.append(target)
    return torch.cat(padded, dim=0)


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Return the model's keyword inputs from a collated batch: every entry but ``labels``, floats cast to ``dtype``."""
    inputs = {}
    for key, value in batch.items():
        if key == "labels":
            continue
        if value.is_floating_point():
            inputs[key] = value.to(device=device, dtype=dtype)
        else:
            inputs[key] = value.to(device)
    return inputs


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
