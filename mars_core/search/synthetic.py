"""Probe rows drawn from known laws with noise, for tests, benchmarks and demos.

Nothing is trained: convergence times come from a known Law-T, final
losses from a known Law-P (base form, optionally with the capacity term),
and both get multiplicative log-normal noise. With ``with_curves`` each
probe also gets a saturating loss curve whose convergence time is measured
back with ``curve_to_convergence``, as the pipeline does for a real probe.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .convergence import curve_to_convergence
from .design import joint_design, module_probe_ranks
from .probe_table import ProbeRow, probe_id
from .law_t import LawTResult, ModuleLawT
from .trainable_params import TrainableParamModel


@dataclass(frozen=True)
class KnownLaws:
    """True laws of a synthetic search.

    ``law_t`` maps each module to ``(t0, a, b, c)``. ``law_p`` contains
    ``E``, ``A_<module>``, ``alpha_<module>`` and optionally ``K`` and ``eta``.
    """

    modules: tuple[str, ...]
    law_t: Mapping[str, tuple[float, float, float, float]]
    law_p: Mapping[str, float]
    param_model: TrainableParamModel

    def t_conv(self, module: str, rank: float, n_train: float) -> float:
        t0, a, b, c = self.law_t[module]
        return t0 + a * n_train**b * rank ** (-c)

    def loss(self, ranks: Mapping[str, int], n_train: float) -> float:
        value = self.law_p["E"] + sum(self.law_p[f"A_{m}"] * ranks[m] ** -self.law_p[f"alpha_{m}"] for m in self.modules)
        if "K" in self.law_p:
            value += self.law_p["K"] * (self.param_model.count(ranks) / n_train) ** self.law_p["eta"]
        return value


def synthetic_probe_rows(
    laws: KnownLaws,
    grid: Sequence[int],
    n_train: tuple[int, int],
    *,
    ranks_per_module: int = 4,
    joint_probes: int = 8,
    noise: float = 0.03,
    seed: int = 0,
    with_curves: bool = False,
    eval_every: int = 64,
) -> list[ProbeRow]:
    """Build module probes at D1 and D2 and joint probes at D2, as the pipeline would record them.

    ``noise`` is the standard deviation of the log-normal noise on each
    convergence time and final loss (0.03 is about 3%).
    """
    rng = np.random.default_rng(seed)
    modules = list(laws.modules)
    rows = []
    for module in modules:
        for size in n_train:
            for rank in module_probe_ranks(grid, ranks_per_module):
                ranks = {m: (rank if m == module else 0) for m in modules}
                true_t = laws.t_conv(module, rank, size)
                rows.append(_row(laws, "module", module, ranks, size, true_t, noise, rng, with_curves, eval_every))
    for ranks in joint_design(grid, modules, joint_probes, seed=seed):
        true_t = max(laws.t_conv(m, ranks[m], n_train[1]) for m in modules)
        rows.append(_row(laws, "joint", "", ranks, n_train[1], true_t, noise, rng, with_curves, eval_every))
    return rows


def _row(
    laws: KnownLaws, kind: str, module: str, ranks: dict[str, int], size: int, true_t: float, noise: float,
    rng: np.random.Generator, with_curves: bool, eval_every: int,
) -> ProbeRow:
    t_conv = true_t * math.exp(noise * rng.standard_normal())
    final = laws.loss({m: max(r, 1) for m, r in ranks.items()}, size) * math.exp(noise * rng.standard_normal())
    budget = int(math.ceil(1.5 * true_t / eval_every) * eval_every)
    status, curve = "ok", []
    if with_curves:
        samples = np.arange(0, budget + 1, eval_every)
        tau = t_conv / math.log(20.0)
        start = final + 2.0
        clean = final + (start - final) * np.exp(-samples / tau)
        noisy = clean * np.exp(0.01 * rng.standard_normal(samples.size))
        curve = [(int(s), float(v)) for s, v in zip(samples, noisy, strict=True)]
        t_conv, status, _ = curve_to_convergence(curve, budget)
    return ProbeRow(
        probe_id=probe_id(kind, ranks, size, budget, "synthetic"),
        kind=kind, module=module, ranks=ranks, n_train=size, samples_seen=budget, t_conv=t_conv,
        final_val_loss=final, status=status, wall_seconds=0.0, trainable_params=laws.param_model.count(ranks),
        curve=curve,
    )


def law_t_from_params(params: Mapping[str, tuple[float, float, float, float]]) -> LawTResult:
    """Build a LawTResult from known ``(t0, a, b, c)`` per module, with empty diagnostics.

    Useful to prune with a known law, without fitting probes first.
    """
    laws = {
        module: ModuleLawT(module, t0, a, b, c, r2_log=1.0, loo_relative_error=None, intervals=None,
                           points_used=0, points_left_out={})
        for module, (t0, a, b, c) in params.items()
    }
    return LawTResult(modules=list(params), laws=laws)


EXAMPLE_GRID = (2, 4, 8, 16, 32, 64, 128)
#: D1 and D2 of the probes, and Dstar of the final run.
EXAMPLE_SIZES = (2000, 4000, 8000)
EXAMPLE_PARAM_MODEL = TrainableParamModel(n0=50_000, per_rank={"vision": 2_000, "llm": 9_000})

#: Known laws used by the tests and the benchmark. At equal rank vision needs
#: about five times the samples of the language model (a_vision / a_llm = 5,
#: c = 0.9), so aligned candidates pair a vision rank about six times the LLM
#: rank: (32, 4) up to (128, 16) on ``EXAMPLE_GRID``. Law-P falls with both
#: ranks, so the best aligned candidate is (128, 16).
EXAMPLE_LAWS = KnownLaws(
    modules=("vision", "llm"),
    law_t={"vision": (100.0, 3.0, 1.0, 0.9), "llm": (50.0, 0.6, 1.0, 0.9)},
    law_p={"E": 0.3, "A_vision": 0.8, "alpha_vision": 0.6, "A_llm": 1.5, "alpha_llm": 0.7},
    param_model=EXAMPLE_PARAM_MODEL,
)


def example_probe_rows(noise: float = 0.03, seed: int = 0, laws: KnownLaws = EXAMPLE_LAWS, **kwargs) -> list[ProbeRow]:
    """Probe rows from ``laws`` on ``EXAMPLE_GRID`` at the example D1 and D2; see ``synthetic_probe_rows``."""
    return synthetic_probe_rows(laws, EXAMPLE_GRID, EXAMPLE_SIZES[:2], noise=noise, seed=seed, **kwargs)
