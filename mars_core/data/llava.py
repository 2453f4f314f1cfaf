"""LLaVA conversation data: a JSON array or JSONL of records with an image folder.

A record looks like::

    {"id": "000123", "image": "coco/000123.jpg",
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"},
                       {"from": "gpt", "value": "A laptop."},
                       {"from": "human", "value": "What colour is it?"},
                       {"from": "gpt", "value": "Silver."}]}

Every assistant turn becomes one row: its question is the user turn before
it with the ``<image>`` placeholder removed, and ``history`` contains the
earlier turns of the conversation. Roles ``human``/``user`` and
``gpt``/``assistant`` are accepted, and ``system`` turns are ignored. A
record may set ``question_type``; otherwise rows get ``default``.

``data.path`` is one file, or a folder whose ``train``, ``validation``
(or ``val``/``dev``) and ``test`` files (``.json`` or ``.jsonl``) are the
source's splits. Image paths are relative to ``data.image_folder``, which
defaults to the folder of the annotation file.

NOTE: a ``.json`` file is parsed whole, so memory grows with its size;
convert very large annotation files to JSONL, which is read line by line.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from mars_core.config import DataConfig
from mars_core.data.schema import DatasetError
from mars_core.data.sources import (
    DEFAULT_QUESTION_TYPE,
    BadRowError,
    SourceRow,
    file_identity,
    require_path,
    resolve_image_path,
    split_from_name,
)

IMAGE_PLACEHOLDER = "<image>"
_USER_ROLES = ("human", "user")
_ASSISTANT_ROLES = ("gpt", "assistant")
_IGNORED_ROLES = ("system",)
_SUFFIXES = (".json", ".jsonl")


class LlavaSource:
    """Rows of LLaVA conversation files (see the module docstring for the layout)."""

    def __init__(self, cfg: DataConfig) -> None:
        path = require_path(cfg.path, cfg.source)
        self.files = _annotation_files(path)
        if cfg.image_folder:
            self.image_folder = Path(cfg.image_folder).expanduser()
        else:
            self.image_folder = path if path.is_dir() else path.parent
        if not self.image_folder.is_dir():
            raise DatasetError(f"data.image_folder {self.image_folder} is not a folder; point it at the images' root folder")
        self.provided_splits = frozenset(split for _, split in self.files if split is not None)

    def identity(self) -> dict:
        return {"files": [file_identity(path) for path, _ in self.files], "image_folder": str(self.image_folder.resolve())}

    def describe(self) -> dict:
        return {
            "format": "llava conversations",
            "files": [{"path": str(path), "split": split} for path, split in self.files],
            "image_folder": str(self.image_folder),
        }

    def rows(self) -> Iterator[SourceRow]:
        for path, split in self.files:
            for location, record in _records(path):
                yield from record_rows(record, location, split, self.image_folder)


def _annotation_files(path: Path) -> list[tuple[Path, str | None]]:
    """List annotation files with the split each file name gives (None for a single unnamed file)."""
    if path.is_file():
        if path.suffix.lower() not in _SUFFIXES:
            raise DatasetError(f"data.path {path} is not a .json or .jsonl file")
        return [(path, split_from_name(path.name))]

    files = sorted(child for child in path.iterdir() if child.is_file() and child.suffix.lower() in _SUFFIXES)
    if not files:
        raise DatasetError(f"data.path {path} contains no .json or .jsonl files")
    if len(files) == 1:
        return [(files[0], split_from_name(files[0].name))]

    unnamed = [file.name for file in files if split_from_name(file.name) is None]
    if unnamed:
        raise DatasetError(
            f"data.path {path} has several annotation files, and {unnamed} is not named after a split; "
            "name them train, validation (or val) and test, or point data.path at one file"
        )
    splits = [split_from_name(file.name) for file in files]
    repeated = sorted({split for split in splits if splits.count(split) > 1})
    if repeated:
        raise DatasetError(f"data.path {path} has several files for split(s) {repeated}; keep one file per split")
    return [(file, split_from_name(file.name)) for file in files]


def _records(path: Path) -> Iterator[tuple[str, object]]:
    """Yield ``(location, record)``; a JSONL line that is not valid JSON yields its error as the record."""
    if path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    yield f"{path.name} line {number}", json.loads(line)
                except json.JSONDecodeError as exc:
                    yield f"{path.name} line {number}", BadRowError("malformed_row", f"invalid JSON: {exc}")
        return

    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{path} is not valid JSON ({exc}); fix the file or convert it to JSONL") from exc
    if not isinstance(records, list):
        raise DatasetError(f"{path}: expected a JSON array of conversation records, got {type(records).__name__}")
    for index, record in enumerate(records):
        yield f"{path.name} record {index}", record


def record_rows(record: object, location: str, split: str | None, image_folder: Path) -> Iterator[SourceRow]:
    """Turn one conversation record into one row per assistant turn."""
    try:
        record_id, turns = _parse_record(record, location)
    except BadRowError as problem:
        yield SourceRow(location=location, id=location, image=None, question="", answer="", split=split, problem=problem)
        return

    image, group, image_problem = _record_image(record, image_folder)
    question_type = str(record.get("question_type") or DEFAULT_QUESTION_TYPE)
    for number, (question, answer) in enumerate(turns):
        yield SourceRow(
            location=f"{location} (id {record_id}) turn {number}",
            id=f"{record_id}-{number}",
            image=image,
            question=question,
            answer=answer,
            question_type=question_type,
            history=turns[:number],
            split=split,
            group=group,
            problem=image_problem,
        )


def _parse_record(record: object, location: str) -> tuple[str, list[tuple[str, str]]]:
    """Return the record's id and its (question, answer) turns, or raise ``BadRowError``."""
    if isinstance(record, BadRowError):
        raise record
    if not isinstance(record, dict):
        raise BadRowError("malformed_row", f"expected a JSON object, got {type(record).__name__}")
    conversation = record.get("conversations")
    if not isinstance(conversation, list) or not conversation:
        raise BadRowError("malformed_row", "missing or empty 'conversations' list")

    turns: list[tuple[str, str]] = []
    pending: str | None = None
    for position, message in enumerate(conversation):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            raise BadRowError("malformed_row", f"message {position} has no text 'value'")
        role = str(message.get("from", "")).lower()
        text = message["value"]

        if role in _IGNORED_ROLES:
            continue
        if role in _USER_ROLES:
            if pending is not None:
                raise BadRowError("malformed_row", f"message {position}: two user turns in a row")
            pending = text.replace(IMAGE_PLACEHOLDER, "").strip()
        elif role in _ASSISTANT_ROLES:
            if pending is None:
                raise BadRowError("malformed_row", f"message {position}: an assistant turn without a user turn before it")
            turns.append((pending, text.strip()))
            pending = None
        else:
            raise BadRowError("malformed_row", f"message {position} has unknown role {message.get('from')!r}")

    if not turns:
        raise BadRowError("malformed_row", "the conversation has no assistant turn")
    record_id = str(record["id"]) if record.get("id") not in (None, "") else location.replace(" ", "-")
    return record_id, turns


def _record_image(record: dict, image_folder: Path) -> tuple[Path | None, str | None, BadRowError | None]:
    """Return ``(resolved image path, split group, problem)`` for one record."""
    raw = record.get("image")
    if isinstance(raw, list):
        if len(raw) != 1:
            return None, None, BadRowError("malformed_row", f"{len(raw)} images in one conversation; only one is supported")
        raw = raw[0]
    if raw is None or raw == "":
        return None, None, BadRowError("missing_image", "the record has no 'image'")
    if not isinstance(raw, str):
        return None, None, BadRowError("malformed_row", f"'image' is a {type(raw).__name__}, expected a path")
    try:
        path = resolve_image_path(raw, image_folder)
    except BadRowError as problem:
        return None, None, problem
    return path, str(path), None
