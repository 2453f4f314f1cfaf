"""Evaluation: answer-token loss, perplexity and exact-match accuracy of greedy answers.

Loss and perplexity are means over answer tokens (the answer and the end
token after it), weighted by token, so a long answer counts more than a
short one. Accuracy compares the greedy answer with the reference after
``normalize_answer``; it is a mean over examples. Both are also given per
question type.
"""

from __future__ import annotations

import logging
import math
import re
import string
import time
from collections import defaultdict
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from mars_core.config import MarsConfig
from mars_core.model.base import BaseModelInfo, load_base_model
from mars_core.model.prompting import (
    EncodedExample,
    answer_loss_per_example,
    answer_loss_sum,
    collate,
    end_token_id,
    model_inputs,
)
from mars_core.train.batches import encode_vqa

log = logging.getLogger(__name__)

_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and collapse whitespace, for exact-match comparison."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def loss_sums(
    model, examples: Sequence[EncodedExample], pad_token_id: int, batch_size: int, progress: bool = False
) -> list[tuple[float, int]]:
    """Summed answer-token loss and answer-token count of each example, in order."""
    was_training = model.training
    model.eval()
    device, dtype = model_device(model), model_dtype(model)
    out: list[tuple[float, int]] = []
    try:
        for start in tqdm(range(0, len(examples), batch_size), desc="loss", disable=not progress):
            chunk = examples[start : start + batch_size]
            batch = collate(chunk, pad_token_id)
            logits = model(**model_inputs(batch, device, dtype)).logits
            totals, counts = answer_loss_per_example(logits, batch["labels"])
            out += list(zip(totals.tolist(), counts.tolist()))
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def validation_loss(model, examples: Sequence[EncodedExample], pad_token_id: int, batch_size: int) -> float:
    """Mean answer-token loss over ``examples``, weighted by token."""
    was_training = model.training
    model.eval()
    device, dtype = model_device(model), model_dtype(model)
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_token_id)
            logits = model(**model_inputs(batch, device, dtype)).logits
            batch_total, batch_count = answer_loss_sum(logits, batch["labels"])
            total += float(batch_total)
            count += batch_count
    finally:
        model.train(was_training)
    return total / max(count, 1)


@torch.no_grad()
def greedy_answers(
    model, processor, examples: Sequence[EncodedExample], batch_size: int, max_new_tokens: int, progress: bool = False
) -> list[str]:
    """Greedy answers, decoded without special tokens; prompts are left-padded in batches."""
    tokenizer = processor.tokenizer
    pad_id, eos_id = tokenizer.pad_token_id, end_token_id(processor)
    was_training = model.training
    model.eval()
    device, dtype = model_device(model), model_dtype(model)
    answers: list[str] = []
    try:
        for start in tqdm(range(0, len(examples), batch_size), desc="greedy answers", disable=not progress):
            prompts = [example.prompt_only() for example in examples[start : start + batch_size]]
            batch = collate(prompts, pad_id, padding_side="left")
            generated = model.generate(
                **model_inputs(batch, device, dtype),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
            new_tokens = generated[:, batch["input_ids"].shape[1] :]
            answers += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    finally:
        model.train(was_training)
    return answers


def score(examples: Sequence[EncodedExample], sums: list[tuple[float, int]], predictions: list[str]) -> dict:
    """Loss, perplexity and accuracy overall and per question type."""
    groups: dict[str, list[int]] = defaultdict(list)
    for index, example in enumerate(examples):
        groups[example.question_type].append(index)

    def summarize(indices: list[int]) -> dict:
        total = sum(sums[i][0] for i in indices)
        tokens = sum(sums[i][1] for i in indices)
        correct = sum(normalize_answer(predictions[i]) == normalize_answer(examples[i].answer) for i in indices)
        loss = total / max(tokens, 1)
        return {"loss": loss, "accuracy": correct / max(len(indices), 1), "n": len(indices), "perplexity": math.exp(loss)}

    report = summarize(list(range(len(examples))))
    report["per_type"] = {
        qtype: {key: value for key, value in summarize(indices).items() if key != "perplexity"}
        for qtype, indices in sorted(groups.items())
    }
    return report


def evaluate(
    cfg: MarsConfig,
    base: BaseModelInfo,
    dataset,
    adapter_dir: str | None,
    split: str = "test",
    progress: bool = False,
    max_new_tokens: int = 16,
) -> dict:
    """Evaluate the base model, or the base model with a saved PEFT adapter, on one split.

    Returns ``{"loss", "perplexity", "accuracy", "n", "per_type": {type: {"loss", "accuracy", "n"}}}``.
    """
    from peft import PeftModel

    from mars_core.data import load_split

    started = time.perf_counter()
    log.info("evaluation: %s split, adapter %s", split, adapter_dir or "none (base model)")
    model, processor = load_base_model(cfg.model, base)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()

    examples = encode_vqa(processor, list(load_split(dataset.path, split)))
    if not examples:
        raise ValueError(f"the {split} split of {dataset.path} is empty; there is nothing to evaluate")
    batch_size = cfg.train.eval_batch_size
    sums = loss_sums(model, examples, processor.tokenizer.pad_token_id, batch_size, progress)
    predictions = greedy_answers(model, processor, examples, batch_size, max_new_tokens, progress)
    report = score(examples, sums, predictions)

    log.info(
        "evaluation: %s loss %.4f, perplexity %.3f, accuracy %.3f on %d examples in %.1f s",
        split, report["loss"], report["perplexity"], report["accuracy"], report["n"], time.perf_counter() - started,
    )
    return report
