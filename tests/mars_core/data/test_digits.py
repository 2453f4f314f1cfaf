"""The embedded digits VQA demo: determinism, splits, vocabulary, pretraining captions."""

from pathlib import Path

import numpy as np
import pytest

from mars_core.config import DataConfig
from mars_core.data import DEMO_VOCABULARY, load_split, prepare_dataset, pretraining_captions, validate_dataset
from mars_core.data import digits
from mars_core.data.schema import SPLITS


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return prepare_dataset(DataConfig(), tmp_path_factory.mktemp("demo"))


def _image_index(row_id: str) -> int:
    return int(row_id.split("-")[1])


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_demo_build_is_byte_identical(demo, tmp_path):
    again = prepare_dataset(DataConfig(), tmp_path)

    assert again.fingerprint == demo.fingerprint
    assert _file_bytes(Path(again.path)) == _file_bytes(Path(demo.path))


def test_demo_fingerprint_changes_with_seed(demo, tmp_path):
    other = prepare_dataset(DataConfig(seed=1), tmp_path)

    assert other.fingerprint != demo.fingerprint


def test_demo_fingerprint_changes_with_one_answer(demo, tmp_path, monkeypatch):
    original = digits.make_question
    calls = []

    def change_first_answer(question_type, digit, rng):
        question, answer = original(question_type, digit, rng)
        calls.append(answer)
        if len(calls) == 1:
            answer = "one" if answer == "zero" else "zero"
        return question, answer

    monkeypatch.setattr(digits, "make_question", change_first_answer)
    changed = prepare_dataset(DataConfig(), tmp_path)

    assert changed.n_train == demo.n_train
    assert changed.fingerprint != demo.fingerprint


def test_demo_prepare_reuses_existing_dataset(demo):
    manifest = Path(demo.path) / "manifest.json"
    written = manifest.stat().st_mtime_ns

    again = prepare_dataset(DataConfig(), Path(demo.path).parent)

    assert again.path == demo.path
    assert manifest.stat().st_mtime_ns == written


def test_demo_splits_are_disjoint_by_image(demo):
    images = {split: {_image_index(row_id) for row_id in load_split(demo.path, split).ids} for split in SPLITS}

    assert not images["train"] & images["validation"]
    assert not images["train"] & images["test"]
    assert not images["validation"] & images["test"]
    assert len(images["train"] | images["validation"] | images["test"]) == 1797


def test_demo_every_split_has_every_question_type(demo):
    for split in SPLITS:
        assert set(load_split(demo.path, split).question_types) == set(digits.QUESTION_TYPES), split


def test_demo_sizes_fit_a_small_cpu(demo):
    assert 1500 <= demo.n_train <= 2600
    assert 200 <= demo.n_val <= 700
    assert 200 <= demo.n_test <= 700


def test_demo_images_are_small_grayscale(demo):
    rows = load_split(demo.path, "test")

    for example in (rows[0], rows[len(rows) // 2], rows[-1]):
        assert example.image.mode == "L"
        assert example.image.size == (digits.IMAGE_SIZE, digits.IMAGE_SIZE)


def test_demo_answers_are_correct_for_the_digit(demo):
    _, labels = digits._load_digits()
    parity = {"even": 0, "odd": 1}

    for example in load_split(demo.path, "validation"):
        digit = int(labels[_image_index(example.id)])
        words = example.question.split()
        if example.question_type == "digit":
            assert example.answer == digits.NUMBER_WORDS[digit]
        elif example.question_type == "parity":
            assert parity[example.answer] == digit % 2
        elif example.question_type == "arithmetic":
            operand = digits.NUMBER_WORDS.index(words[-2])
            expected = digit + operand if words[-3] == "plus" else digit - operand
            assert example.answer == digits.NUMBER_WORDS[expected]
        else:
            threshold = digits.NUMBER_WORDS.index(words[-2])
            assert example.answer == ("yes" if digit > threshold else "no")


def test_demo_finetuning_images_differ_from_pretraining(demo):
    images, _ = digits._load_digits()
    example = load_split(demo.path, "train")[0]
    upright = np.asarray(digits.pretraining_image(images[_image_index(example.id)]), dtype=float)
    shown = np.asarray(example.image, dtype=float)

    # Inverted: the background (most pixels) is dark before and light after.
    assert np.median(upright) < 64
    assert np.median(shown) > 192
    assert not np.array_equal(upright, shown)


def test_vocabulary_covers_every_demo_text(demo):
    vocabulary = set(DEMO_VOCABULARY)
    texts = [caption for _, caption in pretraining_captions()]
    for split in SPLITS:
        rows = load_split(demo.path, split)
        texts += rows.questions + rows.answers

    for text in texts:
        assert text == text.lower()
        assert set(text.split()) <= vocabulary, text


def test_pretraining_captions_use_only_train_digits(demo):
    images, labels = digits._load_digits()
    captions = pretraining_captions(seed=0)
    seen = {image.tobytes() for image, _ in captions}
    train = {_image_index(row_id) for row_id in load_split(demo.path, "train").ids}
    held_out = {_image_index(row_id) for split in ("validation", "test") for row_id in load_split(demo.path, split).ids}

    assert len(captions) == len(train) * len(digits.CAPTION_TEMPLATES)
    # Compare pixels, skipping held-out digits whose pixels equal a train digit's.
    train_pixels = {digits.pretraining_image(images[i]).tobytes() for i in train}
    for index in held_out:
        pixels = digits.pretraining_image(images[index]).tobytes()
        assert pixels not in seen or pixels in train_pixels


def test_pretraining_captions_name_the_digit():
    images, labels = digits._load_digits()
    by_pixels = {digits.pretraining_image(images[i]).tobytes(): int(labels[i]) for i in range(len(labels))}

    for image, caption in pretraining_captions(seed=0)[:200]:
        assert image.mode == "L"
        assert caption.split()[-1] == digits.NUMBER_WORDS[by_pixels[image.tobytes()]]


def test_demo_max_train_examples_caps_train(tmp_path):
    capped = prepare_dataset(DataConfig(max_train_examples=300), tmp_path)
    rows = load_split(capped.path, "train")

    assert capped.n_train == 300
    assert len(rows) == 300
    assert len(set(rows.ids)) == 300
    validate_dataset(capped.path)


def test_demo_validates(demo):
    info = validate_dataset(demo.path)

    assert info.fingerprint == demo.fingerprint
