"""Probe planning and the final budget: sizes, bounds, and the warning for many passes over small data."""

from types import SimpleNamespace

import pytest

from mars_core import probes
from mars_core.config import load_config


def _selection(times: dict[str, float]) -> SimpleNamespace:
    return SimpleNamespace(chosen={"vision": 8, "llm": 8}, chosen_t_conv=times)


def test_final_budget_bounds():
    cfg = load_config(None, ["final.margin=0.5", "final.min_samples=100", "final.max_samples=1000"])

    assert probes.final_budget(cfg, _selection({"vision": 200.0, "llm": 400.0}), 500) == 600
    assert probes.final_budget(cfg, _selection({"vision": 10.0, "llm": 20.0}), 500) == 100
    assert probes.final_budget(cfg, _selection({"vision": 1e6, "llm": 20.0}), 500) == 1000


def test_final_budget_warns_on_many_passes(caplog):
    cfg = load_config(None, [])  # final.min_samples is 4096

    with caplog.at_level("WARNING"):
        budget = probes.final_budget(cfg, _selection({"vision": 10.0, "llm": 20.0}), 42)

    assert budget == 4096
    assert "98 passes over the 42 training examples" in caplog.text
    assert "final.min_samples" in caplog.text


def test_final_budget_large_data_quiet(caplog):
    cfg = load_config(None, [])

    with caplog.at_level("WARNING"):
        probes.final_budget(cfg, _selection({"vision": 10.0, "llm": 20.0}), 2518)

    assert caplog.text == ""


@pytest.mark.parametrize(("n_train", "warns"), [(168, True), (2518, False)])
def test_module_probes_many_passes_warn(n_train, warns, caplog):
    cfg = load_config(None, [])  # probes.module_budget_samples is 2048, D1 a quarter of the split
    dataset = SimpleNamespace(n_train=n_train, fingerprint="data")
    base = SimpleNamespace(fingerprint="model")

    with caplog.at_level("WARNING"):
        specs = probes.plan_module_probes(cfg, dataset, base)

    assert len(specs) == 2 * 2 * cfg.probes.ranks_per_module
    assert ("probes.module_budget_samples=2048 is 49 passes over D1=42 examples" in caplog.text) == warns
