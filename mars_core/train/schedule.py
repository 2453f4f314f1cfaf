"""Learning-rate schedules: linear warm-up, then constant, cosine or linear decay.

Probes always hold the rate constant after warm-up, because a decaying
schedule would make every curve flatten when the schedule ends and the
convergence time would measure the schedule instead of the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupSchedule:
    """Learning-rate factor per optimizer step, for ``torch.optim.lr_scheduler.LambdaLR``.

    Step ``s < warmup_steps`` gets ``(s + 1) / warmup_steps``. After warm-up
    the factor is 1 (``constant``) or decays to 0 at ``total_steps``
    (``cosine``, ``linear``).
    """

    warmup_steps: int
    total_steps: int
    kind: str = "constant"

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "linear":
            return 1.0 - progress
        raise ValueError(f"unknown schedule {self.kind!r}; expected constant, cosine or linear")
