"""Run the search flow in this process, sized by the configuration."""

from __future__ import annotations

from typing import Any

from flows.runners import make_task_runner
from flows.search import mars_search
from mars_core.config import MarsConfig


def run_search(cfg: MarsConfig, run_name: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``mars-search`` with the task runner of ``runtime.runner``, probes in parallel up to ``runtime.probe_parallelism``."""
    flow = mars_search.with_options(task_runner=make_task_runner(cfg))
    return flow(config=cfg.model_dump(mode="json"), run_name=run_name, progress=progress)
