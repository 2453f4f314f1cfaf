"""Types, errors and the stored layout shared by every dataset source.

A prepared dataset is a folder::

    <dataset>/manifest.json
    <dataset>/train/part-00000.parquet, part-00001.parquet, ...
    <dataset>/validation/part-00000.parquet
    <dataset>/test/part-00000.parquet

Every shard has the columns of ``COLUMNS``. ``image`` contains PNG bytes of a
mode "L" or "RGB" image, and ``history`` contains a JSON list of earlier
``[question, answer]`` turns (``"[]"`` for a single-turn example).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
from PIL import Image

SPLITS: tuple[str, ...] = ("train", "validation", "test")
Split = Literal["train", "validation", "test"]

# Bump when the stored layout or the meaning of a column changes, so that
# old dataset folders are rebuilt instead of misread.
FORMAT_VERSION = 1

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("image", pa.binary()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("question_type", pa.string()),
        ("history", pa.string()),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)

ROWS_PER_SHARD = 10_000
# Small row groups keep a random access cheap: reading one example reads
# the images of its row group only.
ROWS_PER_ROW_GROUP = 128

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class DatasetError(ValueError):
    """Invalid dataset input; the message names the file, row or column and the fix."""


@dataclass(frozen=True)
class DatasetInfo:
    """A prepared dataset folder and the facts its manifest records."""

    path: str
    fingerprint: str
    n_train: int
    n_val: int
    n_test: int
    question_types: list[str]
    manifest: dict = field(repr=False, hash=False, compare=False)


@dataclass
class VqaExample:
    """One visual question answering example, with earlier turns of its conversation."""

    id: str
    image: Image.Image
    question: str
    answer: str
    question_type: str
    history: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Row:
    """One row on its way into a shard: the image is already PNG bytes."""

    id: str
    image: bytes
    pixel_digest: bytes
    question: str
    answer: str
    question_type: str
    history: list[tuple[str, str]] = field(default_factory=list)

    def history_json(self) -> str:
        return json.dumps([list(turn) for turn in self.history], ensure_ascii=False)


class ContentHash:
    """Running sha256 over the rows of one split, in row order.

    Each field is length-prefixed, so two different rows can never hash to
    the same byte stream. The hash covers content only: the shard layout,
    the manifest and the parquet encoding do not enter it.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()

    def _update(self, data: bytes) -> None:
        self._sha.update(len(data).to_bytes(8, "little"))
        self._sha.update(data)

    def add(self, row_id: str, pixel_digest: bytes, question: str, answer: str, question_type: str, history: str) -> None:
        for text in (row_id, question, answer, question_type, history):
            self._update(text.encode())
        self._update(pixel_digest)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def combine_fingerprint(split_digests: dict[str, str]) -> str:
    """Fingerprint of a dataset from the content hashes of its splits, in ``SPLITS`` order."""
    sha = hashlib.sha256(f"mars-vqa-v{FORMAT_VERSION}".encode())
    for split in SPLITS:
        sha.update(f"|{split}:{split_digests[split]}".encode())
    return sha.hexdigest()
