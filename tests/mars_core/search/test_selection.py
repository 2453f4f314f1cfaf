import itertools
import json
import math

import numpy as np
import pytest

from mars_core.config import SearchSettings
from mars_core.search.alignment import prune, snap_to_grid
from mars_core.search.fit import fit_from_rows
from mars_core.search.probe_table import ProbeTableError
from mars_core.search.selection import select
from mars_core.search.trainable_params import TrainableParamModel, fit_trainable_params
from mars_core.search.synthetic import (
    EXAMPLE_GRID,
    EXAMPLE_LAWS,
    EXAMPLE_PARAM_MODEL,
    EXAMPLE_SIZES,
    example_probe_rows,
    law_t_from_params,
)

GRID = list(EXAMPLE_GRID)
LAWS = EXAMPLE_LAWS
PARAM_MODEL = EXAMPLE_PARAM_MODEL
make_rows = example_probe_rows
MODULES = list(EXAMPLE_LAWS.modules)
D1, D2, DSTAR = EXAMPLE_SIZES

DEFAULT = {"vision": 8, "llm": 8}


def true_optimum(laws, tolerance=0.25, budget=None):
    """Best candidate of the true laws, found by brute force over the grid."""
    def t(module, rank):
        return laws.t_conv(module, rank, DSTAR)

    kept = set()
    for r_v, r_l in itertools.product(GRID, GRID):
        if abs(math.log(t("vision", r_v)) - math.log(t("llm", r_l))) <= math.log1p(tolerance):
            kept.add((r_v, r_l))
    t0_v, a_v, b_v, c_v = laws.law_t["vision"]
    for r_l in GRID:
        margin = t("llm", r_l) - t0_v
        if margin > 0:
            exact = (a_v * DSTAR**b_v / margin) ** (1 / c_v)
            if GRID[0] / math.sqrt(2) <= exact <= GRID[-1] * math.sqrt(2):
                kept.add((snap_to_grid(exact, GRID), r_l))
    pairs = [{"vision": v, "llm": l} for v, l in kept]
    if budget is not None:
        pairs = [p for p in pairs if laws.param_model.count(p) <= budget]
    return min(pairs, key=lambda p: laws.loss(p, D2))


@pytest.mark.parametrize("budget", [None, 400_000])
def test_noisy_probes_select_true_optimum(budget):
    settings = SearchSettings(bootstrap=100, max_trainable_params=budget)
    expected = true_optimum(LAWS, budget=budget)

    hits = 0
    for seed in range(10):
        selection = fit_from_rows(make_rows(noise=0.03, seed=seed), DSTAR, MODULES, search_settings=settings)
        hits += selection.chosen == expected

    assert hits >= 9


class FixedLawP:
    """Stand-in for a fitted Law-P that returns given predictions per candidate."""

    def __init__(self, table):
        self.table = table

    def predict(self, candidates):
        keys = [(c["vision"], c["llm"]) for c in candidates]
        means = np.array([self.table.get(k, (9.0, 0.0))[0] for k in keys])
        ses = np.array([self.table.get(k, (9.0, 0.0))[1] for k in keys])
        return means, ses


def aligned_prune():
    # Aligned candidates are exactly (4r, r): (8, 2), (16, 4), ..., (128, 32).
    law_t = law_t_from_params({"vision": (0.0, 4.0, 1.0, 1.0), "llm": (0.0, 1.0, 1.0, 1.0)})
    return prune(law_t, GRID, DSTAR, 0.1, DEFAULT)


def test_ties_go_to_fewer_parameters():
    law_p = FixedLawP({(128, 32): (1.00, 0.05), (64, 16): (1.04, 0.05), (32, 8): (1.10, 0.05)})

    selection = select(aligned_prune(), law_p, PARAM_MODEL)

    assert selection.chosen == {"vision": 64, "llm": 16}
    ties = {(c.ranks["vision"], c.ranks["llm"]) for c in selection.candidates if c.tie}
    assert ties == {(128, 32), (64, 16)}


def test_clear_winner_beats_cheaper_candidates():
    law_p = FixedLawP({(128, 32): (1.00, 0.01), (64, 16): (1.04, 0.01), (32, 8): (1.10, 0.01)})

    selection = select(aligned_prune(), law_p, PARAM_MODEL)

    assert selection.chosen == {"vision": 128, "llm": 32}
    assert selection.chosen_predicted_loss == 1.00
    assert selection.fallback_reason is None


def test_budget_removes_candidates_before_choosing():
    law_p = FixedLawP({(128, 32): (1.00, 0.0), (64, 16): (1.04, 0.0), (32, 8): (1.10, 0.0)})
    budget = PARAM_MODEL.count({"vision": 64, "llm": 16}) - 1

    selection = select(aligned_prune(), law_p, PARAM_MODEL, max_trainable_params=budget)

    assert selection.chosen == {"vision": 32, "llm": 8}
    dropped = {(c.ranks["vision"], c.ranks["llm"]) for c in selection.candidates if c.dropped_by_budget}
    assert dropped == {(128, 32), (64, 16)}
    assert selection.chosen_trainable_params <= budget


def test_budget_below_every_candidate_falls_back_with_reason(caplog):
    law_p = FixedLawP({})

    with caplog.at_level("WARNING"):
        selection = select(aligned_prune(), law_p, PARAM_MODEL, max_trainable_params=10)

    assert selection.chosen == DEFAULT
    assert "exceed max_trainable_params=10" in selection.fallback_reason
    assert "above max_trainable_params" in selection.notes[0]


def test_empty_pruning_falls_back_to_default_ranks(caplog):
    law_t = law_t_from_params({"vision": (1e6, 1.0, 1.0, 1.0), "llm": (0.0, 1.0, 1.0, 1.0)})
    with caplog.at_level("WARNING"):
        pruned = prune(law_t, GRID, DSTAR, 0.25, DEFAULT)
        selection = select(pruned, None, PARAM_MODEL)

    assert selection.chosen == DEFAULT
    assert selection.fallback_reason == pruned.fallback_reason
    assert selection.chosen_predicted_loss is None
    assert not any(c.kept for c in selection.candidates)
    assert "default ranks" in caplog.text
    assert selection.chosen_t_conv["vision"] == pytest.approx(1e6 + 1.0 * DSTAR / 8)


def test_selection_dict_is_strict_json():
    settings = SearchSettings(bootstrap=30)
    selection = fit_from_rows(make_rows(), DSTAR, MODULES, search_settings=settings)

    data = json.loads(json.dumps(selection.to_dict(), allow_nan=False))

    assert data["chosen"] == selection.chosen
    assert data["fallback_reason"] is None
    assert len(data["candidates"]) == len(GRID) ** 2
    candidate = data["candidates"][0]
    for key in ("ranks", "t_conv", "predicted_loss", "loss_se", "aligned", "trainable_params", "dropped_by_budget"):
        assert key in candidate
    for module in MODULES:
        law = data["law_t"][module]
        assert set(law) >= {"params", "r2_log", "loo_relative_error", "intervals", "points_used", "points_left_out"}
    assert data["law_p"]["form"] == "base"
    assert data["trainable_params"]["source"] == "probe rows"


def test_trainable_param_coefficients_are_recovered_from_rows():
    model = fit_trainable_params(make_rows(), MODULES)

    assert model.n0 == pytest.approx(PARAM_MODEL.n0, rel=1e-9)
    for module in MODULES:
        assert model.per_rank[module] == pytest.approx(PARAM_MODEL.per_rank[module], rel=1e-9)
    assert model.count({"vision": 8, "llm": 16}) == PARAM_MODEL.count({"vision": 8, "llm": 16})


def test_given_coefficients_replace_recovered_ones():
    given = TrainableParamModel(n0=0.0, per_rank={"vision": 1.0, "llm": 1.0})

    selection = fit_from_rows(make_rows(), DSTAR, MODULES, search_settings=SearchSettings(bootstrap=0),
                              param_model=given)

    assert selection.param_model is given
    assert selection.chosen_trainable_params == sum(selection.chosen.values())


def test_rows_that_do_not_determine_coefficients_raise():
    rows = [r for r in make_rows() if r.kind == "module" and r.module == "vision"]
    with pytest.raises(ProbeTableError, match="do not determine"):
        fit_trainable_params(rows, MODULES)


def test_select_without_law_p_needs_empty_pruning():
    with pytest.raises(ValueError, match="needs a fitted Law-P"):
        select(aligned_prune(), None, PARAM_MODEL)
