"""The embedded demo base model: a small LLaVA built from transformers' own classes.

Architecture: a CLIP vision encoder (16x16 images in 4x4 patches, so 16
image tokens), LLaVA's two-layer projector, and a Llama language model,
with a word-level tokenizer over ``DEMO_VOCABULARY`` and a ``LlavaProcessor``
with a CLIP image processor and a chat template. Everything is saved with
``save_pretrained`` and loads back through ``AutoModelForImageTextToText`` and
``AutoProcessor``, the same path a real model takes.

Pretraining, from scratch and in full, mixes two tasks:

- captioning the untransformed train digits (``pretraining_captions``),
  which teaches the vision encoder upright light-on-dark digits and the
  language model the number words;
- text-only word copying (every ``copy_every``-th step): the prompt is a
  random run of vocabulary words and the target repeats it. Captions never
  use the words of questions and of the answers ``even``, ``odd``, ``yes``
  and ``no``, and LoRA does not train embeddings, so without this task
  those embeddings would stay at their random initialisation. Copying
  trains every word as input and as output without teaching the meaning
  of any question.

The build is seeded and runs on the CPU generator only, so the same recipe
gives the same weights with the same torch build and thread count. It is
cached under a key derived from the recipe, ``DEMO_CODE_VERSION``, the
vocabulary and the pretraining data, and written to a temporary folder that
is renamed into place when complete.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers
from tqdm.auto import tqdm
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from mars_core.model.prompting import (
    EncodedExample,
    IGNORE_INDEX,
    answer_loss_sum,
    collate,
    encode_examples,
    end_token_id,
)

log = logging.getLogger(__name__)

# Bump when a change here changes the weights a recipe produces, so cached
# demo models are rebuilt instead of reused.
DEMO_CODE_VERSION = 1

PAD, UNK, END, IMAGE, USER, ASSISTANT = "<pad>", "<unk>", "<end>", "<image>", "<user>", "<assistant>"
SPECIAL_TOKENS = (PAD, UNK, END, IMAGE, USER, ASSISTANT)
# Punctuation gets its own tokens so that a question typed as "odd?" still tokenises.
PUNCTUATION = ("?", ".", ",", "!", ":", ";", "'", "-")

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' %}<user>{% else %}<assistant>{% endif -%}"
    "{%- if message['content'] is string %} {{ message['content'] }}{% else -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' %} <image>{% elif part['type'] == 'text' %} {{ part['text'] }}{% endif -%}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' %} <end>{% endif %} "
    "{%- endfor -%}"
    "{%- if add_generation_prompt %}<assistant>{% endif -%}"
)


@dataclass(frozen=True)
class DemoRecipe:
    """Everything that determines the demo model's weights; the cache key is derived from it."""

    # Architecture: 16x16 images in 4x4 patches give 16 image tokens.
    image_size: int = 16
    patch_size: int = 4
    vision_hidden_size: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate_size: int = 128
    text_hidden_size: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate_size: int = 256
    max_positions: int = 256
    # Pretraining: AdamW, linear warm-up, cosine decay to zero.
    steps: int = 600
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    copy_every: int = 4
    copy_min_words: int = 2
    copy_max_words: int = 8
    seed: int = 0
    # Split of the demo dataset whose train digits are captioned; match DataConfig
    # so that validation and test digits stay unseen.
    data_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15


def build_tokenizer(vocabulary: list[str]) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: special tokens, punctuation, then the vocabulary words, lowercased."""
    words = [PAD, UNK, END, IMAGE, USER, ASSISTANT, *PUNCTUATION]
    for word in sorted({w.lower() for w in vocabulary}):
        if word not in words:
            words.append(word)
    backend = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token=UNK))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="isolated")]
    )
    backend.add_special_tokens([AddedToken(token, normalized=False, special=True) for token in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        eos_token=END,
        extra_special_tokens={"image_token": IMAGE},
        padding_side="right",
    )


def build_processor(recipe: DemoRecipe, tokenizer: PreTrainedTokenizerFast) -> LlavaProcessor:
    """LLaVA processor: CLIP image processing at the recipe's image size, and the demo chat template."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": recipe.image_size},
        crop_size={"height": recipe.image_size, "width": recipe.image_size},
    )
    # CLIP prepends a class token; the "default" feature strategy drops it again.
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=recipe.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_config(recipe: DemoRecipe, tokenizer: PreTrainedTokenizerFast) -> LlavaConfig:
    """LLaVA configuration with a CLIP vision encoder and a Llama language model."""
    vision = CLIPVisionConfig(
        hidden_size=recipe.vision_hidden_size,
        intermediate_size=recipe.vision_intermediate_size,
        num_hidden_layers=recipe.vision_layers,
        num_attention_heads=recipe.vision_heads,
        image_size=recipe.image_size,
        patch_size=recipe.patch_size,
        num_channels=3,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.text_hidden_size,
        intermediate_size=recipe.text_intermediate_size,
        num_hidden_layers=recipe.text_layers,
        num_attention_heads=recipe.text_heads,
        num_key_value_heads=recipe.text_heads,
        max_position_embeddings=recipe.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    n_image_tokens = (recipe.image_size // recipe.patch_size) ** 2
    # The last vision layer feeds the projector (LLaVA-1.5 takes the second to
    # last); with -2 the last layer's LoRA would get no gradient at all.
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=n_image_tokens,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )


def recipe_key(recipe: DemoRecipe, captions: list[tuple[Image.Image, str]], vocabulary: list[str]) -> str:
    """Cache key: sha256 over the recipe, the code version, the vocabulary and the pretraining data."""
    sha = hashlib.sha256()
    header = {"recipe": dataclasses.asdict(recipe), "code_version": DEMO_CODE_VERSION, "vocabulary": list(vocabulary)}
    sha.update(json.dumps(header, sort_keys=True).encode())
    for image, caption in captions:
        sha.update(f"{image.mode}:{image.width}x{image.height}:{caption}|".encode())
        sha.update(image.tobytes())
    return sha.hexdigest()


def build_demo_model(
    cache_root: Path,
    recipe: DemoRecipe | None = None,
    progress: bool = False,
) -> tuple[Path, str]:
    """Build, pretrain and save the demo model, or reuse the cached one.

    Returns ``(folder, fingerprint)``. The folder contains the model, the
    processor and ``mars_demo.json`` (recipe and pretraining numbers).
    """
    from mars_core.data import DEMO_VOCABULARY, pretraining_captions

    recipe = recipe or DemoRecipe()
    captions = pretraining_captions(recipe.data_seed, recipe.val_fraction, recipe.test_fraction)
    key = recipe_key(recipe, captions, DEMO_VOCABULARY)
    target = Path(cache_root) / f"demo-{key[:16]}"
    if (target / "mars_demo.json").is_file():
        log.info("demo base model: cached at %s", target)
        return target, key

    log.info("demo base model: pretraining %d steps on %d captions", recipe.steps, len(captions))
    started = time.perf_counter()
    tokenizer = build_tokenizer(DEMO_VOCABULARY)
    processor = build_processor(recipe, tokenizer)
    model = _init_model(recipe, tokenizer)
    history = _pretrain(model, processor, recipe, captions, DEMO_VOCABULARY, progress)
    seconds = time.perf_counter() - started

    meta = {
        "fingerprint": key,
        "code_version": DEMO_CODE_VERSION,
        "recipe": dataclasses.asdict(recipe),
        "pretraining_seconds": round(seconds, 2),
        "pretraining_captions": len(captions),
        "final_caption_loss": history["caption"],
        "final_copy_loss": history["copy"],
    }
    _save_atomically(target, model, processor, meta)
    log.info(
        "demo base model: saved to %s after %.1f s (caption loss %.3f, copy loss %.3f)",
        target, seconds, history["caption"], history["copy"],
    )
    return target, key


def _init_model(recipe: DemoRecipe, tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    config = build_config(recipe, tokenizer)
    # fork_rng keeps the seeding from leaking into the caller's global generator.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def _pretrain(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    recipe: DemoRecipe,
    captions: list[tuple[Image.Image, str]],
    vocabulary: list[str],
    progress: bool,
) -> dict[str, float]:
    generator = torch.Generator().manual_seed(recipe.seed)
    caption_examples = encode_examples(
        processor, [image for image, _ in captions], [""] * len(captions), [caption for _, caption in captions]
    )
    pad_id = processor.tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(recipe.warmup_steps, recipe.steps))

    recent = {"caption": [], "copy": []}
    order = torch.randperm(len(caption_examples), generator=generator)
    cursor = 0
    model.train()
    for step in tqdm(range(recipe.steps), desc="pretraining demo model", disable=not progress):
        if recipe.copy_every and step % recipe.copy_every == recipe.copy_every - 1:
            task = "copy"
            batch = collate(_copy_examples(processor, vocabulary, recipe, generator), pad_id)
            inputs = {key: batch[key] for key in ("input_ids", "attention_mask")}
        else:
            task = "caption"
            if cursor + recipe.batch_size > len(order):
                order, cursor = torch.randperm(len(caption_examples), generator=generator), 0
            chosen = [caption_examples[int(i)] for i in order[cursor : cursor + recipe.batch_size]]
            cursor += recipe.batch_size
            batch = collate(chosen, pad_id)
            inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "pixel_values")}

        logits = model(**inputs).logits
        loss_sum, n_tokens = answer_loss_sum(logits, batch["labels"])
        loss = loss_sum / max(n_tokens, 1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        recent[task] = (recent[task] + [loss.item()])[-20:]

    model.eval()
    return {task: (sum(values) / len(values) if values else math.nan) for task, values in recent.items()}


def _copy_examples(processor, vocabulary: list[str], recipe: DemoRecipe, generator: torch.Generator) -> list[EncodedExample]:
    tokenizer = processor.tokenizer
    eos = end_token_id(processor)
    word_ids = tokenizer.convert_tokens_to_ids(sorted({w.lower() for w in vocabulary}))
    examples = []
    for _ in range(recipe.batch_size):
        length = int(torch.randint(recipe.copy_min_words, recipe.copy_max_words + 1, (1,), generator=generator))
        picks = torch.randint(len(word_ids), (length,), generator=generator).tolist()
        text = " ".join(tokenizer.convert_ids_to_tokens([word_ids[i] for i in picks]))
        prompt = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": text}]}], add_generation_prompt=True, tokenize=False
        )
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        target = [word_ids[i] for i in picks] + [eos]
        examples.append(
            EncodedExample(
                input_ids=torch.tensor(prompt_ids + target),
                labels=torch.tensor([IGNORE_INDEX] * len(prompt_ids) + target),
                pixel_values=torch.zeros(0),
                prompt_length=len(prompt_ids),
                answer=text,
                question_type="copy",
            )
        )
    return examples


def _warmup_cosine(warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return factor


def _save_atomically(target: Path, model, processor, meta: dict) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".tmp-{target.name}-{os.getpid()}-{threading.get_ident()}-{uuid.uuid4().hex[:8]}"
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "mars_demo.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished the same build first: its folder is equivalent, keep it.
            if not (target / "mars_demo.json").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
