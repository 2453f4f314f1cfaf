"""Training and evaluation: one routine for probes and final runs."""

from mars_core.train.evaluation import evaluate, normalize_answer
from mars_core.train.loop import train_run
from mars_core.train.spec import RunSpec, TrainHooks, TrainResult

__all__ = ["RunSpec", "TrainHooks", "TrainResult", "evaluate", "normalize_answer", "train_run"]
