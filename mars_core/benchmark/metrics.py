"""Figures that compare MARS with an exhaustive grid search, and AdaLoRA's parameter match.

Every function takes plain numbers, so the figures can be recomputed from a
``benchmark.json`` without the models:

- regret: ``(L_mars - L_best) / L_best`` on validation loss;
- place: where the MARS pair's loss falls among the grid's losses (1 = best);
- search cost ratio: ``cost(grid) / cost(MARS probes + final run)``;
- Spearman's rank correlation between Law-P's predictions over the grid and
  the grid's realised losses.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def regret(loss: float, best_loss: float) -> float:
    """Return ``(loss - best_loss) / best_loss``: 0 when the pair is the best, 0.02 when 2% worse."""
    if not (math.isfinite(loss) and math.isfinite(best_loss)) or best_loss <= 0:
        raise ValueError(f"regret needs finite losses and a positive best loss, got loss={loss}, best_loss={best_loss}")
    return (loss - best_loss) / best_loss


def place_among(loss: float, losses: Sequence[float]) -> int:
    """Return the 1-based place of ``loss`` among ``losses``: one plus the number of strictly lower losses.

    Ties share the better place, so a pair that equals the best is first.
    """
    finite = [value for value in losses if value is not None and math.isfinite(value)]
    if not finite:
        raise ValueError("place_among needs at least one finite loss to compare with")
    return 1 + sum(value < loss for value in finite)


def cost_ratio(grid_cost: float, mars_cost: float) -> float:
    """Return ``grid_cost / mars_cost``, in whatever unit both are given (seconds, samples)."""
    if not mars_cost > 0:
        raise ValueError(f"the MARS cost must be positive to divide by, got {mars_cost}")
    return grid_cost / mars_cost


def spearman(predicted: Sequence[float], realised: Sequence[float]) -> tuple[float | None, str | None]:
    """Return Spearman's rank correlation of the two sequences, or None with the reason it is undefined.

    Pairs where either value is missing or not finite are left out. The
    correlation is undefined with fewer than three pairs or when one side
    is constant (a Law-P fit that predicts the same loss everywhere, say).
    """
    pairs = [
        (p, r) for p, r in zip(predicted, realised, strict=True)
        if p is not None and r is not None and math.isfinite(p) and math.isfinite(r)
    ]
    if len(pairs) < 3:
        return None, f"only {len(pairs)} grid pairs have both a prediction and a realised loss; 3 are needed"
    left, right = np.array(pairs, dtype=float).T
    for name, values in (("Law-P's predictions", left), ("the realised losses", right)):
        if np.ptp(values) <= 1e-12 * max(1.0, float(np.abs(values).max())):
            return None, f"{name} are constant over the grid, so their ranking is undefined"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = stats.spearmanr(left, right).statistic
    return (float(value), None) if math.isfinite(value) else (None, "scipy returned a non-finite correlation")


@dataclass(frozen=True)
class AdaLoraMatch:
    """AdaLoRA's average target rank whose final parameter count is nearest to a reference count.

    ``matched_params`` is the count at ``target_rank`` after AdaLoRA has
    pruned to its budget; ``relative_gap`` is ``matched / reference - 1``.
    """

    target_rank: int
    reference_params: int
    matched_params: int
    relative_gap: float

    def to_dict(self) -> dict:
        return {
            "target_rank": self.target_rank,
            "reference_params": self.reference_params,
            "matched_params": self.matched_params,
            "relative_gap": self.relative_gap,
        }


def adalora_params(target_rank: int, fixed_params: int, width_sum: int, n_layers: int) -> int:
    """Parameters of AdaLoRA at an average rank: ``fixed + r * (width_sum + n_layers)``.

    An AdaLoRA layer of rank r on a (d_out x d_in) weight has ``r * d_in``
    (Q), ``d_out * r`` (P) and ``r`` (the singular values) parameters.
    ``width_sum`` is the sum of ``d_in + d_out`` over the adapted layers,
    and ``fixed_params`` counts what is trained whatever the rank (the
    projector, say).
    """
    return fixed_params + target_rank * (width_sum + n_layers)


def match_adalora_rank(reference_params: int, fixed_params: int, width_sum: int, n_layers: int) -> AdaLoraMatch:
    """Choose the integer average target rank (>= 1) whose AdaLoRA count is nearest to ``reference_params``."""
    if n_layers < 1 or width_sum < 1:
        raise ValueError(f"AdaLoRA matching needs adapted layers, got {n_layers} layers of total width {width_sum}")
    per_rank = width_sum + n_layers
    exact = (reference_params - fixed_params) / per_rank
    candidates = {max(1, math.floor(exact)), max(1, math.ceil(exact))}
    best = min(
        sorted(candidates),
        key=lambda r: abs(adalora_params(r, fixed_params, width_sum, n_layers) - reference_params),
    )
    matched = adalora_params(best, fixed_params, width_sum, n_layers)
    return AdaLoraMatch(best, int(reference_params), matched, matched / reference_params - 1.0)


def count_adapter_params(adapter_dir: str | Path) -> int:
    """Count the parameters saved in a PEFT adapter folder (LoRA or AdaLoRA factors plus full modules).

    AdaLoRA saves each layer cut to its final rank, so for AdaLoRA this is
    the count after pruning, not the count it trained with.
    """
    from safetensors import safe_open

    path = Path(adapter_dir) / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; expected a PEFT adapter saved with save_pretrained")
    total = 0
    with safe_open(str(path), framework="numpy") as weights:
        for name in weights.keys():
            total += int(np.prod(weights.get_slice(name).get_shape()))
    return total


def adalora_final_ranks(adapter_dir: str | Path) -> dict[str, int] | None:
    """Read the rank AdaLoRA kept per layer from the adapter's config; None for a plain LoRA adapter."""
    config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
    if config.get("peft_type") != "ADALORA" or not config.get("rank_pattern"):
        return None
    ranks = {}
    for name, kept in config["rank_pattern"].items():
        layer = name.removesuffix(".lora_E")
        ranks[layer] = int(sum(bool(flag) for flag in kept)) if isinstance(kept, list) else int(kept)
    return ranks


def ranks_key(ranks: Mapping[str, int], modules: Sequence[str]) -> str:
    """Label a rank pair as ``vision=8,llm=16`` in module order."""
    return ",".join(f"{module}={ranks[module]}" for module in modules)
