import math

import pytest

from mars_core.search.design import joint_design, joint_probe_budget, module_probe_ranks
from mars_core.search.synthetic import law_t_from_params

GRID = [2, 4, 8, 16, 32, 64, 128]
MODULES = ["vision", "llm"]


def test_probe_ranks_spread_in_log_space():
    assert module_probe_ranks(GRID, 4) == [2, 8, 32, 128]
    assert module_probe_ranks(GRID, 2) == [2, 128]
    assert module_probe_ranks(GRID, 3) == [2, 16, 128]


def test_module_probe_ranks_return_whole_small_grid():
    assert module_probe_ranks([4, 8], 4) == [4, 8]
    assert module_probe_ranks(GRID, 10) == GRID


def test_module_probe_ranks_need_two():
    with pytest.raises(ValueError, match="at least 2"):
        module_probe_ranks(GRID, 1)


def test_joint_design_has_corners_then_distinct_grid_fill():
    design = joint_design(GRID, MODULES, 8, seed=0)

    pairs = [(d["vision"], d["llm"]) for d in design]
    assert pairs[:4] == [(2, 2), (2, 128), (128, 2), (128, 128)]
    assert len(set(pairs)) == 8
    assert all(v in GRID and l in GRID for v, l in pairs)


def test_joint_design_is_deterministic_per_seed():
    assert joint_design(GRID, MODULES, 8, seed=3) == joint_design(GRID, MODULES, 8, seed=3)
    assert joint_design(GRID, MODULES, 12, seed=3) != joint_design(GRID, MODULES, 12, seed=4)


def test_joint_design_fill_covers_both_axes():
    design = joint_design(GRID, MODULES, 12, seed=1)[4:]

    # A Latin hypercube puts its points in different rows and columns.
    assert len({d["vision"] for d in design}) >= 5
    assert len({d["llm"] for d in design}) >= 5


def test_joint_design_caps_at_grid_size():
    design = joint_design([2, 4], MODULES, 8, seed=0)

    assert sorted((d["vision"], d["llm"]) for d in design) == [(2, 2), (2, 4), (4, 2), (4, 4)]


def test_joint_design_for_three_modules_starts_with_corners():
    design = joint_design(GRID, ["audio", "vision", "llm"], 10, seed=0)

    assert len(design) == 10
    assert {tuple(d.values()) for d in design[:8]} == {(a, b, c) for a in (2, 128) for b in (2, 128) for c in (2, 128)}


def test_joint_budget_covers_slowest_module_with_margin():
    law_t = law_t_from_params({"vision": (0.0, 2.0, 1.0, 1.0), "llm": (0.0, 1.0, 1.0, 1.0)})
    design = [{"vision": 8, "llm": 8}, {"vision": 2, "llm": 32}]

    budget = joint_probe_budget(law_t, design, 1000, margin=0.5, bounds=(10, 100_000))

    # Slowest: vision at rank 2 needs 2 * 1000 / 2 = 1000 samples.
    assert budget == math.ceil(1.5 * 1000)


def test_joint_budget_is_clipped_to_bounds():
    law_t = law_t_from_params({"vision": (0.0, 2.0, 1.0, 1.0), "llm": (0.0, 1.0, 1.0, 1.0)})
    design = [{"vision": 2, "llm": 2}]

    assert joint_probe_budget(law_t, design, 1000, 0.5, (10, 500)) == 500
    assert joint_probe_budget(law_t, design, 1, 0.5, (512, 8192)) == 512
