import csv
import math
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mars_core.search.probe_table import (
    ProbeRow,
    ProbeTableError,
    probe_id,
    read_probe_table,
    table_columns,
    validate_rows,
    write_probe_table,
)
from mars_core.search.synthetic import (
    EXAMPLE_LAWS,
    example_probe_rows,
)

make_rows = example_probe_rows
MODULES = list(EXAMPLE_LAWS.modules)


def test_default_columns_match_schema():
    assert table_columns(MODULES) == [
        "probe_id", "kind", "module", "r_vision", "r_llm", "n_train", "samples_seen", "t_conv",
        "final_val_loss", "status", "wall_seconds", "trainable_params",
    ]


def test_probe_id_is_stable_and_input_sensitive():
    first = probe_id("joint", {"vision": 8, "llm": 16}, 4000, 2048, "abc")
    reordered = probe_id("joint", {"llm": 16, "vision": 8}, 4000, 2048, "abc")
    assert first == reordered
    assert first.startswith("joint-")
    assert probe_id("joint", {"vision": 8, "llm": 32}, 4000, 2048, "abc") != first
    assert probe_id("joint", {"vision": 8, "llm": 16}, 4001, 2048, "abc") != first
    assert probe_id("joint", {"vision": 8, "llm": 16}, 4000, 2049, "abc") != first
    assert probe_id("joint", {"vision": 8, "llm": 16}, 4000, 2048, "abd") != first


def test_parquet_round_trip_keeps_rows_and_curves(tmp_path):
    rows = make_rows(with_curves=True)
    path = write_probe_table(rows, tmp_path / "probes.parquet", MODULES)

    loaded = read_probe_table(path, MODULES)

    assert loaded == rows
    assert all(row.curve for row in loaded)


def test_csv_round_trip_drops_only_curves(tmp_path):
    rows = make_rows(with_curves=True)
    path = write_probe_table(rows, tmp_path / "probes.csv", MODULES)

    loaded = read_probe_table(path, MODULES)

    assert loaded == [replace(row, curve=[]) for row in rows]


def test_null_t_conv_round_trips(tmp_path):
    rows = make_rows()
    rows[0] = replace(rows[0], t_conv=None, status="no_signal")
    for suffix in (".csv", ".parquet"):
        path = write_probe_table(rows, tmp_path / f"probes{suffix}", MODULES)
        assert read_probe_table(path, MODULES)[0].t_conv is None


def test_three_module_table_has_rank_column_per_module(tmp_path):
    modules = ["audio", "vision", "llm"]
    row = ProbeRow("p1", "joint", "", {"audio": 4, "vision": 8, "llm": 16}, 100, 512, 300.0, 1.2, "ok", 3.0, 999)
    path = write_probe_table([row], tmp_path / "probes.csv", modules)

    with open(path) as handle:
        header = next(csv.reader(handle))

    assert header[3:6] == ["r_audio", "r_vision", "r_llm"]
    assert read_probe_table(path, modules) == [row]


def write_csv(path, rows, modules=MODULES, drop=None, change=None):
    records = [row.to_record(modules) for row in rows]
    columns = [c for c in table_columns(modules) if c != drop]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for index, record in enumerate(records):
            if change and index == change[0]:
                record[change[1]] = change[2]
            writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    return path


def test_missing_column_names_the_column(tmp_path):
    path = write_csv(tmp_path / "p.csv", make_rows(), drop="r_llm")
    with pytest.raises(ProbeTableError, match=r"missing column\(s\) \['r_llm'\]"):
        read_probe_table(path, MODULES)


def test_non_numeric_rank_names_row_and_column(tmp_path):
    path = write_csv(tmp_path / "p.csv", make_rows(), change=(2, "r_vision", "eight"))
    with pytest.raises(ProbeTableError, match=r"row 3 .*column r_vision has 'eight'"):
        read_probe_table(path, MODULES)


def test_negative_rank_names_row_and_column(tmp_path):
    path = write_csv(tmp_path / "p.csv", make_rows(), change=(4, "r_llm", -2))
    with pytest.raises(ProbeTableError, match=r"row 5 .*r_llm has negative rank -2"):
        read_probe_table(path, MODULES)


def test_nan_t_conv_on_ok_row_is_rejected(tmp_path):
    path = write_csv(tmp_path / "p.csv", make_rows(), change=(1, "t_conv", "nan"))
    with pytest.raises(ProbeTableError, match=r"row 2 .*column t_conv .*status is 'ok'"):
        read_probe_table(path, MODULES)


def test_null_final_loss_only_for_failed_rows(tmp_path):
    rows = make_rows()
    rows[0] = replace(rows[0], final_val_loss=None, status="failed", t_conv=None)
    path = write_csv(tmp_path / "ok.csv", rows)
    assert read_probe_table(path, MODULES)[0].status == "failed"

    path = write_csv(tmp_path / "bad.csv", make_rows(), change=(0, "final_val_loss", ""))
    with pytest.raises(ProbeTableError, match=r"row 1 .*final_val_loss"):
        read_probe_table(path, MODULES)


def test_unknown_status_is_rejected(tmp_path):
    path = write_csv(tmp_path / "p.csv", make_rows(), change=(0, "status", "done"))
    with pytest.raises(ProbeTableError, match=r"row 1 .*column status has 'done'"):
        read_probe_table(path, MODULES)


def test_duplicate_probe_id_is_rejected():
    rows = make_rows()
    rows[3] = replace(rows[3], probe_id=rows[0].probe_id)
    with pytest.raises(ProbeTableError, match=r"row 4 .*duplicate probe_id, first seen in row 1"):
        validate_rows(rows, MODULES)


def test_joint_probe_with_zero_rank_is_rejected():
    rows = make_rows()
    joint = next(i for i, r in enumerate(rows) if r.kind == "joint")
    rows[joint] = replace(rows[joint], ranks={"vision": 0, "llm": 8})
    with pytest.raises(ProbeTableError, match=r"joint probe has rank 0 for \['vision'\]"):
        validate_rows(rows, MODULES)


def test_module_probe_must_train_a_known_module():
    rows = make_rows()
    rows[0] = replace(rows[0], module="audio")
    with pytest.raises(ProbeTableError, match=r"row 1 .*column module has 'audio'"):
        validate_rows(rows, MODULES)


def test_parquet_float_rank_column_is_mistyped(tmp_path):
    rows = make_rows()
    table = pa.Table.from_pylist([r.to_record(MODULES) for r in rows])
    table = table.set_column(table.column_names.index("r_llm"), "r_llm",
                             pa.array([float(r.ranks["llm"]) for r in rows]))
    path = tmp_path / "p.parquet"
    pq.write_table(table, path)

    with pytest.raises(ProbeTableError, match=r"column r_llm has type double; expected integer"):
        read_probe_table(path, MODULES)


def test_missing_file_is_reported(tmp_path):
    with pytest.raises(ProbeTableError, match="not found"):
        read_probe_table(tmp_path / "nope.parquet", MODULES)


def test_write_rejects_invalid_rows_and_leaves_no_file(tmp_path):
    rows = make_rows()
    rows[0] = replace(rows[0], n_train=0)
    target = tmp_path / "probes.parquet"
    with pytest.raises(ProbeTableError, match="n_train"):
        write_probe_table(rows, target, MODULES)
    assert list(tmp_path.iterdir()) == []


def test_integral_float_text_is_accepted_as_integer(tmp_path):
    path = write_csv(tmp_path / "p.csv", make_rows(), change=(0, "n_train", "2000.0"))
    assert read_probe_table(path, MODULES)[0].n_train == 2000


def test_usable_flag_follows_status():
    row = make_rows()[0]
    assert replace(row, status="ok").usable
    assert replace(row, status="empirical").usable
    for status in ("censored", "no_signal", "failed"):
        assert not replace(row, status=status).usable
    assert math.isfinite(row.t_conv)
