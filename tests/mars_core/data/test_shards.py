"""Shard storage: validation on load, corrupt data, sharding, atomic writes."""

import json
import pickle
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mars_core.config import DataConfig
from mars_core.data import DatasetError, load_dataset_info, load_split, prepare_dataset, validate_dataset
from mars_core.data import storage
from mars_core.data.schema import SPLITS


@pytest.fixture(scope="module")
def built_demo(tmp_path_factory):
    return prepare_dataset(DataConfig(max_train_examples=200), tmp_path_factory.mktemp("datasets"))


@pytest.fixture
def small_demo(built_demo, tmp_path):
    """A private copy of a small demo dataset, which a test may damage."""
    copy = tmp_path / Path(built_demo.path).name
    shutil.copytree(built_demo.path, copy)
    return load_dataset_info(copy)


def _rewrite_shard(info, split: str, change) -> Path:
    shard = Path(info.path) / split / "part-00000.parquet"
    table = pq.read_table(shard)
    pq.write_table(change(table), shard)
    return shard


def _replace_cell(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.schema.get_field_index(column)
    return table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type))


def test_corrupt_image_names_shard_and_row(small_demo):
    shard = _rewrite_shard(small_demo, "validation", lambda table: _replace_cell(table, "image", 7, b"garbage"))
    row_id = load_split(small_demo.path, "validation").ids[7]

    with pytest.raises(DatasetError) as error:
        validate_dataset(small_demo.path)

    assert f"{shard} row 7 (id {row_id!r})" in str(error.value)
    with pytest.raises(DatasetError, match="row 7"):
        load_split(small_demo.path, "validation")[7]


def test_missing_column_names_shard_and_column(small_demo):
    shard = _rewrite_shard(small_demo, "test", lambda table: table.drop_columns(["question_type"]))

    with pytest.raises(DatasetError) as error:
        load_split(small_demo.path, "test")

    assert str(shard) in str(error.value)
    assert "'question_type' is missing" in str(error.value)


def test_wrong_column_type_is_rejected(small_demo):
    def image_as_text(table):
        index = table.schema.get_field_index("image")
        return table.set_column(index, "image", pa.array(["x"] * table.num_rows))

    _rewrite_shard(small_demo, "train", image_as_text)

    with pytest.raises(DatasetError, match="'image' has type string, expected binary"):
        load_split(small_demo.path, "train")


def test_changed_answer_fails_fingerprint_check(small_demo):
    _rewrite_shard(small_demo, "train", lambda table: _replace_cell(table, "answer", 0, "changed"))

    with pytest.raises(DatasetError, match="fingerprint"):
        validate_dataset(small_demo.path)


def test_missing_manifest_is_rejected(small_demo):
    (Path(small_demo.path) / "manifest.json").unlink()

    with pytest.raises(DatasetError, match="manifest.json not found"):
        load_split(small_demo.path, "train")


def test_manifest_of_other_format_version_is_rejected(small_demo):
    path = Path(small_demo.path) / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["format_version"] = 999
    path.write_text(json.dumps(manifest))

    with pytest.raises(DatasetError, match="format version 999"):
        load_dataset_info(small_demo.path)


def test_unknown_split_is_rejected(small_demo):
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        load_split(small_demo.path, "dev")


def test_many_shards_read_as_one_split(tmp_path, monkeypatch):
    single = prepare_dataset(DataConfig(max_train_examples=250), tmp_path / "single")
    monkeypatch.setattr(storage, "ROWS_PER_SHARD", 100)
    monkeypatch.setattr(storage, "ROWS_PER_ROW_GROUP", 32)

    sharded = prepare_dataset(DataConfig(max_train_examples=250), tmp_path / "sharded")
    train = load_split(sharded.path, "train")
    expected = load_split(single.path, "train")

    assert sorted(path.name for path in (Path(sharded.path) / "train").iterdir()) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert sharded.fingerprint == single.fingerprint
    assert train.ids == expected.ids
    for index in (0, 99, 100, 201, 249, -1):
        assert train[index].image.tobytes() == expected[index].image.tobytes()
    assert "part-00002.parquet row 49" in train.locate(249)


def test_split_indexing_and_pickling(small_demo):
    rows = load_split(small_demo.path, "test")

    assert rows[-1].id == rows.ids[-1]
    assert [example.id for example in rows[2:5]] == rows.ids[2:5]
    with pytest.raises(IndexError):
        rows[len(rows)]
    copy = pickle.loads(pickle.dumps(rows))
    assert copy[3].image.tobytes() == rows[3].image.tobytes()


def test_manifest_records_counts_and_schema(small_demo):
    manifest = small_demo.manifest

    assert manifest["fingerprint"] == small_demo.fingerprint
    assert manifest["splits"]["train"]["rows"] == 200
    for split in SPLITS:
        assert sum(manifest["splits"][split]["question_types"].values()) == manifest["splits"][split]["rows"]
    assert manifest["schema"]["image"] == "binary"
    assert manifest["created_by"]["package"] == "mars-lora"
    assert manifest["config"]["max_train_examples"] == 200


def test_failed_prepare_leaves_no_files(tmp_path, monkeypatch):
    from mars_core.data import prepare

    def fail_on_manifest(folder, manifest):
        raise OSError("disk full")

    monkeypatch.setattr(prepare, "write_manifest", fail_on_manifest)
    out = tmp_path / "datasets"

    with pytest.raises(OSError, match="disk full"):
        prepare_dataset(DataConfig(max_train_examples=50), out)

    assert list(out.iterdir()) == []


def test_incomplete_target_folder_is_not_reused(tmp_path):
    from mars_core.data.prepare import open_source, recipe_key

    cfg = DataConfig(max_train_examples=50)
    out = tmp_path / "datasets"
    target = out / f"demo_digits-{recipe_key(cfg, open_source(cfg))}"
    (target / "train").mkdir(parents=True)

    with pytest.raises(DatasetError, match="not a complete dataset"):
        prepare_dataset(cfg, out)
