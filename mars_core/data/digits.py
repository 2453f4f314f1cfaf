"""The embedded demo task: visual questions about scikit-learn's handwritten digits.

scikit-learn ships 1,797 real 8x8 grayscale digits (``load_digits``), so
the demo needs no download. The demo base model is pretrained to caption
the digits as they are (``pretraining_captions``); fine-tuning then asks
new kinds of questions about digits shown differently, so both modules have
to adapt:

* vision: fine-tuning images are rotated 90 degrees counter-clockwise,
  inverted (dark ink on a light background instead of light on dark) and
  carry Gaussian pixel noise; pretraining images are none of these.
* language: pretraining only ever produces captions ("a handwritten
  seven"); fine-tuning asks four question types the model never saw.

Every image is stored as a 16x16 mode "L" PNG (the 8x8 digit upscaled
bilinearly). Texts are lowercase words separated by single spaces, with
"?" as its own word, so ``text.split()`` tokenises any caption, question or
answer into words of ``DEMO_VOCABULARY``.

Images are split into train, validation and test by image (stratified by
digit), with ``DataConfig.seed`` and the configured fractions. Captions are
made from train images only, so no test digit is seen in pretraining as
long as ``pretraining_captions`` gets the same seed and fractions as the
dataset.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

from mars_core.data.images import encode_png, pixel_digest
from mars_core.data.schema import SPLITS, Row
from mars_core.data.sources import SourceRow

IMAGE_SIZE = 16
NOISE_STD = 24.0  # Gaussian pixel noise of fine-tuning images, in 0..255 gray levels
ROTATION_DEGREES = 90
# Bump when anything below changes the rows the demo produces.
DEMO_RECIPE_VERSION = 1

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

CAPTION_TEMPLATES = (
    "a handwritten {digit}",
    "the digit {digit}",
    "a picture of the number {digit}",
    "this is a handwritten {digit}",
)

QUESTION_TYPES = ("digit", "parity", "arithmetic", "greater")
_DIGIT_QUESTIONS = ("what digit is this ?", "which digit is shown ?")
_PARITY_QUESTIONS = ("is the digit even or odd ?", "is this digit odd or even ?")
_ARITHMETIC_QUESTION = "what is the digit {operation} {operand} ?"
_GREATER_QUESTION = "is the digit greater than {threshold} ?"
_OPERANDS = (1, 2, 3)


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target.astype(int)


def split_indices(
    labels: np.ndarray, seed: int, val_fraction: float, test_fraction: float
) -> dict[str, np.ndarray]:
    """Assign image indices to splits, stratified by digit, in a seeded random order.

    Each digit class contributes ``round(fraction * class size)`` images to
    validation and to test; the rest go to train.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {split: [] for split in SPLITS}
    for digit in range(10):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_test = round(test_fraction * len(members))
        n_val = round(val_fraction * len(members))
        parts["test"] += members[:n_test].tolist()
        parts["validation"] += members[n_test : n_test + n_val].tolist()
        parts["train"] += members[n_test + n_val :].tolist()
    return {split: rng.permutation(np.array(indices, dtype=int)) for split, indices in parts.items()}


def pretraining_image(pixels: np.ndarray) -> Image.Image:
    """Render a digit for pretraining: light ink on a dark background, upright, no noise."""
    gray = np.clip(pixels * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return Image.fromarray(gray).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)


def finetuning_image(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Render a digit for fine-tuning: rotated, inverted, with Gaussian pixel noise."""
    upright = np.asarray(pretraining_image(pixels), dtype=np.float64)
    rotated = np.rot90(upright, k=ROTATION_DEGREES // 90)
    inverted = 255.0 - rotated
    noisy = inverted + rng.normal(0.0, NOISE_STD, size=inverted.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))


def make_question(question_type: str, digit: int, rng: np.random.Generator) -> tuple[str, str]:
    """Return a ``(question, answer)`` of one type about ``digit``, with wording drawn from ``rng``."""
    if question_type == "digit":
        return _DIGIT_QUESTIONS[rng.integers(len(_DIGIT_QUESTIONS))], NUMBER_WORDS[digit]

    if question_type == "parity":
        return _PARITY_QUESTIONS[rng.integers(len(_PARITY_QUESTIONS))], "even" if digit % 2 == 0 else "odd"

    if question_type == "arithmetic":
        # Only operations whose result is a digit again, so answers stay in zero..nine.
        choices = [("plus", k) for k in _OPERANDS if digit + k <= 9] + [("minus", k) for k in _OPERANDS if digit - k >= 0]
        operation, operand = choices[rng.integers(len(choices))]
        result = digit + operand if operation == "plus" else digit - operand
        question = _ARITHMETIC_QUESTION.format(operation=operation, operand=NUMBER_WORDS[operand])
        return question, NUMBER_WORDS[result]

    if question_type == "greater":
        threshold = int(rng.integers(1, 9))
        question = _GREATER_QUESTION.format(threshold=NUMBER_WORDS[threshold])
        return question, "yes" if digit > threshold else "no"

    raise ValueError(f"unknown demo question type {question_type!r}; expected one of {QUESTION_TYPES}")


def iter_demo_rows(
    seed: int, val_fraction: float, test_fraction: float, questions_per_image: int
) -> Iterator[tuple[str, Row]]:
    """Yield ``(split, row)`` for every demo question, split by image.

    Each image gets ``questions_per_image`` questions of distinct types.
    Image noise and question choices come from a generator seeded with
    ``(seed, image index)``, so a row does not depend on the order of others.
    """
    if not 1 <= questions_per_image <= len(QUESTION_TYPES):
        raise ValueError(f"questions_per_image={questions_per_image} must be between 1 and {len(QUESTION_TYPES)}")
    images, labels = _load_digits()
    splits = split_indices(labels, seed, val_fraction, test_fraction)

    for split in SPLITS:
        for index in splits[split]:
            rng = np.random.default_rng([seed, int(index)])
            digit = int(labels[index])
            image = finetuning_image(images[index], rng)
            png, digest = encode_png(image), pixel_digest(image)
            chosen = rng.choice(len(QUESTION_TYPES), size=questions_per_image, replace=False)
            for type_index in sorted(chosen.tolist()):
                question_type = QUESTION_TYPES[type_index]
                question, answer = make_question(question_type, digit, rng)
                row_id = f"digit-{int(index):04d}-{question_type}"
                yield split, Row(row_id, png, digest, question, answer, question_type)


def pretraining_captions(
    seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15
) -> list[tuple[Image.Image, str]]:
    """Return ``(image, caption)`` pairs for pretraining the demo base model.

    Covers every train-split digit of the demo dataset with the same
    ``seed`` and fractions, untransformed (upright, light ink on dark, no
    noise, 16x16 mode "L"), once with each of the caption templates:
    ``len(CAPTION_TEMPLATES)`` pairs per image, image by image. Validation
    and test digits are left out, so pass the ``DataConfig``'s seed and
    fractions to keep them unseen.
    """
    images, labels = _load_digits()
    train = split_indices(labels, seed, val_fraction, test_fraction)["train"]
    pairs = []
    for index in train:
        image = pretraining_image(images[index])
        for template in CAPTION_TEMPLATES:
            pairs.append((image.copy(), template.format(digit=NUMBER_WORDS[labels[index]])))
    return pairs


def all_demo_texts() -> Iterator[str]:
    """Yield every caption, question and answer text the demo can produce."""
    for word in NUMBER_WORDS:
        for template in CAPTION_TEMPLATES:
            yield template.format(digit=word)
    yield from _DIGIT_QUESTIONS
    yield from _PARITY_QUESTIONS
    for operation in ("plus", "minus"):
        for operand in _OPERANDS:
            yield _ARITHMETIC_QUESTION.format(operation=operation, operand=NUMBER_WORDS[operand])
    for threshold in range(1, 9):
        yield _GREATER_QUESTION.format(threshold=NUMBER_WORDS[threshold])
    yield from NUMBER_WORDS
    yield from ("even", "odd", "yes", "no")


# Every word of every demo caption, question and answer, sorted: the closed
# vocabulary of the demo's word-level tokenizer.
DEMO_VOCABULARY: list[str] = sorted({word for text in all_demo_texts() for word in text.split()})


class DemoSource:
    """The demo task as a ``Source`` for ``prepare_dataset``; it defines all three splits itself."""

    provided_splits = frozenset(SPLITS)

    def __init__(self, seed: int, val_fraction: float, test_fraction: float, questions_per_image: int) -> None:
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.questions_per_image = questions_per_image

    def identity(self) -> dict:
        return {"demo_recipe_version": DEMO_RECIPE_VERSION}

    def describe(self) -> dict:
        return {
            "images": "scikit-learn load_digits, 1797 real 8x8 handwritten digits",
            "image_size": [IMAGE_SIZE, IMAGE_SIZE],
            "image_mode": "L",
            "transforms": (
                f"upscaled bilinearly to {IMAGE_SIZE}x{IMAGE_SIZE}, rotated {ROTATION_DEGREES} degrees "
                f"counter-clockwise, inverted, Gaussian noise with std {NOISE_STD} gray levels"
            ),
            "question_types": list(QUESTION_TYPES),
            "questions_per_image": self.questions_per_image,
            "demo_recipe_version": DEMO_RECIPE_VERSION,
        }

    def rows(self) -> Iterator[SourceRow]:
        for split, row in iter_demo_rows(self.seed, self.val_fraction, self.test_fraction, self.questions_per_image):
            yield SourceRow(
                location=f"demo row {row.id}",
                id=row.id,
                image=row.image,
                question=row.question,
                answer=row.answer,
                question_type=row.question_type,
                split=split,
                group=row.id.rsplit("-", 1)[0],
            )
