import itertools
import math
import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mars_core.search.alignment import prune, snap_to_grid
from mars_core.search.law_t import fit_convergence_laws
from mars_core.search.synthetic import (
    EXAMPLE_GRID,
    EXAMPLE_LAWS,
    EXAMPLE_SIZES,
    example_probe_rows,
    law_t_from_params,
)

GRID = list(EXAMPLE_GRID)
LAWS = EXAMPLE_LAWS
make_rows = example_probe_rows
MODULES = list(EXAMPLE_LAWS.modules)
D1, D2, DSTAR = EXAMPLE_SIZES

DEFAULT = {"vision": 8, "llm": 8}


def brute_force_aligned(law_t, grid, n_train, tolerance, modules):
    aligned = set()
    for combo in itertools.product(grid, repeat=len(modules)):
        logs = [math.log(float(law_t.predict(m, r, n_train))) for m, r in zip(modules, combo)]
        if max(logs) - min(logs) <= math.log1p(tolerance):
            aligned.add(combo)
    return aligned


def keys(candidates, modules=MODULES):
    return {tuple(c.ranks[m] for m in modules) for c in candidates}


def test_prune_keeps_aligned_pairs_of_true_law():
    law_t = law_t_from_params(dict(LAWS.law_t))

    result = prune(law_t, GRID, DSTAR, 0.25, DEFAULT)

    expected = brute_force_aligned(law_t, GRID, DSTAR, 0.25, MODULES)
    assert keys(c for c in result.candidates if c.aligned) == expected
    assert expected == {(32, 4), (64, 8), (128, 16)}
    assert keys(result.kept()) == expected | {(16, 2)}
    assert next(c for c in result.candidates if c.ranks == {"vision": 16, "llm": 2}).source == "analytic"
    assert result.fallback_reason is None
    assert len(result.candidates) == len(GRID) ** 2


def test_analytic_solution_matches_law_and_is_snapped():
    law_t = law_t_from_params({"vision": (0.0, 4.0, 1.0, 1.0), "llm": (0.0, 1.0, 1.0, 1.0)})

    result = prune(law_t, GRID, DSTAR, 0.0, DEFAULT)

    # t_vision(r_v) = t_llm(r_l) exactly at r_v = 4 * r_l; the ends clip or fall outside the grid.
    solved = {s.reference_rank: s for s in result.solutions}
    assert solved[8].exact_rank == pytest.approx(32.0)
    assert solved[8].snapped_rank == 32
    assert solved[32].exact_rank == pytest.approx(128.0)
    assert solved[64].snapped_rank is None
    assert "outside the grid" in solved[64].reason
    assert keys(result.kept()) == {(4 * r, r) for r in (2, 4, 8, 16, 32)}


def test_prune_keeps_snapped_solution_without_aligned_pair():
    # Exact partner of every LLM rank r is 2.8 * r, between grid ranks.
    law_t = law_t_from_params({"vision": (0.0, 2.8, 1.0, 1.0), "llm": (0.0, 1.0, 1.0, 1.0)})

    result = prune(law_t, GRID, DSTAR, 0.1, DEFAULT)

    assert not any(c.aligned for c in result.candidates)
    kept = {tuple(c.ranks[m] for m in MODULES): c.source for c in result.kept()}
    assert kept[(2 ** round(math.log2(2.8 * 4)), 4)] == "analytic"
    assert all(source == "analytic" for source in kept.values())


def test_complex_root_leaves_llm_rank_without_partner():
    # t0_vision = 500 while the LLM converges in under 500 samples at high ranks.
    law_t = law_t_from_params({"vision": (500.0, 2.0, 1.0, 1.0), "llm": (0.0, 1.0, 1.0, 1.0)})

    result = prune(law_t, GRID, DSTAR, 0.25, DEFAULT)

    solved = {s.reference_rank: s for s in result.solutions}
    for r_llm in GRID:
        t_llm = 8000 / r_llm
        if t_llm <= 500:
            assert solved[r_llm].exact_rank is None
            assert solved[r_llm].snapped_rank is None
            assert solved[r_llm].reason.startswith("complex root")
            assert all(c.source == "aligned" for c in result.kept() if c.ranks["llm"] == r_llm)
        else:
            assert solved[r_llm].exact_rank == pytest.approx(2 * 8000 / (t_llm - 500))
    assert result.fallback_reason is None
    # Within tolerance t_vision >= 500 still matches t_llm = 500 (r_llm = 16), but nothing faster.
    assert {c.ranks["llm"] for c in result.kept()} == {2, 4, 8, 16}


def test_nothing_aligned_and_all_complex_sets_fallback_reason(caplog):
    law_t = law_t_from_params({"vision": (1e6, 1.0, 1.0, 1.0), "llm": (0.0, 1.0, 1.0, 1.0)})

    with caplog.at_level("WARNING"):
        result = prune(law_t, GRID, DSTAR, 0.25, DEFAULT)

    assert result.kept() == []
    assert "no grid candidate is aligned" in result.fallback_reason
    assert "falling back to default ranks" in caplog.text


def test_fallback_reason_gives_times_cause_and_fix():
    # The vision law is far slower than the llm law everywhere, so its aligned rank lies far above the grid.
    law_t = law_t_from_params({"vision": (0.0, 1e6, 0.0, 1.0), "llm": (0.0, 10.0, 0.0, 1.0)})

    result = prune(law_t, GRID, DSTAR, 0.25, DEFAULT)

    assert result.kept() == []
    assert re.search(r"over the grid of vision 781[23] to 5e\+05, llm 0\.0781[23] to 5\.", result.fallback_reason)
    assert "lies outside the grid" in result.fallback_reason
    assert "probes.max_rank" in result.fallback_reason
    assert "search.tolerance" in result.fallback_reason


def test_rank_independent_module_has_no_analytic_solution():
    law_t = law_t_from_params({"vision": (0.0, 1.0, 1.0, 0.0), "llm": (0.0, 1.0, 1.0, 1.0)})

    result = prune(law_t, GRID, DSTAR, 0.25, DEFAULT)

    assert all(s.snapped_rank is None and "does not depend on rank" in s.reason for s in result.solutions)
    assert keys(result.kept()) == brute_force_aligned(law_t, GRID, DSTAR, 0.25, MODULES)


def test_three_modules_use_spread_and_solve_against_last():
    modules = ["audio", "vision", "llm"]
    law_t = law_t_from_params({
        "audio": (0.0, 2.0, 1.0, 1.0), "vision": (0.0, 4.0, 1.0, 1.0), "llm": (0.0, 1.0, 1.0, 1.0),
    })

    result = prune(law_t, GRID, DSTAR, 0.1, {"audio": 4, "vision": 8, "llm": 8})

    assert result.reference_module == "llm"
    assert len(result.candidates) == len(GRID) ** 3
    aligned = keys((c for c in result.candidates if c.aligned), modules)
    assert aligned == brute_force_aligned(law_t, GRID, DSTAR, 0.1, modules)
    assert (16, 32, 8) in aligned
    assert {s.module for s in result.solutions} == {"audio", "vision"}


def test_snap_rounds_in_log2_and_clips():
    assert snap_to_grid(5.0, GRID) == 4
    assert snap_to_grid(6.0, GRID) == 8
    assert snap_to_grid(0.5, GRID) == 2
    assert snap_to_grid(1e9, GRID) == 128
    assert snap_to_grid(math.inf, GRID) == 128


def test_grid_per_module_is_respected():
    law_t = law_t_from_params(dict(LAWS.law_t))
    grid = {"vision": [16, 32, 64], "llm": [2, 4, 8, 16]}

    result = prune(law_t, grid, DSTAR, 0.25, DEFAULT)

    assert len(result.candidates) == 12
    assert {c.ranks["vision"] for c in result.candidates} == {16, 32, 64}


def test_missing_default_rank_is_rejected():
    with pytest.raises(ValueError, match="default ranks have no rank for module"):
        prune(law_t_from_params(dict(LAWS.law_t)), GRID, DSTAR, 0.25, {"vision": 8})


law_params = st.tuples(
    st.floats(min_value=0.0, max_value=300.0),
    st.floats(min_value=0.05, max_value=20.0),
    st.floats(min_value=0.5, max_value=1.2),
    st.floats(min_value=0.3, max_value=1.5),
)


@settings(max_examples=15, deadline=None)
@given(vision=law_params, llm=law_params, factor=st.floats(min_value=1e-3, max_value=1e3), seed=st.integers(0, 99))
def test_scaling_all_convergence_times_changes_no_pruning_decision(vision, llm, factor, seed):
    laws = replace(LAWS, law_t={"vision": vision, "llm": llm})
    rows = make_rows(noise=0.03, seed=seed, laws=laws, joint_probes=4)
    scaled = [replace(r, t_conv=r.t_conv * factor) for r in rows]

    base = prune(fit_convergence_laws(rows, MODULES, bootstrap=0), GRID, DSTAR, 0.25, DEFAULT)
    other = prune(fit_convergence_laws(scaled, MODULES, bootstrap=0), GRID, DSTAR, 0.25, DEFAULT)

    assert [c.aligned for c in other.candidates] == [c.aligned for c in base.candidates]
    assert [c.source for c in other.candidates] == [c.source for c in base.candidates]
    assert (other.fallback_reason is None) == (base.fallback_reason is None)


any_law = st.tuples(
    st.floats(min_value=0.0, max_value=1e5),
    st.floats(min_value=0.0, max_value=1e3),
    st.floats(min_value=0.0, max_value=3.0),
    st.floats(min_value=0.0, max_value=3.0),
)


@settings(max_examples=40, deadline=None)
@given(vision=any_law, llm=any_law, tolerance=st.floats(min_value=0.0, max_value=2.0))
def test_prune_never_raises_and_keeps_only_grid_pairs(vision, llm, tolerance):
    law_t = law_t_from_params({"vision": vision, "llm": llm})

    result = prune(law_t, GRID, DSTAR, tolerance, DEFAULT)

    grid_pairs = set(itertools.product(GRID, GRID))
    assert keys(result.kept()) <= grid_pairs
    assert (result.fallback_reason is None) == bool(result.kept())
    for c in result.candidates:
        if c.aligned:
            assert c.kept
