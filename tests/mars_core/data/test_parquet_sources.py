"""Parquet and Hugging Face on-disk sources: image cells, column mapping, ScienceQA layout."""

import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mars_core.config import DataConfig
from mars_core.data import DatasetError, load_split, prepare_dataset, validate_dataset
from mars_core.data.schema import SPLITS

ROWS = 10


def _config(path: Path, **fields) -> DataConfig:
    return DataConfig(source="parquet", path=str(path), val_fraction=0.2, test_fraction=0.2, **fields)


def _all_rows(info) -> dict:
    return {example.id: example for split in SPLITS for example in load_split(info.path, split)}


def _vqa_table(images: list) -> pa.Table:
    return pa.table(
        {
            "id": [f"q{index}" for index in range(len(images))],
            "image": images,
            "question": [f"what shade is image {index}?" for index in range(len(images))],
            "answer": [f"shade {index}" for index in range(len(images))],
        }
    )


def test_parquet_with_image_bytes_round_trips(tmp_path, png_bytes):
    images = [png_bytes(index * 20) for index in range(ROWS)]
    pq.write_table(_vqa_table(images), tmp_path / "vqa.parquet")

    info = prepare_dataset(_config(tmp_path / "vqa.parquet"), tmp_path / "out")
    rows = _all_rows(info)

    assert sorted(rows) == sorted(f"q{index}" for index in range(ROWS))
    assert rows["q3"].question == "what shade is image 3?"
    assert rows["q3"].answer == "shade 3"
    assert rows["q3"].question_type == "default"
    original = Image.open(io.BytesIO(images[3]))
    assert np.array_equal(np.asarray(rows["q3"].image), np.asarray(original))
    validate_dataset(info.path)


def test_parquet_with_huggingface_image_structs(tmp_path, png_bytes):
    images = [{"bytes": png_bytes(index * 20), "path": f"ignored-{index}.png"} for index in range(ROWS)]
    pq.write_table(_vqa_table(images), tmp_path / "vqa.parquet")

    rows = _all_rows(prepare_dataset(_config(tmp_path / "vqa.parquet"), tmp_path / "out"))

    assert len(rows) == ROWS
    assert rows["q5"].image.getpixel((0, 0)) == (100, 155, 188)


def test_parquet_with_image_paths(tmp_path, write_png):
    folder = tmp_path / "pictures"
    paths = [f"set/{index}.png" for index in range(ROWS)]
    for index, path in enumerate(paths):
        write_png(folder, path, shade=index * 20)
    pq.write_table(_vqa_table(paths), tmp_path / "vqa.parquet")

    info = prepare_dataset(_config(tmp_path / "vqa.parquet", image_folder=str(folder)), tmp_path / "out")
    rows = _all_rows(info)

    assert len(rows) == ROWS
    assert rows["q2"].image.getpixel((0, 0)) == (40, 215, 24)


def test_parquet_path_escaping_image_folder_is_bad_row(tmp_path, write_png):
    folder = tmp_path / "pictures"
    paths = [f"{index}.png" for index in range(ROWS)]
    for index, path in enumerate(paths):
        write_png(folder, path, shade=index * 20)
    write_png(tmp_path, "secret.png", shade=1)
    paths[4] = "../secret.png"
    pq.write_table(_vqa_table(paths), tmp_path / "vqa.parquet")

    with pytest.raises(DatasetError, match=r"vqa.parquet row 4 \(id q4\)"):
        prepare_dataset(_config(tmp_path / "vqa.parquet", image_folder=str(folder)), tmp_path / "out")

    info = prepare_dataset(_config(tmp_path / "vqa.parquet", image_folder=str(folder), on_bad_rows="skip"), tmp_path / "out")
    assert info.manifest["bad_rows"]["by_reason"] == {"path_outside_image_folder": 1}
    assert "q4" not in _all_rows(info)


def test_parquet_column_mapping(tmp_path, png_bytes):
    table = pa.table(
        {
            "key": [f"k{index}" for index in range(ROWS)],
            "picture": [png_bytes(index * 20) for index in range(ROWS)],
            "query": [f"question {index}" for index in range(ROWS)],
            "label": list(range(ROWS)),
            "kind": ["count", "colour"] * (ROWS // 2),
        }
    )
    pq.write_table(table, tmp_path / "custom.parquet")
    columns = {"id": "key", "image": "picture", "question": "query", "answer": "label", "question_type": "kind"}

    info = prepare_dataset(_config(tmp_path / "custom.parquet", columns=columns), tmp_path / "out")
    rows = _all_rows(info)

    assert rows["k7"].question == "question 7"
    assert rows["k7"].answer == "7"
    assert rows["k7"].question_type == "colour"
    assert info.question_types == ["colour", "count"]


def test_parquet_missing_column_names_file_and_fix(tmp_path, png_bytes):
    table = pa.table({"image": [png_bytes(0)], "question": ["q"], "reply": ["a"]})
    pq.write_table(table, tmp_path / "broken.parquet")

    with pytest.raises(DatasetError) as error:
        prepare_dataset(_config(tmp_path / "broken.parquet"), tmp_path / "out")

    message = str(error.value)
    assert "broken.parquet" in message
    assert "answer (column 'answer')" in message
    assert "data.columns={answer: <column>}" in message


def test_parquet_mapping_to_absent_column_is_rejected(tmp_path, png_bytes):
    pq.write_table(_vqa_table([png_bytes(0)] * 3), tmp_path / "vqa.parquet")

    with pytest.raises(DatasetError, match="'kind'"):
        prepare_dataset(_config(tmp_path / "vqa.parquet", columns={"question_type": "kind"}), tmp_path / "out")


def test_column_mapping_rejects_unknown_role():
    with pytest.raises(ValueError, match="unknown role"):
        DataConfig(columns={"picture": "img"})


def _scienceqa_table(images: list) -> pa.Table:
    count = len(images)
    return pa.table(
        {
            "image": images,
            "question": [f"Which animal is item {index}?" for index in range(count)],
            "choices": [["cat", "dog", "fish"] if index % 2 else ["yes", "no"] for index in range(count)],
            "answer": [index % 2 for index in range(count)],
            "hint": ["The picture shows a pet." if index % 3 == 0 else "" for index in range(count)],
            "subject": ["natural science" if index % 2 else "language science" for index in range(count)],
        }
    )


def test_scienceqa_layout_builds_prompt_and_option_answer(tmp_path, png_bytes):
    images = [{"bytes": png_bytes(index * 20), "path": None} for index in range(ROWS)]
    pq.write_table(_scienceqa_table(images), tmp_path / "train.parquet")

    info = prepare_dataset(_config(tmp_path / "train.parquet"), tmp_path / "out")
    rows = _all_rows(info)

    assert info.manifest["source_details"]["layout"] == "scienceqa"
    assert rows["train-3"].question == (
        "Context: The picture shows a pet. Question: Which animal is item 3? Options: (A) cat (B) dog (C) fish"
    )
    assert rows["train-3"].answer == "dog"
    assert rows["train-4"].question == "Question: Which animal is item 4? Options: (A) yes (B) no"
    assert rows["train-4"].answer == "yes"
    assert rows["train-3"].question_type == "natural science"


def test_scienceqa_rows_without_image_are_bad_rows(tmp_path, png_bytes):
    images = [{"bytes": png_bytes(index * 20), "path": None} for index in range(ROWS)]
    images[2] = None
    images[5] = {"bytes": None, "path": None}
    pq.write_table(_scienceqa_table(images), tmp_path / "scienceqa.parquet")

    with pytest.raises(DatasetError, match="missing_image: 2"):
        prepare_dataset(_config(tmp_path / "scienceqa.parquet"), tmp_path / "out")

    info = prepare_dataset(_config(tmp_path / "scienceqa.parquet", on_bad_rows="skip"), tmp_path / "out")
    assert info.n_train + info.n_val + info.n_test == ROWS - 2
    assert info.manifest["bad_rows"]["by_reason"] == {"missing_image": 2}


def test_scienceqa_answer_index_out_of_range_is_bad_row(tmp_path, png_bytes):
    table = _scienceqa_table([png_bytes(index * 20) for index in range(ROWS)])
    answers = table.column("answer").to_pylist()
    answers[6] = 7
    table = table.set_column(table.schema.get_field_index("answer"), "answer", pa.array(answers))
    pq.write_table(table, tmp_path / "scienceqa.parquet")

    with pytest.raises(DatasetError, match="answer index 7 is out of range for 2 choices"):
        prepare_dataset(_config(tmp_path / "scienceqa.parquet"), tmp_path / "out")


def test_parquet_folder_splits_come_from_file_names(tmp_path, png_bytes):
    folder = tmp_path / "hub" / "data"
    folder.mkdir(parents=True)
    for split, start, count in (("train", 0, 6), ("validation", 6, 2), ("test", 8, 2)):
        images = [png_bytes(index * 20) for index in range(start, start + count)]
        table = _vqa_table(images).set_column(0, "id", pa.array([f"{split}{index}" for index in range(count)]))
        pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")

    info = prepare_dataset(_config(tmp_path / "hub"), tmp_path / "out")

    assert (info.n_train, info.n_val, info.n_test) == (6, 2, 2)
    assert load_split(info.path, "validation").ids == ["validation0", "validation1"]


def test_parquet_converts_jpeg_and_rgba_to_png(tmp_path, png_bytes):
    images = [png_bytes(index * 20) for index in range(ROWS)]
    images[0] = png_bytes(30, image_format="JPEG")
    images[1] = png_bytes(30, mode="RGBA")
    pq.write_table(_vqa_table(images), tmp_path / "vqa.parquet")

    info = prepare_dataset(_config(tmp_path / "vqa.parquet"), tmp_path / "out")
    rows = _all_rows(info)

    for row_id in ("q0", "q1"):
        assert rows[row_id].image.format == "PNG"
        assert rows[row_id].image.mode == "RGB"


def test_parquet_split_is_deterministic_for_seed(tmp_path, png_bytes):
    pq.write_table(_vqa_table([png_bytes(index * 20) for index in range(ROWS)]), tmp_path / "vqa.parquet")

    first = prepare_dataset(_config(tmp_path / "vqa.parquet"), tmp_path / "a")
    second = prepare_dataset(_config(tmp_path / "vqa.parquet"), tmp_path / "b")
    other_seed = prepare_dataset(_config(tmp_path / "vqa.parquet", seed=5), tmp_path / "c")

    assert first.fingerprint == second.fingerprint
    assert load_split(first.path, "test").ids == load_split(second.path, "test").ids
    assert other_seed.fingerprint != first.fingerprint


def test_hf_disk_without_datasets_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)

    with pytest.raises(DatasetError, match="pip install datasets"):
        prepare_dataset(DataConfig(source="hf_disk", path=str(tmp_path)), tmp_path / "out")


def test_hf_disk_round_trips_dataset_dict(tmp_path, png_bytes):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "answer": datasets.Value("string")}
    )

    def part(start: int, count: int):
        return datasets.Dataset.from_dict(
            {
                "image": [{"bytes": png_bytes(index * 20), "path": None} for index in range(start, start + count)],
                "question": [f"question {index}" for index in range(start, start + count)],
                "answer": [f"answer {index}" for index in range(start, start + count)],
            },
            features=features,
        )

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": part(0, 6), "validation": part(6, 2), "test": part(8, 2)}).save_to_disk(str(saved))

    info = prepare_dataset(DataConfig(source="hf_disk", path=str(saved)), tmp_path / "out")
    validation = load_split(info.path, "validation")

    assert (info.n_train, info.n_val, info.n_test) == (6, 2, 2)
    assert validation[0].question == "question 6"
    assert validation[1].answer == "answer 7"
    assert validation[0].image.getpixel((0, 0)) == (120, 135, 72)
