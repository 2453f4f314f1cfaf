from dataclasses import replace

import numpy as np
import pytest

from mars_core.search.law_p import LAW_P_FORMS, LawPForm, fit_performance_law, register_law_p_form
from mars_core.search.probe_table import ProbeTableError
from mars_core.search.synthetic import (
    EXAMPLE_GRID,
    EXAMPLE_LAWS,
    EXAMPLE_PARAM_MODEL,
    EXAMPLE_SIZES,
    example_probe_rows,
)

GRID = list(EXAMPLE_GRID)
LAWS = EXAMPLE_LAWS
PARAM_MODEL = EXAMPLE_PARAM_MODEL
make_rows = example_probe_rows
MODULES = list(EXAMPLE_LAWS.modules)
D1, D2, DSTAR = EXAMPLE_SIZES

ALL_PAIRS = [{"vision": v, "llm": l} for v in GRID for l in GRID]
CAPACITY_LAWS = replace(LAWS, law_p={**LAWS.law_p, "K": 0.004, "eta": 1.0})


def true_losses(laws=LAWS):
    return np.array([laws.loss(pair, D2) for pair in ALL_PAIRS])


def test_noise_free_joint_probes_recover_base_parameters():
    law = fit_performance_law(make_rows(noise=0.0), MODULES, PARAM_MODEL, form="base", bootstrap=0)

    assert law.form == "base"
    for name, value in LAWS.law_p.items():
        assert law.params[name] == pytest.approx(value, rel=1e-4, abs=1e-6)
    assert law.r2 == pytest.approx(1.0)
    assert law.n_train == D2


@pytest.mark.parametrize("seed", range(5))
def test_one_percent_noise_predicts_grid_within_six_percent(seed):
    law = fit_performance_law(make_rows(noise=0.01, seed=seed), MODULES, PARAM_MODEL, bootstrap=0)

    predicted, _ = law.predict(ALL_PAIRS)

    assert np.max(np.abs(predicted / true_losses() - 1)) < 0.06


def test_bootstrap_gives_seeded_standard_errors_and_intervals():
    rows = make_rows(noise=0.03, seed=1)

    law = fit_performance_law(rows, MODULES, PARAM_MODEL, bootstrap=150, seed=3)
    again = fit_performance_law(rows, MODULES, PARAM_MODEL, bootstrap=150, seed=3)
    mean, se = law.predict(ALL_PAIRS)

    assert np.all(se > 0)
    assert np.array_equal(se, again.predict(ALL_PAIRS)[1])
    assert set(law.intervals) == set(law.params)
    for name, (low, high) in law.intervals.items():
        assert low <= law.params[name] + 1e-9
        assert law.params[name] - 1e-9 <= high
    # Three standard errors cover the truth for almost every grid pair.
    assert np.mean(np.abs(mean - true_losses()) <= 3 * se + 1e-3) > 0.9


def test_without_bootstrap_standard_error_is_zero():
    law = fit_performance_law(make_rows(), MODULES, PARAM_MODEL, bootstrap=0)

    _, se = law.predict(ALL_PAIRS[:3])

    assert law.intervals is None
    assert np.all(se == 0)


def test_auto_uses_base_below_ten_joint_probes():
    law = fit_performance_law(make_rows(laws=CAPACITY_LAWS, joint_probes=8), MODULES, PARAM_MODEL, bootstrap=0)

    assert law.form == "base"
    assert list(law.loo_by_form) == ["base"]
    assert any("< 10" in note for note in law.notes)


def test_auto_picks_capacity_form_on_capacity_data():
    rows = make_rows(noise=0.005, laws=CAPACITY_LAWS, joint_probes=14)

    law = fit_performance_law(rows, MODULES, PARAM_MODEL, bootstrap=0)

    assert set(law.loo_by_form) == {"base", "capacity"}
    assert law.loo_by_form["capacity"] < law.loo_by_form["base"]
    assert law.form == "capacity"
    predicted, _ = law.predict(ALL_PAIRS)
    assert np.max(np.abs(predicted / true_losses(CAPACITY_LAWS) - 1)) < 0.1


def test_forced_capacity_form_is_used_with_enough_probes():
    rows = make_rows(noise=0.0, laws=CAPACITY_LAWS, joint_probes=9)

    law = fit_performance_law(rows, MODULES, PARAM_MODEL, form="capacity", bootstrap=0)

    assert law.form == "capacity"
    assert law.params["K"] == pytest.approx(0.004, rel=0.05)
    assert law.params["eta"] == pytest.approx(1.0, rel=0.05)


def test_too_few_joint_probes_for_form_raises():
    rows = make_rows(joint_probes=5)
    with pytest.raises(ProbeTableError, match="form 'base' has 5 parameters but only 5 usable joint probes"):
        fit_performance_law(rows, MODULES, PARAM_MODEL)


def test_flagged_joint_probes_are_left_out_and_counted():
    rows = make_rows(noise=0.0, joint_probes=10)
    joint = [i for i, r in enumerate(rows) if r.kind == "joint"]
    rows[joint[-1]] = replace(rows[joint[-1]], status="censored")
    rows[joint[-2]] = replace(rows[joint[-2]], status="failed", final_val_loss=None)

    law = fit_performance_law(rows, MODULES, PARAM_MODEL, bootstrap=0)

    assert law.points_used == 8
    assert law.points_left_out == {"censored": 1, "failed": 1}


def test_unknown_form_is_rejected():
    with pytest.raises(ValueError, match="unknown Law-P form 'cubic'"):
        fit_performance_law(make_rows(), MODULES, PARAM_MODEL, form="cubic")


@pytest.fixture
def inverse_form():
    @register_law_p_form
    class InverseRankForm(LawPForm):
        """E + sum_m A_m / r_m."""

        name = "inverse"

        def param_names(self):
            return ["E", *(f"A_{m}" for m in self.modules)]

        def bounds(self, loss):
            return np.zeros(1 + len(self.modules)), np.full(1 + len(self.modules), 100.0)

        def predict(self, theta, inputs):
            theta = np.atleast_2d(theta)
            return theta[:, :1] + theta[:, 1:] @ (1.0 / inputs.ranks).T

    yield InverseRankForm
    LAW_P_FORMS.pop("inverse")


def test_registered_form_is_fitted_by_name(inverse_form):
    inverse_laws = replace(LAWS, law_p={"E": 0.5, "A_vision": 1.0, "alpha_vision": 1.0, "A_llm": 2.0, "alpha_llm": 1.0})

    law = fit_performance_law(make_rows(noise=0.0, laws=inverse_laws), MODULES, PARAM_MODEL, form="inverse",
                              bootstrap=20)

    assert law.form == "inverse"
    assert law.params == pytest.approx({"E": 0.5, "A_vision": 1.0, "A_llm": 2.0}, rel=1e-3)
    assert law.predict([{"vision": 4, "llm": 4}])[0][0] == pytest.approx(0.5 + 0.25 + 0.5, rel=1e-3)


def test_auto_compares_registered_forms(inverse_form):
    law = fit_performance_law(make_rows(joint_probes=12), MODULES, PARAM_MODEL, bootstrap=0)

    assert set(law.loo_by_form) == {"base", "capacity", "inverse"}
