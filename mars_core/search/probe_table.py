"""The probe table: one row per probe, stored as Parquet or CSV.

Columns, in order (``r_<module>`` once per configured module, so the default
modules give ``r_vision`` and ``r_llm``):

==================  ======  ===================================================
probe_id            string  stable id derived from the probe's inputs
kind                string  ``module`` or ``joint``
module              string  trained module of a ``module`` probe, empty for ``joint``
r_<module>          int     rank of that module; 0 means no adapter
n_train             int     examples in the probe's training subset (D)
samples_seen        int     samples the probe trained on
t_conv              float   convergence time in samples; null when not measurable
final_val_loss      float   validation loss at the end
status              string  ``ok``, ``censored``, ``no_signal``, ``empirical`` or ``failed``
wall_seconds        float   wall time of the probe; null when unknown
trainable_params    int     exact trainable parameter count
curve_samples       list    optional, Parquet only: samples seen at each evaluation
curve_loss          list    optional, Parquet only: validation loss at each evaluation
==================  ======  ===================================================

Only rows with status ``ok`` or ``empirical`` enter the law fits. Other
columns in a file are ignored.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

PROBE_KINDS = ("module", "joint")
PROBE_STATUSES = ("ok", "censored", "no_signal", "empirical", "failed")
#: Statuses whose rows enter the law fits; the others are kept but left out.
USABLE_STATUSES = ("ok", "empirical")
#: Statuses that require a finite, positive t_conv.
_TIMED_STATUSES = ("ok", "empirical", "censored")

_STRING_COLUMNS = ("probe_id", "kind", "module", "status")
_INT_COLUMNS = ("n_train", "samples_seen", "trainable_params")
_FLOAT_COLUMNS = ("t_conv", "final_val_loss", "wall_seconds")
_CURVE_COLUMNS = ("curve_samples", "curve_loss")


class ProbeTableError(ValueError):
    """A probe table (file or rows) that cannot be used; the message names the row or column."""


@dataclass
class ProbeRow:
    """One probe: its inputs, its measurements and its validation-loss curve.

    ``ranks`` maps every configured module to its rank (0 means no adapter).
    ``curve`` contains ``(samples seen, validation loss)`` pairs. Parquet
    stores it and CSV drops it.
    """

    probe_id: str
    kind: str
    module: str
    ranks: dict[str, int]
    n_train: int
    samples_seen: int
    t_conv: float | None
    final_val_loss: float | None
    status: str
    wall_seconds: float | None = None
    trainable_params: int | None = None
    curve: list[tuple[int, float]] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        """Whether the row enters law fits (status ``ok`` or ``empirical``)."""
        return self.status in USABLE_STATUSES

    def to_record(self, modules: Sequence[str]) -> dict[str, Any]:
        """Flatten to table columns, with one ``r_<module>`` column per module."""
        record: dict[str, Any] = {"probe_id": self.probe_id, "kind": self.kind, "module": self.module}
        for module in modules:
            record[f"r_{module}"] = self.ranks.get(module)
        record.update(
            n_train=self.n_train,
            samples_seen=self.samples_seen,
            t_conv=self.t_conv,
            final_val_loss=self.final_val_loss,
            status=self.status,
            wall_seconds=self.wall_seconds,
            trainable_params=self.trainable_params,
            curve_samples=[int(s) for s, _ in self.curve],
            curve_loss=[float(v) for _, v in self.curve],
        )
        return record


def table_columns(modules: Sequence[str]) -> list[str]:
    """Return the required columns of a probe table for these modules, in order."""
    return ["probe_id", "kind", "module", *(f"r_{m}" for m in modules), "n_train", "samples_seen",
            "t_conv", "final_val_loss", "status", "wall_seconds", "trainable_params"]


def probe_id(kind: str, ranks: Mapping[str, int], n_train: int, budget: int, settings_digest: str) -> str:
    """Derive a stable id from a probe's inputs.

    The same kind, ranks, data size, budget (samples) and settings digest give
    the same id in every process, so the id can key a cache.
    """
    payload = {
        "kind": kind,
        "ranks": {str(k): int(v) for k, v in sorted(ranks.items())},
        "n_train": int(n_train),
        "budget": int(budget),
        "settings": str(settings_digest),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{kind}-{digest}"


def validate_rows(rows: Sequence[ProbeRow], modules: Sequence[str], source: str = "probe rows") -> None:
    """Raise ProbeTableError for the first row that breaks the schema.

    Checks every row: known kind and status, a rank >= 0 for each module, a
    trained module with rank >= 1 for module probes, ranks >= 1 for joint
    probes, positive data size, a finite positive t_conv for ``ok``,
    ``empirical`` and ``censored`` rows, a finite final loss and a trainable
    parameter count for every row that did not fail, and unique probe ids.
    """
    seen: dict[str, int] = {}
    for index, row in enumerate(rows, start=1):
        where = f"{source}: row {index} (probe_id {row.probe_id!r})"
        _validate_row(row, modules, where)
        if row.probe_id in seen:
            raise ProbeTableError(f"{where}: duplicate probe_id, first seen in row {seen[row.probe_id]}; ids must be unique")
        seen[row.probe_id] = index


def require_usable_module_rows(rows: Sequence[ProbeRow], modules: Sequence[str], source: str = "probe rows") -> None:
    """Raise ProbeTableError when a module has no usable module probe."""
    for module in modules:
        module_rows = [r for r in rows if r.kind == "module" and r.module == module]
        if not any(r.usable for r in module_rows):
            counts = _status_counts(module_rows)
            advice = [_STATUS_ADVICE[status] for status in _STATUS_ADVICE if status in counts]
            raise ProbeTableError(
                f"{source}: module {module!r} has no usable module probe (status ok or empirical); "
                f"its rows by status: {counts or 'none'}. " + (" ".join(advice) or "Run its module probes.")
            )


def read_probe_table(path: str | Path, modules: Sequence[str]) -> list[ProbeRow]:
    """Read and validate a probe table from Parquet (``.parquet``) or CSV (any other suffix)."""
    path = Path(path)
    if not path.is_file():
        raise ProbeTableError(f"probe table not found: {path}")
    if path.suffix.lower() in (".parquet", ".pq"):
        records = _read_parquet_records(path, modules)
    else:
        records = _read_csv_records(path, modules)
    rows = [_row_from_record(record, modules, f"{path}: row {i}") for i, record in enumerate(records, start=1)]
    validate_rows(rows, modules, source=str(path))
    return rows


def write_probe_table(rows: Iterable[ProbeRow], path: str | Path, modules: Sequence[str]) -> Path:
    """Validate and write rows as Parquet (``.parquet``) or CSV, replacing the file atomically.

    Parquet keeps the loss curves as list columns; CSV drops them.
    """
    rows = list(rows)
    path = Path(path)
    validate_rows(rows, modules, source=str(path))
    records = [row.to_record(modules) for row in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            pq.write_table(pa.Table.from_pylist(records, schema=_arrow_schema(modules)), tmp_name)
        else:
            with open(tmp_name, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=table_columns(modules), extrasaction="ignore")
                writer.writeheader()
                for record in records:
                    writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def _validate_row(row: ProbeRow, modules: Sequence[str], where: str) -> None:
    if not isinstance(row.probe_id, str) or not row.probe_id:
        raise ProbeTableError(f"{where}: column probe_id is empty; give each probe a unique id")
    if row.kind not in PROBE_KINDS:
        raise ProbeTableError(f"{where}: column kind has {row.kind!r}; expected one of {list(PROBE_KINDS)}")
    if row.status not in PROBE_STATUSES:
        raise ProbeTableError(f"{where}: column status has {row.status!r}; expected one of {list(PROBE_STATUSES)}")

    for module in modules:
        if module not in row.ranks:
            raise ProbeTableError(f"{where}: column r_{module} is missing")
        rank = row.ranks[module]
        if not _is_int(rank):
            raise ProbeTableError(f"{where}: column r_{module} has {rank!r}; expected an integer rank")
        if rank < 0:
            raise ProbeTableError(f"{where}: column r_{module} has negative rank {rank}; ranks are >= 0 (0 means no adapter)")

    if row.kind == "module":
        if row.module not in modules:
            raise ProbeTableError(f"{where}: column module has {row.module!r}; a module probe names one of {list(modules)}")
        if row.ranks[row.module] < 1:
            raise ProbeTableError(f"{where}: column r_{row.module} is {row.ranks[row.module]} but the probe trains {row.module!r}; its rank must be >= 1")
    else:
        if row.module:
            raise ProbeTableError(f"{where}: column module has {row.module!r}; it must be empty for a joint probe")
        zero = [m for m in modules if row.ranks[m] < 1]
        if zero:
            raise ProbeTableError(f"{where}: joint probe has rank 0 for {zero}; joint probes train every module (rank >= 1)")

    for name in ("n_train", "samples_seen"):
        value = getattr(row, name)
        if not _is_int(value):
            raise ProbeTableError(f"{where}: column {name} has {value!r}; expected an integer")
    if row.n_train < 1:
        raise ProbeTableError(f"{where}: column n_train has {row.n_train}; it must be >= 1")
    if row.samples_seen < 0:
        raise ProbeTableError(f"{where}: column samples_seen has {row.samples_seen}; it must be >= 0")

    if row.status in _TIMED_STATUSES and not (_is_finite(row.t_conv) and row.t_conv > 0):
        raise ProbeTableError(f"{where}: column t_conv has {row.t_conv!r} but status is {row.status!r}, which needs a finite t_conv > 0")
    if row.t_conv is not None and not _is_number(row.t_conv):
        raise ProbeTableError(f"{where}: column t_conv has {row.t_conv!r}; expected a number or null")
    if row.status != "failed":
        if not _is_finite(row.final_val_loss):
            raise ProbeTableError(f"{where}: column final_val_loss has {row.final_val_loss!r}; only failed probes may leave it null")
        if not _is_int(row.trainable_params) or row.trainable_params < 0:
            raise ProbeTableError(f"{where}: column trainable_params has {row.trainable_params!r}; expected an integer >= 0 (null only for failed probes)")
    if row.wall_seconds is not None and not (_is_finite(row.wall_seconds) and row.wall_seconds >= 0):
        raise ProbeTableError(f"{where}: column wall_seconds has {row.wall_seconds!r}; expected a number >= 0 or null")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


# Advice per probe status, for a module whose probes are all unusable.
_STATUS_ADVICE = {
    "censored": "Censored probes were still improving when they stopped: give module probes more samples "
                "(probes.module_budget_samples) or a higher learning rate.",
    "no_signal": "Probes without signal did not improve beyond their noise: raise the learning rate, "
                 "or evaluate on more examples (train.val_subset).",
    "failed": "Failed probes raised an error: their reason is in the probe table and the run log.",
}


def _status_counts(rows: Iterable[ProbeRow]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.status] = counts.get(row.status, 0) + 1
    return counts


def _arrow_schema(modules: Sequence[str]) -> pa.Schema:
    fields = []
    for name in table_columns(modules):
        if name in _STRING_COLUMNS:
            fields.append(pa.field(name, pa.string()))
        elif name in _FLOAT_COLUMNS:
            fields.append(pa.field(name, pa.float64()))
        else:
            fields.append(pa.field(name, pa.int64()))
    fields.append(pa.field("curve_samples", pa.list_(pa.int64())))
    fields.append(pa.field("curve_loss", pa.list_(pa.float64())))
    return pa.schema(fields)


def _read_parquet_records(path: Path, modules: Sequence[str]) -> list[dict[str, Any]]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise ProbeTableError(f"{path}: not a readable Parquet file ({error})") from error
    _check_columns(path, table.column_names, modules)

    for name in table_columns(modules):
        kind = table.schema.field(name).type
        if name in _STRING_COLUMNS:
            ok = pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
            expected = "string"
        elif name in _FLOAT_COLUMNS:
            ok = pa.types.is_floating(kind) or pa.types.is_integer(kind) or pa.types.is_null(kind)
            expected = "float"
        else:
            ok = pa.types.is_integer(kind) or (pa.types.is_null(kind) and name == "trainable_params")
            expected = "integer"
        if not ok:
            raise ProbeTableError(f"{path}: column {name} has type {kind}; expected {expected}")
    for name in _CURVE_COLUMNS:
        if name in table.column_names:
            kind = table.schema.field(name).type
            if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not (
                pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)
            ):
                raise ProbeTableError(f"{path}: column {name} has type {kind}; expected a list of numbers")

    records = table.to_pylist()
    for record in records:
        for name in _FLOAT_COLUMNS:
            if record.get(name) is not None:
                record[name] = float(record[name])
    return records


def _read_csv_records(path: Path, modules: Sequence[str]) -> list[dict[str, Any]]:
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            raw = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ProbeTableError(f"{path}: not a readable CSV file ({error})") from error
    _check_columns(path, header, modules)

    records = []
    for index, cells in enumerate(raw, start=1):
        record: dict[str, Any] = {}
        for name in table_columns(modules):
            record[name] = _parse_cell(cells.get(name), name, f"{path}: row {index} (line {index + 1})")
        records.append(record)
    return records


def _check_columns(path: Path, present: Sequence[str], modules: Sequence[str]) -> None:
    missing = [name for name in table_columns(modules) if name not in present]
    if missing:
        raise ProbeTableError(
            f"{path}: missing column(s) {missing}; a probe table for modules {list(modules)} "
            f"needs {table_columns(modules)}"
        )


def _parse_cell(text: str | None, name: str, where: str) -> Any:
    text = (text or "").strip()
    if name in _STRING_COLUMNS:
        return text
    if text == "" or text.lower() in ("nan", "null", "none"):
        return None
    if name in _FLOAT_COLUMNS:
        try:
            return float(text)
        except ValueError:
            raise ProbeTableError(f"{where}: column {name} has {text!r}; expected a number") from None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value.is_integer():
        return int(value)
    raise ProbeTableError(f"{where}: column {name} has {text!r}; expected an integer")


def _row_from_record(record: Mapping[str, Any], modules: Sequence[str], where: str) -> ProbeRow:
    """Build a row from a record whose column types were already checked."""
    ranks = {}
    for module in modules:
        rank = record.get(f"r_{module}")
        if rank is None:
            raise ProbeTableError(f"{where} (probe_id {record.get('probe_id')!r}): column r_{module} is null; give a rank (0 for no adapter)")
        ranks[module] = rank
    for name in ("n_train", "samples_seen"):
        if record.get(name) is None:
            raise ProbeTableError(f"{where} (probe_id {record.get('probe_id')!r}): column {name} is null; expected an integer")

    curve_samples = record.get("curve_samples") or []
    curve_loss = record.get("curve_loss") or []
    if len(curve_samples) != len(curve_loss):
        raise ProbeTableError(
            f"{where} (probe_id {record.get('probe_id')!r}): columns curve_samples and curve_loss have "
            f"{len(curve_samples)} and {len(curve_loss)} values; they must have the same length"
        )
    curve = [(int(s), float(v)) for s, v in zip(curve_samples, curve_loss, strict=True)]

    t_conv = record.get("t_conv")
    return ProbeRow(
        probe_id=record.get("probe_id") or "",
        kind=record.get("kind") or "",
        module=record.get("module") or "",
        ranks=ranks,
        n_train=record["n_train"],
        samples_seen=record["samples_seen"],
        t_conv=None if t_conv is None or (isinstance(t_conv, float) and math.isnan(t_conv)) else t_conv,
        final_val_loss=_none_if_nan(record.get("final_val_loss")),
        status=record.get("status") or "",
        wall_seconds=_none_if_nan(record.get("wall_seconds")),
        trainable_params=record.get("trainable_params"),
        curve=curve,
    )


def _none_if_nan(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value
