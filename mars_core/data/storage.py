"""Parquet shards of a prepared dataset: writing, lazy reading and validation."""

from __future__ import annotations

import bisect
import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import pyarrow as pa
import pyarrow.parquet as pq
from mars_core.data.images import ImageDecodeError, decode_image, pixel_digest
from mars_core.data.schema import (
    COLUMNS,
    FORMAT_VERSION,
    ROWS_PER_ROW_GROUP,
    ROWS_PER_SHARD,
    SCHEMA,
    SPLITS,
    ContentHash,
    DatasetError,
    DatasetInfo,
    Row,
    Split,
    VqaExample,
    combine_fingerprint,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_TEXT_COLUMNS = ("id", "question", "answer", "question_type", "history")
# Bytes of decoded-from-parquet image columns that one VqaSplit keeps cached.
_IMAGE_CACHE_BYTES = 256 * 2**20


class SplitWriter:
    """Streams rows of one split into ``part-NNNNN.parquet`` shards of at most ``rows_per_shard`` rows."""

    def __init__(
        self,
        folder: Path,
        rows_per_shard: int | None = None,
        rows_per_row_group: int = ROWS_PER_ROW_GROUP,
    ) -> None:
        self.folder = folder
        self.rows_per_shard = rows_per_shard or ROWS_PER_SHARD
        self.rows_per_row_group = min(rows_per_row_group, self.rows_per_shard)
        self.rows = 0
        self.shards: list[str] = []
        self.question_types: Counter[str] = Counter()
        self._hash = ContentHash()
        self._buffer: dict[str, list] = {name: [] for name in COLUMNS}
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        folder.mkdir(parents=True, exist_ok=True)

    def write(self, row: Row) -> None:
        history = row.history_json()
        if self._writer is None or self._rows_in_shard >= self.rows_per_shard:
            self._open_next_shard()
        for name, value in (
            ("id", row.id),
            ("image", row.image),
            ("question", row.question),
            ("answer", row.answer),
            ("question_type", row.question_type),
            ("history", history),
        ):
            self._buffer[name].append(value)
        self._hash.add(row.id, row.pixel_digest, row.question, row.answer, row.question_type, history)
        self.question_types[row.question_type] += 1
        self.rows += 1
        self._rows_in_shard += 1
        if len(self._buffer["id"]) >= self.rows_per_row_group or self._rows_in_shard >= self.rows_per_shard:
            self._flush()

    def close(self) -> dict:
        """Finish the last shard and return this split's manifest entry."""
        if self._writer is None:
            # An empty split still gets one shard, so readers always find the schema.
            self._open_next_shard()
        self._flush()
        self._writer.close()
        self._writer = None
        return {
            "rows": self.rows,
            "shards": list(self.shards),
            "question_types": dict(sorted(self.question_types.items())),
            "content_hash": self._hash.hexdigest(),
        }

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open_next_shard(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
        name = f"part-{len(self.shards):05d}.parquet"
        self._writer = pq.ParquetWriter(self.folder / name, SCHEMA, compression="zstd")
        self.shards.append(name)
        self._rows_in_shard = 0

    def _flush(self) -> None:
        if not self._buffer["id"]:
            return
        batch = pa.record_batch([pa.array(self._buffer[name], SCHEMA.field(name).type) for name in COLUMNS], schema=SCHEMA)
        self._writer.write_batch(batch, row_group_size=self.rows_per_row_group)
        self._buffer = {name: [] for name in COLUMNS}


def write_manifest(folder: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    (folder / MANIFEST).write_text(text, encoding="utf-8")


def load_dataset_info(path: str | Path) -> DatasetInfo:
    """Read and check a prepared dataset's manifest.

    Raises ``DatasetError`` when the manifest is missing, unreadable, of
    another format version, or lacks a field.
    """
    folder = Path(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DatasetError(
            f"{manifest_path} not found: {folder} is not a prepared dataset, or its preparation did not finish; "
            "run prepare_dataset (or `mars prepare`) to build it"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{manifest_path} is not valid JSON ({exc}); delete {folder} and prepare the dataset again") from exc

    for key in ("format_version", "source", "fingerprint", "splits", "question_types", "schema"):
        if key not in manifest:
            raise DatasetError(f"{manifest_path} has no {key!r} field; delete {folder} and prepare the dataset again")
    if manifest["format_version"] != FORMAT_VERSION:
        raise DatasetError(
            f"{manifest_path} has format version {manifest['format_version']}, this code reads version "
            f"{FORMAT_VERSION}; delete {folder} and prepare the dataset again"
        )
    for split in SPLITS:
        entry = manifest["splits"].get(split)
        if not isinstance(entry, dict) or "rows" not in entry or "shards" not in entry:
            raise DatasetError(f"{manifest_path} has no valid entry for split {split!r}; prepare the dataset again")

    splits = manifest["splits"]
    return DatasetInfo(
        path=str(folder),
        fingerprint=manifest["fingerprint"],
        n_train=splits["train"]["rows"],
        n_val=splits["validation"]["rows"],
        n_test=splits["test"]["rows"],
        question_types=list(manifest["question_types"]),
        manifest=manifest,
    )


def _check_shard_schema(shard: Path) -> None:
    try:
        schema = pq.read_schema(shard)
    except (OSError, pa.ArrowInvalid) as exc:
        raise DatasetError(f"{shard} is not a readable parquet file ({exc}); prepare the dataset again") from exc
    for expected in SCHEMA:
        if expected.name not in schema.names:
            raise DatasetError(
                f"{shard}: column {expected.name!r} is missing (found {schema.names}); "
                "the shard was not written by prepare_dataset, prepare the dataset again"
            )
        actual = schema.field(expected.name).type
        allowed = {expected.type, pa.large_string() if expected.type == pa.string() else pa.large_binary()}
        if actual not in allowed:
            raise DatasetError(
                f"{shard}: column {expected.name!r} has type {actual}, expected {expected.type}; "
                "prepare the dataset again"
            )


class VqaSplit(Sequence[VqaExample]):
    """One split of a prepared dataset, as a sequence of ``VqaExample``.

    Text columns are read when the split is opened. Images stay PNG bytes in
    the parquet files until an example is indexed: the row group that contains
    it is read (and kept in a small cache), and the image is decoded then.
    Indexing is safe after pickling, so the split can go to DataLoader
    workers.
    """

    def __init__(self, folder: Path, split: str, shards: list[str], expected_rows: int) -> None:
        self.folder = folder
        self.split = split
        self._files = [folder / split / name for name in shards]
        self._ids: list[str] = []
        self._questions: list[str] = []
        self._answers: list[str] = []
        self._types: list[str] = []
        self._histories: list[str] = []
        # (first row of the group in this split, file index, row group index, rows)
        self._groups: list[tuple[int, int, int, int]] = []
        self._cache: OrderedDict[tuple[int, int], list[bytes]] = OrderedDict()
        self._cache_bytes = 0

        self._file_starts: list[int] = []
        for file_index, path in enumerate(self._files):
            if not path.is_file():
                raise DatasetError(f"shard {path} listed in the manifest is missing; prepare the dataset again")
            _check_shard_schema(path)
            parquet = pq.ParquetFile(path)
            table = parquet.read(columns=list(_TEXT_COLUMNS))

            start = len(self._ids)
            self._file_starts.append(start)
            for row_group in range(parquet.num_row_groups):
                rows = parquet.metadata.row_group(row_group).num_rows
                self._groups.append((start, file_index, row_group, rows))
                start += rows

            self._ids += table.column("id").to_pylist()
            self._questions += table.column("question").to_pylist()
            self._answers += table.column("answer").to_pylist()
            self._types += table.column("question_type").to_pylist()
            self._histories += table.column("history").to_pylist()

        if len(self._ids) != expected_rows:
            raise DatasetError(
                f"{folder / split}: the shards contain {len(self._ids)} rows but the manifest records {expected_rows}; "
                "prepare the dataset again"
            )
        self._group_starts = [group[0] for group in self._groups]

    def __len__(self) -> int:
        return len(self._ids)

    @overload
    def __getitem__(self, index: int) -> VqaExample: ...
    @overload
    def __getitem__(self, index: slice) -> list[VqaExample]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        position = self._position(index)
        try:
            image = decode_image(self.image_bytes(position))
        except ImageDecodeError as exc:
            raise DatasetError(f"{self.locate(position)}: {exc}; run validate_dataset and prepare the dataset again") from exc
        return VqaExample(
            id=self._ids[position],
            image=image,
            question=self._questions[position],
            answer=self._answers[position],
            question_type=self._types[position],
            history=[tuple(turn) for turn in json.loads(self._histories[position])],
        )

    def __iter__(self) -> Iterator[VqaExample]:
        for position in range(len(self)):
            yield self[position]

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def questions(self) -> list[str]:
        return list(self._questions)

    @property
    def answers(self) -> list[str]:
        return list(self._answers)

    @property
    def question_types(self) -> list[str]:
        """Question type of every row, in row order (no image is read)."""
        return list(self._types)

    def image_bytes(self, index: int) -> bytes:
        """Return the stored PNG bytes of one row, without decoding them."""
        position = self._position(index)
        group_index = bisect.bisect_right(self._group_starts, position) - 1
        start, file_index, row_group, _ = self._groups[group_index]
        return self._row_group_images(file_index, row_group)[position - start]

    def locate(self, index: int) -> str:
        """Describe where row ``index`` is stored, for error messages."""
        position = self._position(index)
        group_index = bisect.bisect_right(self._group_starts, position) - 1
        file_index = self._groups[group_index][1]
        row_in_file = position - self._file_starts[file_index]
        return f"{self._files[file_index]} row {row_in_file} (id {self._ids[position]!r})"

    def _position(self, index: int) -> int:
        if not isinstance(index, int):
            raise TypeError(f"split indices must be integers or slices, not {type(index).__name__}")
        size = len(self._ids)
        position = index + size if index < 0 else index
        if not 0 <= position < size:
            raise IndexError(f"index {index} is out of range for the {self.split} split of {size} rows")
        return position

    def _row_group_images(self, file_index: int, row_group: int) -> list[bytes]:
        key = (file_index, row_group)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        images = pq.ParquetFile(self._files[file_index]).read_row_group(row_group, columns=["image"])
        values = images.column("image").to_pylist()
        self._cache[key] = values
        self._cache_bytes += sum(len(value) for value in values)
        while self._cache_bytes > _IMAGE_CACHE_BYTES and len(self._cache) > 1:
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= sum(len(value) for value in evicted)
        return values

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = OrderedDict()
        state["_cache_bytes"] = 0
        return state


def load_split(path: str | Path, split: Split) -> VqaSplit:
    """Open one split of a prepared dataset; images are decoded when an example is indexed.

    Checks the manifest, that every shard exists with the expected columns
    and types, and that the row count matches the manifest. Use
    ``validate_dataset`` to also decode every image.
    """
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; use one of {list(SPLITS)}")
    info = load_dataset_info(path)
    entry = info.manifest["splits"][split]
    return VqaSplit(Path(path), split, list(entry["shards"]), int(entry["rows"]))


def validate_dataset(path: str | Path, progress: bool = False) -> DatasetInfo:
    """Check a prepared dataset completely: decode every image once and recompute the fingerprint.

    Raises ``DatasetError`` naming the shard, row and id of the first
    undecodable image or malformed ``history``, or the mismatch between the
    recomputed fingerprint and the manifest's.
    """
    info = load_dataset_info(path)
    log.info("validating dataset %s (%d rows)", path, info.n_train + info.n_val + info.n_test)

    digests: dict[str, str] = {}
    for split in SPLITS:
        digests[split] = _validate_split(load_split(path, split), progress)

    fingerprint = combine_fingerprint(digests)
    if fingerprint != info.fingerprint:
        raise DatasetError(
            f"{Path(path) / MANIFEST}: the rows hash to fingerprint {fingerprint[:16]}..., the manifest records "
            f"{info.fingerprint[:16]}...; the shards were changed after preparation, prepare the dataset again"
        )
    log.info("validated dataset %s: fingerprint %s", path, fingerprint[:16])
    return info


def _validate_split(rows: VqaSplit, progress: bool) -> str:
    content = ContentHash()
    positions = range(len(rows))
    if progress:
        from tqdm.auto import tqdm

        positions = tqdm(positions, desc=f"validating {rows.split}", unit="row")

    for position in positions:
        try:
            image = decode_image(rows.image_bytes(position))
        except ImageDecodeError as exc:
            raise DatasetError(f"{rows.locate(position)}: {exc}; prepare the dataset again") from exc
        if image.mode not in ("L", "RGB"):
            raise DatasetError(f"{rows.locate(position)}: image mode {image.mode!r}, expected 'L' or 'RGB'")
        history = rows._histories[position]
        if not _is_history(history):
            raise DatasetError(
                f"{rows.locate(position)}: column 'history' is not a JSON list of [question, answer] pairs: {history[:80]!r}"
            )
        content.add(
            rows._ids[position], pixel_digest(image), rows._questions[position],
            rows._answers[position], rows._types[position], history,
        )
    return content.hexdigest()


def _is_history(text: str) -> bool:
    try:
        turns = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(turns, list) and all(
        isinstance(turn, list) and len(turn) == 2 and all(isinstance(part, str) for part in turn) for turn in turns
    )

