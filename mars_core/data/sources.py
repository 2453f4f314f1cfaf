"""What every dataset source yields, and the checks shared by all of them.

A source reads one input format and yields ``SourceRow`` objects in a fixed
order. It does not decode images: ``prepare_dataset`` does that once per row
and turns every problem into a counted bad row (see ``BAD_ROW_REASONS``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from mars_core.data.schema import DatasetError

DEFAULT_QUESTION_TYPE = "default"

# Reason code -> plain description, for bad-row reports and the manifest.
BAD_ROW_REASONS = {
    "missing_image": "the row has no image",
    "image_not_found": "the image file does not exist",
    "undecodable_image": "the image cannot be decoded",
    "path_outside_image_folder": "the image path leads outside the image folder",
    "empty_answer": "the answer is empty",
    "malformed_row": "the row does not have the expected structure",
}

# Split names used by common datasets, mapped to the three names stored here.
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "val": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


class BadRowError(Exception):
    """A row that cannot become an example; ``reason`` is a key of ``BAD_ROW_REASONS``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class SourceRow:
    """One example as a source reads it, before its image is checked.

    ``image`` is the encoded image, a path already resolved inside the image
    folder, or None when the row has none. ``group`` identifies the image, so
    that splitting keeps every row of one image in the same split.
    ``problem`` is set when the source has already found the row bad.
    """

    location: str
    id: str
    image: bytes | Path | None
    question: str
    answer: str
    question_type: str = DEFAULT_QUESTION_TYPE
    history: list[tuple[str, str]] = field(default_factory=list)
    split: str | None = None
    group: str | None = None
    problem: BadRowError | None = None


class Source(Protocol):
    """A readable dataset input."""

    # Splits the input defines itself; the others are carved out of train.
    provided_splits: frozenset[str]

    def identity(self) -> dict:
        """JSON-serialisable facts that change when the input changes (for the recipe key)."""
        ...

    def describe(self) -> dict:
        """Facts about the input recorded in the manifest."""
        ...

    def rows(self) -> Iterator[SourceRow]:
        """Yield every row, in the same order on every call."""
        ...


def split_from_name(name: str) -> str | None:
    """Map a file or folder name such as ``train-00000-of-00002`` or ``val`` to a split, or None."""
    stem = name.split(".")[0].lower()
    for separator in ("-", "_"):
        stem = stem.split(separator)[0]
    return _SPLIT_ALIASES.get(stem)


def normalize_split(name: str, where: str) -> str:
    """Map a split name given by a source to train, validation or test, or raise ``DatasetError``."""
    split = _SPLIT_ALIASES.get(name.lower())
    if split is None:
        raise DatasetError(
            f"{where}: unknown split {name!r}; name splits train, validation (or val, dev) and test, "
            "or remove the extra split"
        )
    return split


def resolve_image_path(raw: str, image_folder: Path) -> Path:
    """Resolve an image path given by a row, relative to ``image_folder``.

    Raises ``BadRowError`` (``path_outside_image_folder``) when the path,
    after following ``..`` and symbolic links, leads outside the folder;
    absolute paths inside the folder are accepted.
    """
    if not raw.strip():
        raise BadRowError("missing_image", "the image path is empty")
    folder = image_folder.resolve()
    candidate = Path(raw)
    resolved = (candidate if candidate.is_absolute() else folder / candidate).resolve()
    if not resolved.is_relative_to(folder):
        raise BadRowError("path_outside_image_folder", f"{raw!r} resolves to {resolved}, outside {folder}")
    return resolved


def file_identity(path: Path) -> dict:
    """Path, size and modification time of a file: a cheap stand-in for its content."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def folder_identity(folder: Path) -> list[dict]:
    """``file_identity`` of every file under ``folder``, in path order."""
    files = sorted(Path(root) / name for root, _, names in os.walk(folder) for name in names)
    return [file_identity(path) for path in files]


def require_path(path: str | None, source: str) -> Path:
    if path is None:
        raise DatasetError(f"data.path is not set; data.source={source!r} needs the dataset file or folder")
    resolved = Path(path).expanduser()
    if not resolved.exists():
        raise DatasetError(f"data.path {resolved} not found; point data.path at the dataset file or folder")
    return resolved
