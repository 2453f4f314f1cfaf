"""Build or convert a dataset into Parquet shards with a manifest and a content fingerprint."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mars_core.config import DataConfig
from mars_core.data.images import ImageDecodeError, decode_image, normalize_image_bytes, pixel_digest
from mars_core.data.schema import FORMAT_VERSION, SCHEMA, SPLITS, DatasetError, DatasetInfo, Row, combine_fingerprint
from mars_core.data.sources import BAD_ROW_REASONS, BadRowError, Source, SourceRow
from mars_core.data.storage import MANIFEST, SplitWriter, load_dataset_info, write_manifest

log = logging.getLogger(__name__)

# Bad rows listed in an error message and kept as examples in the manifest.
_BAD_ROWS_SHOWN = 5


def open_source(cfg: DataConfig) -> Source:
    """Return the reader for ``cfg.source``."""
    if cfg.source == "demo_digits":
        from mars_core.data.digits import DemoSource

        return DemoSource(cfg.seed, cfg.val_fraction, cfg.test_fraction, cfg.demo_questions_per_image)
    if cfg.source == "llava_json":
        from mars_core.data.llava import LlavaSource

        return LlavaSource(cfg)
    if cfg.source == "parquet":
        from mars_core.data.tables import ParquetSource

        return ParquetSource(cfg)
    if cfg.source == "hf_disk":
        from mars_core.data.tables import HfDiskSource

        return HfDiskSource(cfg)
    raise DatasetError(f"unknown data.source {cfg.source!r}; use demo_digits, llava_json, parquet or hf_disk")


def recipe_key(cfg: DataConfig, source: Source) -> str:
    """Hash of everything that determines a prepared dataset: format, configuration and input identity."""
    recipe = {
        "format_version": FORMAT_VERSION,
        "config": cfg.model_dump(mode="json"),
        "source": source.identity(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def prepare_dataset(cfg: DataConfig, out_root: Path, progress: bool = False) -> DatasetInfo:
    """Build or convert the configured dataset into ``<out_root>/<source>-<recipe key>/``.

    Idempotent: when a complete dataset with the same recipe key exists, it
    is returned without rebuilding. The recipe key covers the data
    configuration and the input files' paths, sizes and modification times,
    but not the images inside an image folder: delete the dataset folder
    after changing images in place.

    Rows are streamed into a temporary folder next to the target, which is
    renamed into place only when complete, so a failed or interrupted run
    leaves nothing behind. With ``on_bad_rows: error``, any bad row raises
    ``DatasetError`` listing the first few (location and reason) and the
    count per reason, and nothing is written. With ``skip``, bad rows are
    dropped, logged, and counted by reason in the manifest.

    Sources without their own validation or test split get them carved out
    of train by image, with the configured fractions and seed.
    ``max_train_examples`` then keeps a seeded random subset of train.
    """
    started = time.perf_counter()
    source = open_source(cfg)
    key = recipe_key(cfg, source)
    out_root = Path(out_root)
    target = out_root / f"{cfg.source}-{key}"

    existing = _complete_dataset(target, key)
    if existing is not None:
        log.info("dataset %s already prepared (%d train rows, fingerprint %s)", target, existing.n_train, existing.fingerprint[:16])
        return existing
    if target.exists():
        raise DatasetError(
            f"{target} exists but is not a complete dataset with recipe key {key}; delete it and prepare again"
        )

    log.info("preparing %s dataset into %s", cfg.source, target)
    out_root.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=out_root))
    try:
        manifest = _build(source, cfg, key, temporary, progress)
        write_manifest(temporary, manifest)
        info = _publish(temporary, target, key)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)

    counts = {split: manifest["splits"][split]["rows"] for split in SPLITS}
    log.info(
        "prepared %s in %.1f s: %s rows, %d bad rows, fingerprint %s",
        target, time.perf_counter() - started, counts, manifest["bad_rows"]["count"], info.fingerprint[:16],
    )
    return info


def _complete_dataset(target: Path, key: str) -> DatasetInfo | None:
    if not (target / MANIFEST).is_file():
        return None
    try:
        info = load_dataset_info(target)
    except DatasetError:
        return None
    if info.manifest.get("recipe_key") != key:
        return None
    for split in SPLITS:
        if not all((target / split / shard).is_file() for shard in info.manifest["splits"][split]["shards"]):
            return None
    return info


def _publish(temporary: Path, target: Path, key: str) -> DatasetInfo:
    try:
        os.rename(temporary, target)
    except OSError as exc:
        # Another process may have published the same recipe first; its result is as good as ours.
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
            existing = _complete_dataset(target, key)
            if existing is not None:
                return existing
        raise
    return load_dataset_info(target)


class _BadRows:
    """Count of bad rows by reason, with the first few kept for messages."""

    def __init__(self) -> None:
        self.by_reason: Counter[str] = Counter()
        self.first: list[dict] = []

    def add(self, location: str, problem: BadRowError) -> None:
        self.by_reason[problem.reason] += 1
        if len(self.first) < _BAD_ROWS_SHOWN:
            self.first.append({"row": location, "reason": problem.reason, "detail": problem.detail})

    @property
    def count(self) -> int:
        return sum(self.by_reason.values())

    def summary(self) -> str:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.by_reason.items()))
        shown = "; ".join(f"{item['row']}: {BAD_ROW_REASONS[item['reason']]} ({item['detail']})" for item in self.first)
        rows = "bad row" if self.count == 1 else "bad rows"
        return f"{self.count} {rows} ({reasons}); first {len(self.first)}: {shown}"

    def manifest_entry(self) -> dict:
        return {"count": self.count, "by_reason": dict(sorted(self.by_reason.items())), "first": self.first}


def _build(source: Source, cfg: DataConfig, key: str, folder: Path, progress: bool) -> dict:
    assignment, split_origin = _assign_carved_splits(source, cfg)
    writers = {split: SplitWriter(folder / split) for split in SPLITS}
    bad_rows = _BadRows()

    for row in _with_progress(source.rows(), progress, "converting rows"):
        split = _split_of(row, assignment)
        try:
            converted = convert_row(row)
        except BadRowError as problem:
            bad_rows.add(row.location, problem)
            continue
        # With on_bad_rows=error, keep scanning to count every bad row, but stop writing.
        if not (bad_rows.count and cfg.on_bad_rows == "error"):
            writers[split].write(converted)

    if bad_rows.count and cfg.on_bad_rows == "error":
        for writer in writers.values():
            writer.abort()
        raise DatasetError(
            f"{cfg.path or cfg.source}: {bad_rows.summary()}. Fix these rows, or set data.on_bad_rows=skip "
            "to drop them; nothing was written"
        )
    if bad_rows.count:
        log.warning("skipped %s", bad_rows.summary())

    entries = {split: writer.close() for split, writer in writers.items()}
    if cfg.max_train_examples is not None and entries["train"]["rows"] > cfg.max_train_examples:
        entries["train"] = _cap_train(folder, entries["train"]["rows"], cfg.max_train_examples, cfg.seed)

    empty = [split for split in SPLITS if entries[split]["rows"] == 0]
    if empty:
        raise DatasetError(
            f"{cfg.path or cfg.source}: split(s) {empty} have no usable rows after conversion "
            f"({bad_rows.count} bad rows dropped); the dataset needs rows in train, validation and test"
        )
    return _manifest(source, cfg, key, entries, split_origin, bad_rows)


def convert_row(row: SourceRow) -> Row:
    """Check one source row and turn it into a stored row, or raise ``BadRowError``."""
    if row.problem is not None:
        raise row.problem
    answer = row.answer.strip()
    if not answer:
        raise BadRowError("empty_answer", "the answer text is empty")
    if row.image is None:
        raise BadRowError("missing_image", "no image is given")

    if isinstance(row.image, Path):
        try:
            data = row.image.read_bytes()
        except FileNotFoundError as exc:
            raise BadRowError("image_not_found", f"{row.image} does not exist") from exc
        except OSError as exc:
            raise BadRowError("image_not_found", f"{row.image} cannot be read: {exc}") from exc
    else:
        data = row.image

    try:
        png, digest = normalize_image_bytes(data)
    except ImageDecodeError as exc:
        where = f"{row.image}: " if isinstance(row.image, Path) else ""
        raise BadRowError("undecodable_image", f"{where}{exc}") from exc
    return Row(row.id, png, digest, row.question.strip(), answer, row.question_type, list(row.history))


def _split_of(row: SourceRow, assignment: dict[str, str] | None) -> str:
    if assignment is None:
        return row.split
    if row.split is not None and row.split != "train":
        return row.split
    return assignment.get(row.group or row.location, "train")


def _assign_carved_splits(source: Source, cfg: DataConfig) -> tuple[dict[str, str] | None, dict[str, str]]:
    """Assign the images of the train pool to the splits the source lacks.

    Returns ``(group -> split or None when the source has every split, how
    each split was made)``. Groups are shuffled with ``cfg.seed`` in order of
    first appearance, so the assignment is deterministic.
    """
    provided = set(source.provided_splits)
    missing = [split for split in ("validation", "test") if split not in provided]
    origin = {split: "source" for split in provided}
    if provided and "train" not in provided:
        raise DatasetError(
            f"{cfg.path}: the dataset defines splits {sorted(provided)} but no train split; add one"
        )
    if not missing:
        return None, origin

    pool: dict[str, None] = {}
    for row in source.rows():
        # Rows the source has already found bad get no share of the carved splits.
        if row.split in (None, "train") and row.problem is None:
            pool.setdefault(row.group or row.location, None)
    groups = list(pool)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(groups))

    fractions = {"validation": cfg.val_fraction, "test": cfg.test_fraction}
    sizes = {split: round(fractions[split] * len(groups)) for split in missing}
    for split in missing:
        sizes[split] = max(sizes[split], 1)
    if sum(sizes.values()) >= len(groups):
        raise DatasetError(
            f"{cfg.path}: {len(groups)} distinct images in train are too few to carve out {missing} "
            f"({sizes}) and keep a train split; add images or provide the splits in the source"
        )

    assignment: dict[str, str] = {}
    start = 0
    for split in missing:
        for position in order[start : start + sizes[split]]:
            assignment[groups[position]] = split
        start += sizes[split]
        origin[split] = f"carved from train by image: fraction {fractions[split]}, seed {cfg.seed}"
    origin["train"] = "source" if "train" in provided else "remaining images"
    return assignment, origin


def _cap_train(folder: Path, rows: int, cap: int, seed: int) -> dict:
    """Rewrite the train split with a seeded random subset of ``cap`` rows, in their original order."""
    keep = set(np.random.default_rng([seed, 1]).choice(rows, size=cap, replace=False).tolist())
    source_folder = folder / "train"
    staging = folder / "train.capped"
    writer = SplitWriter(staging)
    position = 0
    for shard in sorted(source_folder.glob("part-*.parquet")):
        for batch in pq.ParquetFile(shard).iter_batches(batch_size=256):
            for record in batch.to_pylist():
                if position in keep:
                    writer.write(_stored_row(record))
                position += 1
    entry = writer.close()
    shutil.rmtree(source_folder)
    staging.rename(source_folder)
    log.info("kept %d of %d train rows (max_train_examples)", cap, rows)
    return entry


def _stored_row(record: dict) -> Row:
    image = decode_image(record["image"])
    history = [tuple(turn) for turn in json.loads(record["history"])]
    return Row(
        record["id"], record["image"], pixel_digest(image), record["question"],
        record["answer"], record["question_type"], history,
    )


def _manifest(
    source: Source, cfg: DataConfig, key: str, entries: dict[str, dict], split_origin: dict[str, str], bad_rows: _BadRows
) -> dict:
    fingerprint = combine_fingerprint({split: entries[split]["content_hash"] for split in SPLITS})
    question_types = sorted({name for entry in entries.values() for name in entry["question_types"]})
    return {
        "format_version": FORMAT_VERSION,
        "source": cfg.source,
        "recipe_key": key,
        "config": cfg.model_dump(mode="json"),
        "source_details": source.describe(),
        "fingerprint": fingerprint,
        "splits": {split: {**entries[split], "origin": split_origin.get(split, "source")} for split in SPLITS},
        "question_types": question_types,
        "schema": {field.name: str(field.type) for field in SCHEMA},
        "bad_rows": bad_rows.manifest_entry(),
        "created_by": {
            "package": "mars-lora",
            "version": _version("mars-lora"),
            "pyarrow": pa.__version__,
            "pillow": _version("pillow"),
        },
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "unknown"


def _with_progress(rows: Iterable[SourceRow], progress: bool, description: str) -> Iterator[SourceRow]:
    if not progress:
        return iter(rows)
    from tqdm.auto import tqdm

    return iter(tqdm(rows, desc=description, unit="row"))
