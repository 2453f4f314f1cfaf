from dataclasses import replace

import numpy as np
import pytest
from scipy.optimize import least_squares

from mars_core.search import law_t as law_t_module
from mars_core.search.law_t import fit_convergence_laws
from mars_core.search.probe_table import ProbeTableError
from mars_core.search.synthetic import (
    EXAMPLE_GRID,
    EXAMPLE_LAWS,
    EXAMPLE_SIZES,
    example_probe_rows,
)

GRID = list(EXAMPLE_GRID)
LAWS = EXAMPLE_LAWS
make_rows = example_probe_rows
MODULES = list(EXAMPLE_LAWS.modules)
D1, D2, DSTAR = EXAMPLE_SIZES


def true_times(module, n_train):
    return np.array([LAWS.t_conv(module, r, n_train) for r in GRID])


def test_noise_free_probes_recover_every_parameter():
    result = fit_convergence_laws(make_rows(noise=0.0), MODULES, bootstrap=0)

    for module in MODULES:
        law = result.laws[module]
        t0, a, b, c = LAWS.law_t[module]
        assert law.t0 == pytest.approx(t0, rel=1e-3)
        assert law.a == pytest.approx(a, rel=1e-3)
        assert law.b == pytest.approx(b, rel=1e-4)
        assert law.c == pytest.approx(c, rel=1e-4)
        assert law.r2_log == pytest.approx(1.0)
        assert law.fixed == []


@pytest.mark.parametrize("seed", range(5))
def test_one_percent_noise_recovers_exponents_and_target_times(seed):
    result = fit_convergence_laws(make_rows(noise=0.01, seed=seed), MODULES, bootstrap=0)

    for module in MODULES:
        law = result.laws[module]
        _, _, b, c = LAWS.law_t[module]
        assert abs(law.b - b) < 0.08
        assert abs(law.c - c) < 0.03
        predicted = law.predict(np.array(GRID), DSTAR)
        assert np.max(np.abs(predicted / true_times(module, DSTAR) - 1)) < 0.08


def test_diagnostics_are_reported():
    result = fit_convergence_laws(make_rows(noise=0.03, seed=1), MODULES, bootstrap=100, seed=0)

    for module in MODULES:
        law = result.laws[module]
        assert 0.95 < law.r2_log <= 1.0
        assert 0 < law.loo_relative_error < 0.2
        assert law.points_used == 8
        assert law.points_left_out == {}
        for name, value in law.params.items():
            low, high = law.intervals[name]
            assert low <= high
        assert law.intervals["c"][0] < LAWS.law_t[module][3] < law.intervals["c"][1]


def test_bootstrap_is_seeded():
    rows = make_rows(noise=0.03, seed=2)
    first = fit_convergence_laws(rows, MODULES, bootstrap=50, seed=7).to_dict()
    again = fit_convergence_laws(rows, MODULES, bootstrap=50, seed=7).to_dict()
    other = fit_convergence_laws(rows, MODULES, bootstrap=50, seed=8).to_dict()

    assert first == again
    assert first["vision"]["intervals"] != other["vision"]["intervals"]


def test_flagged_probes_are_left_out_and_counted():
    rows = make_rows(noise=0.01)
    vision_rows = [i for i, r in enumerate(rows) if r.module == "vision"]
    rows[vision_rows[0]] = replace(rows[vision_rows[0]], status="censored", t_conv=1e9)
    rows[vision_rows[1]] = replace(rows[vision_rows[1]], status="no_signal", t_conv=None)

    result = fit_convergence_laws(rows, MODULES, bootstrap=0)

    assert result.laws["vision"].points_used == 6
    assert result.laws["vision"].points_left_out == {"censored": 1, "no_signal": 1}
    assert result.laws["llm"].points_left_out == {}
    assert result.laws["vision"].c == pytest.approx(LAWS.law_t["vision"][3], abs=0.05)


def test_few_points_fix_t0_and_use_log_ols():
    pure_power = replace(LAWS, law_t={m: (0.0, *LAWS.law_t[m][1:]) for m in MODULES})
    rows = [r for r in make_rows(noise=0.0, laws=pure_power) if r.kind == "module" and r.ranks[r.module] in (2, 32)]

    result = fit_convergence_laws(rows, MODULES, bootstrap=0)

    for module in MODULES:
        law = result.laws[module]
        assert law.points_used == 4
        assert "t0" in law.fixed
        assert law.t0 == 0.0
        _, a, b, c = pure_power.law_t[module]
        assert law.c == pytest.approx(c, rel=1e-6)
        assert law.b == pytest.approx(b, rel=1e-6)
        assert law.a == pytest.approx(a, rel=1e-5)


def test_single_data_size_fixes_b_with_a_note():
    rows = [r for r in make_rows(noise=0.0) if r.n_train == 4000]

    law = fit_convergence_laws(rows, MODULES, bootstrap=0).laws["vision"]

    assert "b" in law.fixed
    assert law.b == 0.0
    assert any("one data size" in note for note in law.notes)


def test_module_without_usable_rows_raises():
    rows = [replace(r, status="censored") if r.module == "llm" else r for r in make_rows()]
    with pytest.raises(ProbeTableError, match="module 'llm' has no usable module probe.*censored.*probes.module_budget_samples"):
        fit_convergence_laws(rows, MODULES)


def test_single_rank_module_raises():
    rows = [r for r in make_rows() if r.module != "llm" or r.ranks["llm"] == 8]
    with pytest.raises(ProbeTableError, match="module 'llm' .* rank\\(s\\) \\[8\\] only"):
        fit_convergence_laws(rows, MODULES)


def test_scaled_times_scale_t0_and_a_only():
    rows = make_rows(noise=0.02, seed=4)
    scaled = [replace(r, t_conv=r.t_conv * 37.5) for r in rows]

    base = fit_convergence_laws(rows, MODULES, bootstrap=0)
    other = fit_convergence_laws(scaled, MODULES, bootstrap=0)

    for module in MODULES:
        assert other.laws[module].t0 == pytest.approx(base.laws[module].t0 * 37.5, rel=1e-6)
        assert other.laws[module].a == pytest.approx(base.laws[module].a * 37.5, rel=1e-6)
        assert other.laws[module].c == pytest.approx(base.laws[module].c, rel=1e-6)


def test_leave_one_out_matches_scipy_refits():
    rows = make_rows(noise=0.03, seed=5)
    law = fit_convergence_laws(rows, MODULES, bootstrap=0).laws["vision"]
    points = list(zip(law.ranks, law.n_train, law.t_conv))

    errors = []
    for i in range(len(points)):
        kept = [p for j, p in enumerate(points) if j != i]
        r, d, t = (np.array(v) for v in zip(*kept))
        problem = law_t_module._LogProblem(r, d, t)

        def residual(theta):
            return problem.model(theta[None, :])[0] - problem.y

        fit = least_squares(residual, [0.1, 0.0, 1.0, 1.0], bounds=(problem.lower, problem.upper))
        t0, a, b, c = problem.to_original(fit.x)
        predicted = t0 + a * points[i][1] ** b * points[i][0] ** (-c)
        errors.append(abs(predicted / points[i][2] - 1))

    assert law.loo_relative_error == pytest.approx(np.mean(errors), rel=0.05)


def test_poor_fit_gets_a_warning_note(caplog):
    # Convergence times drawn at random over three decades, unrelated to rank or data size.
    rng = np.random.default_rng(1)
    rows = [replace(r, t_conv=float(np.exp(rng.uniform(np.log(10), np.log(10_000)))))
            if r.kind == "module" and r.module == "vision" else r for r in make_rows(noise=0.0)]

    with caplog.at_level("WARNING"):
        result = fit_convergence_laws(rows, MODULES, bootstrap=0)

    assert result.laws["vision"].r2_log < law_t_module.POOR_FIT_R2
    assert any("poor fit" in note for note in result.laws["vision"].notes)
    assert "Law-T vision: poor fit" in caplog.text
    assert not any("poor fit" in note for note in result.laws["llm"].notes)
