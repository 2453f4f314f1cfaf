import csv
import json
from dataclasses import replace

import pytest

from mars_core.config import ProbeSettings, SearchSettings
from mars_core.search.fit import fit_from_rows, fit_from_table, format_candidate_table
from mars_core.search.probe_table import ProbeTableError, table_columns, write_probe_table
from mars_core.search.synthetic import EXAMPLE_LAWS, KnownLaws, example_probe_rows, synthetic_probe_rows
from mars_core.search.trainable_params import TrainableParamModel

MODULES = list(EXAMPLE_LAWS.modules)
DSTAR = 8000
FAST = SearchSettings(bootstrap=40)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_fit_from_table_writes_selection_and_plots(tmp_path, suffix):
    table = write_probe_table(example_probe_rows(), tmp_path / f"probes{suffix}", MODULES)
    out_dir = tmp_path / "out"

    selection = fit_from_table(table, DSTAR, MODULES, ProbeSettings(), FAST, out_dir)

    assert sorted(p.name for p in out_dir.iterdir()) == ["alignment_map.png", "law_p.png", "law_t.png", "selection.json"]
    assert json.loads((out_dir / "selection.json").read_text()) == selection.to_dict()
    for name in ("alignment_map.png", "law_p.png", "law_t.png"):
        assert (out_dir / name).read_bytes()[:8] == PNG_SIGNATURE
    assert selection.chosen == {"vision": 128, "llm": 16}


def test_parquet_and_csv_give_same_selection(tmp_path):
    rows = example_probe_rows(seed=3)
    from_parquet = fit_from_table(write_probe_table(rows, tmp_path / "p.parquet", MODULES), DSTAR, MODULES,
                                  search_settings=FAST)
    from_csv = fit_from_table(write_probe_table(rows, tmp_path / "p.csv", MODULES), DSTAR, MODULES,
                              search_settings=FAST)

    assert from_csv.to_dict() == from_parquet.to_dict()


def write_broken_csv(path, column, value, row=0, drop=None):
    records = [r.to_record(MODULES) for r in example_probe_rows()]
    records[row][column] = value
    columns = [c for c in table_columns(MODULES) if c != drop]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for record in records:
            writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    return path


@pytest.mark.parametrize(
    ("column", "value", "drop", "message"),
    [
        ("r_llm", 8, "r_llm", r"missing column\(s\) \['r_llm'\]"),
        ("r_vision", "x", None, r"row 1 .*column r_vision has 'x'"),
        ("r_vision", -4, None, r"row 1 .*negative rank -4"),
        ("t_conv", "nan", None, r"row 1 .*column t_conv"),
    ],
)
def test_bad_table_raises_and_writes_nothing(tmp_path, column, value, drop, message):
    table = write_broken_csv(tmp_path / "bad.csv", column, value, drop=drop)
    out_dir = tmp_path / "out"

    with pytest.raises(ProbeTableError, match=message):
        fit_from_table(table, DSTAR, MODULES, search_settings=FAST, out_dir=out_dir)

    assert not out_dir.exists()


def test_module_with_no_usable_rows_raises_before_fitting(tmp_path):
    rows = [replace(r, status="no_signal", t_conv=None) if r.module == "vision" else r for r in example_probe_rows()]
    out_dir = tmp_path / "out"

    with pytest.raises(ProbeTableError, match="module 'vision' has no usable module probe"):
        fit_from_rows(rows, DSTAR, MODULES, search_settings=FAST, out_dir=out_dir)
    assert not out_dir.exists()


def test_missing_usable_joint_probes_raises(tmp_path):
    rows = [replace(r, status="censored") if r.kind == "joint" else r for r in example_probe_rows()]

    with pytest.raises(ProbeTableError, match="no usable joint probe.*'censored': 8"):
        fit_from_rows(rows, DSTAR, MODULES, search_settings=FAST, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_failure_while_plotting_leaves_earlier_outputs(tmp_path, monkeypatch):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "selection.json").write_text("earlier")

    def broken_plots(selection, folder):
        raise RuntimeError("simulated plotting failure")

    monkeypatch.setattr("mars_core.search.plots.write_plots", broken_plots)
    with pytest.raises(RuntimeError, match="simulated"):
        fit_from_rows(example_probe_rows(), DSTAR, MODULES, search_settings=FAST, out_dir=out_dir)

    assert [p.name for p in out_dir.iterdir()] == ["selection.json"]
    assert (out_dir / "selection.json").read_text() == "earlier"


def test_invalid_target_size_is_rejected():
    with pytest.raises(ValueError, match="target_n_train"):
        fit_from_rows(example_probe_rows(), 0, MODULES, search_settings=FAST)


def test_candidate_table_lists_kept_candidates_best_first():
    selection = fit_from_rows(example_probe_rows(), DSTAR, MODULES, search_settings=FAST)

    text = format_candidate_table(selection, limit=3)
    lines = text.splitlines()

    assert lines[0].split() == ["r_vision", "r_llm", "t_vision", "t_llm", "spread", "loss", "±se", "params"]
    assert len(lines) == 1 + 3 + 1
    assert lines[1].split()[:3] == ["*", "128", "16"]
    losses = [float(line.split()[-3]) for line in lines[1:4]]
    assert losses == sorted(losses)
    assert "not shown" in lines[-1]


def test_candidate_table_shows_fallback_reason():
    settings = SearchSettings(bootstrap=0, max_trainable_params=10, default_ranks={"vision": 4, "llm": 4})
    selection = fit_from_rows(example_probe_rows(), DSTAR, MODULES, search_settings=settings)

    text = format_candidate_table(selection)

    assert selection.chosen == {"vision": 4, "llm": 4}
    assert "fallback to default ranks {'vision': 4, 'llm': 4}" in text


def test_three_modules_fit_end_to_end(tmp_path):
    modules = ["audio", "vision", "llm"]
    laws = KnownLaws(
        modules=tuple(modules),
        law_t={"audio": (0.0, 1.0, 1.0, 0.8), "vision": (0.0, 2.0, 1.0, 0.8), "llm": (0.0, 0.5, 1.0, 0.8)},
        law_p={"E": 0.2, "A_audio": 0.3, "alpha_audio": 0.5, "A_vision": 0.5, "alpha_vision": 0.5,
               "A_llm": 1.0, "alpha_llm": 0.6},
        param_model=TrainableParamModel(n0=1000, per_rank={"audio": 500, "vision": 1000, "llm": 3000}),
    )
    grid = [2, 4, 8, 16]
    rows = synthetic_probe_rows(laws, grid, (1000, 2000), noise=0.01, joint_probes=12)
    settings = SearchSettings(bootstrap=20, default_ranks={"audio": 4, "vision": 4, "llm": 4})

    selection = fit_from_rows(rows, 4000, modules, ProbeSettings(min_rank=2, max_rank=16), settings, tmp_path)

    assert len(selection.candidates) == 4**3
    assert selection.fallback_reason is None
    assert set(selection.chosen) == set(modules)
    spread = next(c for c in selection.candidates if c.chosen).log_spread
    assert spread < 1.0
    assert (tmp_path / "alignment_map.png").exists()
