"""What a training run is asked to do, and what it returns."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from mars_core.config import MarsConfig
from mars_core.model.lora import ADAPTERS, PROJECTOR, adalora_target_rank, validate_ranks


@dataclass
class RunSpec:
    """One fine-tune: ranks per module, data size, budget and kind.

    ``n_train`` takes the first ``n_train`` examples of the seeded shuffle
    of the train split, so a smaller data size is a subset of a larger one.
    ``budget_samples`` counts optimizer steps times batch size and may exceed
    ``n_train`` (several epochs). ``lr_scale`` multiplies the learning rate
    per module (keys: modules of ``lora.modules`` and ``projector``).
    ``adapter="adalora"`` trains PEFT's AdaLoRA instead of LoRA: then
    ``ranks`` gives AdaLoRA's average target rank, the same for every module
    with a rank above 0 (see ``mars_core.model.lora.adalora_target_rank``).
    """

    ranks: dict[str, int]
    n_train: int
    budget_samples: int
    kind: Literal["probe", "final"]
    lr_scale: dict[str, float] | None = None
    adapter: Literal["lora", "adalora"] = "lora"


@dataclass
class TrainResult:
    """Outcome of a run: the validation-loss curve and where the adapter went.

    ``curve`` lists ``(samples_seen, val_loss)`` from ``samples_seen = 0``
    (before training) to the end. A failed run has ``status = "failed"``, a
    ``reason``, the curve up to the failure, and no adapter.
    ``train_seconds`` is the time spent in optimizer steps (batch assembly,
    forward, backward, clipping, update); ``eval_seconds`` the time spent on
    validation loss; both are within ``wall_seconds``.
    """

    status: Literal["ok", "failed"]
    reason: str | None
    curve: list[tuple[int, float]]
    samples_seen: int
    final_val_loss: float | None
    wall_seconds: float
    trainable_params: int
    adapter_dir: str | None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    steps: int = 0
    resumed_from: int | None = None


@dataclass
class TrainHooks:
    """Callbacks into a run, for tests and tools; the training itself never needs them.

    ``after_step(samples_seen, model)`` runs after every optimizer step,
    before evaluation and checkpointing; an exception raised there stops the
    run as an interruption would.
    """

    after_step: Callable[[int, nn.Module], None] | None = field(default=None)


def validate_spec(cfg: MarsConfig, spec: RunSpec, n_available: int) -> RunSpec:
    """Check a run's inputs before anything is loaded; raise ``ValueError`` naming the bad field."""
    ranks = validate_ranks(cfg, spec.ranks)
    if spec.kind not in ("probe", "final"):
        raise ValueError(f"RunSpec.kind={spec.kind!r}; expected 'probe' or 'final'")
    if isinstance(spec.n_train, bool) or not isinstance(spec.n_train, int) or not 1 <= spec.n_train <= n_available:
        raise ValueError(
            f"RunSpec.n_train={spec.n_train!r} must be an integer between 1 and the {n_available} examples of the train split"
        )
    if isinstance(spec.budget_samples, bool) or not isinstance(spec.budget_samples, int) or spec.budget_samples < 1:
        raise ValueError(f"RunSpec.budget_samples={spec.budget_samples!r} must be an integer >= 1")

    if spec.adapter not in ADAPTERS:
        raise ValueError(f"RunSpec.adapter={spec.adapter!r}; expected one of {list(ADAPTERS)}")
    if spec.adapter == "adalora":
        adalora_target_rank(ranks)

    lr_scale = dict(spec.lr_scale or {})
    allowed = [*cfg.lora.modules, PROJECTOR]
    for module, scale in lr_scale.items():
        if module not in allowed:
            raise ValueError(f"RunSpec.lr_scale has unknown module {module!r}; allowed keys are {allowed}")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not scale > 0:
            raise ValueError(f"RunSpec.lr_scale[{module!r}]={scale!r} must be a number > 0")
    return RunSpec(ranks=ranks, n_train=spec.n_train, budget_samples=spec.budget_samples, kind=spec.kind,
                   lr_scale={m: float(s) for m, s in lr_scale.items()} or None, adapter=spec.adapter)
