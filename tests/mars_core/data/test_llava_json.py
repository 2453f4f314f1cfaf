"""LLaVA conversation JSON and JSONL: conversion, splits and bad rows."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mars_core.config import DataConfig
from mars_core.data import DatasetError, load_split, prepare_dataset, validate_dataset
from mars_core.data.schema import SPLITS


def _conversation(record_id: str, image: str | None, turns: list[tuple[str, str]]) -> dict:
    messages = []
    for number, (question, answer) in enumerate(turns):
        messages.append({"from": "human", "value": ("<image>\n" if number == 0 else "") + question})
        messages.append({"from": "gpt", "value": answer})
    record = {"id": record_id, "conversations": messages}
    if image is not None:
        record["image"] = image
    return record


def _records(count: int) -> list[dict]:
    records = []
    for index in range(count):
        turns = [(f"what is shown in picture {index}?", f"shade {index}")]
        if index % 2 == 0:
            turns.append(("and its colour?", f"colour {index}"))
        records.append(_conversation(f"rec{index}", f"img/{index}.png", turns))
    return records


@pytest.fixture
def image_folder(tmp_path, write_png):
    folder = tmp_path / "images"
    for index in range(12):
        write_png(folder, f"img/{index}.png", shade=index * 20)
    return folder


def _config(path: Path, image_folder: Path, **fields) -> DataConfig:
    return DataConfig(
        source="llava_json", path=str(path), image_folder=str(image_folder), val_fraction=0.2, test_fraction=0.2, **fields
    )


def _all_rows(info) -> dict:
    return {example.id: example for split in SPLITS for example in load_split(info.path, split)}


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def test_llava_json_round_trips_every_turn(tmp_path, image_folder):
    records = _records(10)
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(records))

    info = prepare_dataset(_config(path, image_folder), tmp_path / "out")
    rows = _all_rows(info)

    assert len(rows) == 15
    assert info.n_train + info.n_val + info.n_test == 15
    assert rows["rec3-0"].question == "what is shown in picture 3?"
    assert rows["rec3-0"].answer == "shade 3"
    assert rows["rec3-0"].history == []
    assert rows["rec3-0"].question_type == "default"
    validate_dataset(info.path)


def test_llava_image_matches_source_pixels(tmp_path, image_folder):
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps(_records(10)))

    rows = _all_rows(prepare_dataset(_config(path, image_folder), tmp_path / "out"))
    original = Image.open(image_folder / "img/4.png")

    assert rows["rec4-0"].image.mode == "RGB"
    assert np.array_equal(np.asarray(rows["rec4-0"].image), np.asarray(original))


def test_llava_jsonl_multi_turn_keeps_history(tmp_path, image_folder):
    turns = [("<image> first question", "first answer"), ("second question", "second answer"), ("third", "last")]
    records = [_conversation("chat", "img/0.png", turns)] + _records(10)[1:]
    path = _write_jsonl(tmp_path / "conversations.jsonl", records)

    rows = _all_rows(prepare_dataset(_config(path, image_folder), tmp_path / "out"))

    assert rows["chat-0"].question == "first question"
    assert rows["chat-0"].history == []
    assert rows["chat-1"].question == "second question"
    assert rows["chat-1"].history == [("first question", "first answer")]
    assert rows["chat-2"].history == [("first question", "first answer"), ("second question", "second answer")]
    assert rows["chat-2"].answer == "last"
    assert all("<image>" not in row.question for row in rows.values())


def test_llava_turns_of_one_image_share_a_split(tmp_path, image_folder):
    records = [_conversation(f"rec{index}", f"img/{index}.png", [("q one", "a"), ("q two", "b"), ("q three", "c")]) for index in range(12)]
    # A second conversation about image 0 must land in the same split as the first.
    records.append(_conversation("again", "img/0.png", [("q", "a")]))
    path = _write_jsonl(tmp_path / "conversations.jsonl", records)

    info = prepare_dataset(_config(path, image_folder), tmp_path / "out")
    split_of = {example.id: split for split in SPLITS for example in load_split(info.path, split)}

    for index in range(12):
        assert split_of[f"rec{index}-0"] == split_of[f"rec{index}-1"] == split_of[f"rec{index}-2"]
    assert split_of["again-0"] == split_of["rec0-0"]
    assert info.n_val > 0
    assert info.n_test > 0


def test_llava_folder_splits_come_from_file_names(tmp_path, image_folder):
    records = _records(12)
    folder = tmp_path / "annotations"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", records[:8])
    _write_jsonl(folder / "val.jsonl", records[8:10])
    (folder / "test.json").write_text(json.dumps(records[10:]))

    info = prepare_dataset(_config(folder, image_folder), tmp_path / "out")

    assert {row_id.split("-")[0] for row_id in load_split(info.path, "validation").ids} == {"rec8", "rec9"}
    assert {row_id.split("-")[0] for row_id in load_split(info.path, "test").ids} == {"rec10", "rec11"}
    assert info.manifest["splits"]["validation"]["origin"] == "source"


def test_llava_missing_validation_is_carved_from_train(tmp_path, image_folder):
    records = _records(12)
    folder = tmp_path / "annotations"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", records[:10])
    _write_jsonl(folder / "test.jsonl", records[10:])

    info = prepare_dataset(_config(folder, image_folder), tmp_path / "out")
    test_ids = {row_id.split("-")[0] for row_id in load_split(info.path, "test").ids}

    assert test_ids == {"rec10", "rec11"}
    assert info.n_val > 0
    assert info.manifest["splits"]["validation"]["origin"].startswith("carved from train")


def test_llava_path_outside_folder_is_bad_row(tmp_path, image_folder, write_png):
    outside = write_png(tmp_path, "outside.png", shade=99)
    records = _records(10)
    records[1]["image"] = "../outside.png"
    records[3]["image"] = str(outside)
    path = _write_jsonl(tmp_path / "conversations.jsonl", records)

    with pytest.raises(DatasetError) as error:
        prepare_dataset(_config(path, image_folder), tmp_path / "out")

    message = str(error.value)
    assert "path_outside_image_folder: 2" in message
    assert "line 2" in message
    assert "line 4" in message
    assert "on_bad_rows=skip" in message


def test_llava_absolute_path_inside_folder_is_accepted(tmp_path, image_folder):
    records = _records(10)
    records[1]["image"] = str(image_folder / "img/1.png")
    path = _write_jsonl(tmp_path / "conversations.jsonl", records)

    info = prepare_dataset(_config(path, image_folder), tmp_path / "out")

    assert "rec1-0" in _all_rows(info)


def test_llava_bad_rows_error_writes_nothing(tmp_path, image_folder):
    records = _records(10)
    records[3]["image"] = "img/missing.png"
    path = _write_jsonl(tmp_path / "conversations.jsonl", records)
    out = tmp_path / "out"

    with pytest.raises(DatasetError, match="image_not_found"):
        prepare_dataset(_config(path, image_folder), out)

    assert list(out.iterdir()) == []


def test_llava_bad_rows_skip_counts_reasons(tmp_path, image_folder):
    records = _records(12)
    records[1]["image"] = "../escape.png"
    del records[2]["image"]
    records[3]["image"] = "img/missing.png"
    records[4]["conversations"][1]["value"] = "   "
    (image_folder / "img/7.png").write_bytes(b"not an image at all")
    lines = [json.dumps(record) for record in records]
    lines.insert(4, "{this is not json")
    path = tmp_path / "conversations.jsonl"
    path.write_text("\n".join(lines) + "\n")

    info = prepare_dataset(_config(path, image_folder, on_bad_rows="skip"), tmp_path / "out")
    rows = _all_rows(info)
    bad = info.manifest["bad_rows"]

    assert bad["by_reason"] == {
        "empty_answer": 1,
        "image_not_found": 1,
        "malformed_row": 1,
        "missing_image": 2,
        "path_outside_image_folder": 1,
        "undecodable_image": 1,
    }
    assert bad["count"] == 7
    assert len(rows) == 18 - 6
    for dropped in ("rec1-0", "rec2-0", "rec2-1", "rec3-0", "rec4-0", "rec7-0"):
        assert dropped not in rows
    assert "rec4-1" in rows


def test_llava_undecodable_image_names_row(tmp_path, image_folder):
    (image_folder / "img/6.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    path = _write_jsonl(tmp_path / "conversations.jsonl", _records(10))

    with pytest.raises(DatasetError) as error:
        prepare_dataset(_config(path, image_folder), tmp_path / "out")

    assert "line 7 (id rec6) turn 0" in str(error.value)
    assert "undecodable_image" in str(error.value)


def test_llava_json_that_is_not_a_list_is_rejected(tmp_path, image_folder):
    path = tmp_path / "conversations.json"
    path.write_text(json.dumps({"conversations": []}))

    with pytest.raises(DatasetError, match="expected a JSON array"):
        prepare_dataset(_config(path, image_folder), tmp_path / "out")


def test_llava_image_folder_defaults_to_file_folder(tmp_path, write_png):
    for index in range(10):
        write_png(tmp_path, f"img/{index}.png", shade=index * 20)
    path = _write_jsonl(tmp_path / "conversations.jsonl", _records(10))
    cfg = DataConfig(source="llava_json", path=str(path), val_fraction=0.2, test_fraction=0.2)

    info = prepare_dataset(cfg, tmp_path / "out")

    assert info.n_train + info.n_val + info.n_test == 15


def test_llava_changed_answer_changes_fingerprint(tmp_path, image_folder):
    records = _records(10)
    path = _write_jsonl(tmp_path / "a.jsonl", records)
    first = prepare_dataset(_config(path, image_folder), tmp_path / "out")
    records[4]["conversations"][1]["value"] = "a different answer"
    changed_path = _write_jsonl(tmp_path / "b.jsonl", records)

    changed = prepare_dataset(_config(changed_path, image_folder), tmp_path / "out")
    same_again = prepare_dataset(_config(path, image_folder), tmp_path / "out2")

    assert changed.fingerprint != first.fingerprint
    assert same_again.fingerprint == first.fingerprint


def test_llava_too_few_images_to_split_is_rejected(tmp_path, image_folder):
    path = _write_jsonl(tmp_path / "conversations.jsonl", _records(2))

    with pytest.raises(DatasetError, match="2 distinct images in train are too few"):
        prepare_dataset(_config(path, image_folder), tmp_path / "out")


def test_llava_folder_with_unnamed_files_is_rejected(tmp_path, image_folder):
    folder = tmp_path / "annotations"
    folder.mkdir()
    _write_jsonl(folder / "train.jsonl", _records(4))
    _write_jsonl(folder / "extra.jsonl", _records(4))

    with pytest.raises(DatasetError, match=r"\['extra.jsonl'\] is not named after a split"):
        prepare_dataset(_config(folder, image_folder), tmp_path / "out")
