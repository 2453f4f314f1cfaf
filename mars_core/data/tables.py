"""Tabular VQA sources: Parquet files and Hugging Face datasets saved to disk.

Both read rows with named columns; ``data.columns`` maps a role to a column
where the names differ (default: the role's own name). Roles:

* ``image``: PNG/JPEG bytes, a ``{"bytes": ..., "path": ...}`` struct as
  Hugging Face writes image features (bytes win when both are set), or a
  path relative to ``data.image_folder``.
* ``question``, ``answer``: text (a non-text answer is converted with ``str``).
* ``id``, ``question_type``: optional; ids default to ``<file>-<row>``.
* ``choices``, ``hint``: the ScienceQA layout, used when ``data.layout`` is
  ``scienceqa`` (or ``auto`` and a choices column exists). There the answer
  column holds the index of the correct choice, the question becomes
  ``Context: <hint> Question: <question> Options: (A) <choice> (B) ...``
  (without ``Context:`` when the hint is empty), and the stored answer is the
  correct choice's text. When no question_type column exists, ScienceQA's
  ``subject`` column gives the question type.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mars_core.config import DataConfig
from mars_core.data.schema import DatasetError
from mars_core.data.sources import (
    DEFAULT_QUESTION_TYPE,
    BadRowError,
    SourceRow,
    file_identity,
    folder_identity,
    normalize_split,
    require_path,
    resolve_image_path,
    split_from_name,
)

_BATCH_ROWS = 64
_SCIENCEQA_TYPE_COLUMN = "subject"


class ColumnMap:
    """The columns a table source reads, by role, and how rows become ``SourceRow``."""

    def __init__(self, cfg: DataConfig, available: list[str], where: str) -> None:
        names = {role: cfg.columns.get(role, role) for role in ("id", "image", "question", "answer", "question_type", "choices", "hint")}
        self.layout = cfg.layout
        if self.layout == "auto":
            self.layout = "scienceqa" if names["choices"] in available else "vqa"

        required = ["image", "question", "answer"] + (["choices"] if self.layout == "scienceqa" else [])
        missing_roles = [role for role in required if names[role] not in available]
        missing = [f"{role} (column {names[role]!r})" for role in missing_roles]
        if missing:
            mapping = ", ".join(f"{role}: <column>" for role in missing_roles)
            raise DatasetError(
                f"{where}: missing column(s) for {', '.join(missing)}; the columns are {available}. "
                f"Map each of these roles to one of the columns with data.columns={{{mapping}}}"
            )
        explicit_missing = [f"{role} (column {name!r})" for role, name in cfg.columns.items() if name not in available]
        if explicit_missing:
            raise DatasetError(f"{where}: data.columns names column(s) {explicit_missing} that do not exist; the columns are {available}")

        self.names = {role: name for role, name in names.items() if name in available}
        if self.layout != "scienceqa":
            self.names.pop("choices", None)
            self.names.pop("hint", None)
        elif "question_type" not in self.names and _SCIENCEQA_TYPE_COLUMN in available:
            self.names["question_type"] = _SCIENCEQA_TYPE_COLUMN

    @property
    def columns(self) -> list[str]:
        return sorted(set(self.names.values()))

    def to_source_row(self, values: dict, location: str, default_id: str, split: str | None, image_folder: Path) -> SourceRow:
        row = SourceRow(location=location, id=default_id, image=None, question="", answer="", split=split)
        try:
            if "id" in self.names and values[self.names["id"]] not in (None, ""):
                row.id = str(values[self.names["id"]])
            row.location = f"{location} (id {row.id})" if row.id != default_id else location
            if "question_type" in self.names and values[self.names["question_type"]] not in (None, ""):
                row.question_type = str(values[self.names["question_type"]])

            row.question, row.answer = self._question_answer(values)
            row.image, row.group = _image_value(values[self.names["image"]], image_folder)
        except BadRowError as problem:
            row.problem = problem
        return row

    def _question_answer(self, values: dict) -> tuple[str, str]:
        question = values[self.names["question"]]
        answer = values[self.names["answer"]]
        if question is not None and not isinstance(question, str):
            raise BadRowError("malformed_row", f"question is a {type(question).__name__}, expected text")
        if self.layout == "scienceqa":
            hint = values.get(self.names["hint"]) if "hint" in self.names else None
            return scienceqa_example(question or "", values[self.names["choices"]], answer, hint)
        return question or "", "" if answer is None else str(answer)


def scienceqa_example(question: str, choices: object, answer_index: object, hint: object) -> tuple[str, str]:
    """Build the multiple-choice prompt and the answer text of one ScienceQA row."""
    if isinstance(choices, str):
        try:
            choices = json.loads(choices)
        except json.JSONDecodeError as exc:
            raise BadRowError("malformed_row", f"choices is text but not a JSON list: {choices[:60]!r}") from exc
    if not isinstance(choices, (list, tuple)) or not choices:
        raise BadRowError("malformed_row", f"choices must be a non-empty list, got {choices!r}")
    if len(choices) > len(string.ascii_uppercase):
        raise BadRowError("malformed_row", f"{len(choices)} choices, at most {len(string.ascii_uppercase)} can get a letter")
    try:
        index = int(answer_index)
    except (TypeError, ValueError) as exc:
        raise BadRowError("malformed_row", f"answer {answer_index!r} is not a choice index") from exc
    if not 0 <= index < len(choices):
        raise BadRowError("malformed_row", f"answer index {index} is out of range for {len(choices)} choices")

    options = " ".join(f"({letter}) {choice}" for letter, choice in zip(string.ascii_uppercase, choices))
    parts = [f"Context: {hint.strip()}"] if isinstance(hint, str) and hint.strip() else []
    parts += [f"Question: {question.strip()}", f"Options: {options}"]
    return " ".join(parts), str(choices[index])


def _image_value(value: object, image_folder: Path) -> tuple[bytes | Path, str]:
    """Return ``(image bytes or resolved path, split group)`` for one image cell."""
    if isinstance(value, dict):
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise BadRowError("missing_image", "the image struct has neither bytes nor a path")
    if value is None:
        raise BadRowError("missing_image", "the image cell is empty")
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        return data, "sha256:" + hashlib.sha256(data).hexdigest()
    if isinstance(value, str):
        path = resolve_image_path(value, image_folder)
        return path, str(path)
    if hasattr(value, "save") and hasattr(value, "mode"):
        # A decoded PIL image, as datasets returns for image features that are not cast to decode=False.
        from mars_core.data.images import encode_png, to_stored_mode

        data = encode_png(to_stored_mode(value))
        return data, "sha256:" + hashlib.sha256(data).hexdigest()
    raise BadRowError("malformed_row", f"image cell is a {type(value).__name__}, expected bytes, a path or a struct")


class ParquetSource:
    """Rows of Parquet files: one file, or a folder whose files are named after splits.

    In a folder, a file's split comes from its name or its parent folder's
    name (``train-00000-of-00002.parquet``, ``validation/part-0.parquet``).
    When no file names a split, all files form one pool that is split by the
    configuration. Image paths are relative to ``data.image_folder``, which
    defaults to the folder of ``data.path``.
    """

    def __init__(self, cfg: DataConfig) -> None:
        path = require_path(cfg.path, cfg.source)
        self.root = path if path.is_dir() else path.parent
        self.files = _parquet_files(path)
        self.image_folder = Path(cfg.image_folder).expanduser() if cfg.image_folder else self.root
        self.provided_splits = frozenset(split for _, split in self.files if split is not None)

        self.column_maps = []
        for file, _ in self.files:
            try:
                available = pq.read_schema(file).names
            except (OSError, pa.ArrowInvalid) as exc:
                raise DatasetError(f"{file} is not a readable parquet file ({exc})") from exc
            self.column_maps.append(ColumnMap(cfg, available, str(file)))

    def identity(self) -> dict:
        return {"files": [file_identity(file) for file, _ in self.files], "image_folder": str(self.image_folder.resolve())}

    def describe(self) -> dict:
        return {
            "format": "parquet",
            "layout": self.column_maps[0].layout,
            "columns": self.column_maps[0].names,
            "files": [{"path": str(file), "split": split} for file, split in self.files],
            "image_folder": str(self.image_folder),
        }

    def rows(self) -> Iterator[SourceRow]:
        for (file, split), columns in zip(self.files, self.column_maps):
            name = str(file.relative_to(self.root)) if file.is_relative_to(self.root) else file.name
            batches = pq.ParquetFile(file).iter_batches(batch_size=_BATCH_ROWS, columns=columns.columns)
            for index, values in enumerate(_rows_of(batch.to_pylist() for batch in batches)):
                location = f"{name} row {index}"
                yield columns.to_source_row(values, location, f"{Path(name).stem}-{index}", split, self.image_folder)


def _rows_of(batches: Iterable[list[dict]]) -> Iterator[dict]:
    for batch in batches:
        yield from batch


def _parquet_files(path: Path) -> list[tuple[Path, str | None]]:
    if path.is_file():
        return [(path, split_from_name(path.name))]
    files = sorted(path.rglob("*.parquet"))
    if not files:
        raise DatasetError(f"data.path {path} contains no .parquet files")

    splits = [split_from_name(file.name) or split_from_name(file.parent.name) for file in files]
    if all(split is None for split in splits):
        return [(file, None) for file in files]
    unnamed = [str(file.relative_to(path)) for file, split in zip(files, splits) if split is None]
    if unnamed:
        raise DatasetError(
            f"data.path {path}: file(s) {unnamed} are not named after a split while others are; "
            "name every file (or its folder) train, validation or test, or point data.path at one file"
        )
    return list(zip(files, splits))


class HfDiskSource:
    """Rows of a Hugging Face dataset saved with ``save_to_disk``; needs the ``datasets`` package.

    A ``DatasetDict`` gives the source's splits; a single ``Dataset`` is one
    pool, split by the configuration. Image features are read undecoded, as
    ``{"bytes", "path"}``.
    """

    def __init__(self, cfg: DataConfig) -> None:
        self.path = require_path(cfg.path, cfg.source)
        datasets = _import_datasets()
        try:
            loaded = datasets.load_from_disk(str(self.path))
        except (FileNotFoundError, ValueError) as exc:
            raise DatasetError(f"data.path {self.path} is not a dataset saved with save_to_disk ({exc})") from exc

        parts: dict[str | None, object] = {}
        if isinstance(loaded, datasets.DatasetDict):
            for name, part in loaded.items():
                split = normalize_split(name, str(self.path))
                if split in parts:
                    raise DatasetError(f"data.path {self.path} has two splits that both mean {split!r}; keep one of them")
                parts[split] = part
        else:
            parts[None] = loaded
        self.image_folder = Path(cfg.image_folder).expanduser() if cfg.image_folder else self.path
        self.provided_splits = frozenset(split for split in parts if split is not None)

        self.parts = []
        for split, part in parts.items():
            columns = ColumnMap(cfg, list(part.column_names), f"{self.path} split {split or 'all'}")
            image_column = columns.names["image"]
            if isinstance(part.features.get(image_column), datasets.Image):
                part = part.cast_column(image_column, datasets.Image(decode=False))
            self.parts.append((split, part, columns))

    def identity(self) -> dict:
        return {"files": folder_identity(self.path), "image_folder": str(self.image_folder.resolve())}

    def describe(self) -> dict:
        split, _, columns = self.parts[0]
        return {
            "format": "huggingface datasets (load_from_disk)",
            "path": str(self.path),
            "layout": columns.layout,
            "columns": columns.names,
            "splits": [split for split, _, _ in self.parts],
            "image_folder": str(self.image_folder),
        }

    def rows(self) -> Iterator[SourceRow]:
        for split, part, columns in self.parts:
            name = split or "dataset"
            batches = part.select_columns(columns.columns).iter(batch_size=_BATCH_ROWS)
            for index, values in enumerate(_rows_of(_dict_batch_rows(batch) for batch in batches)):
                yield columns.to_source_row(values, f"{name} row {index}", f"{name}-{index}", split, self.image_folder)


def _dict_batch_rows(batch: dict[str, list]) -> list[dict]:
    names = list(batch)
    return [dict(zip(names, values)) for values in zip(*(batch[name] for name in names))]


def _import_datasets():
    try:
        import datasets
    except ImportError as exc:
        raise DatasetError(
            "data.source=hf_disk needs the Hugging Face `datasets` package, which is not installed; "
            "run `pip install datasets`, or export the dataset to Parquet and use data.source=parquet"
        ) from exc
    return datasets
