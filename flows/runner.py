"""Run the search flow in this process, sized by the configuration."""

from __future__ import annotations

from typing import Any

from prefect.task_runners import ThreadPoolTaskRunner

from flows.search import mars_search
from mars_core.config import MarsConfig


def run_search(cfg: MarsConfig, run_name: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``mars-search`` with probes in parallel up to ``runtime.probe_parallelism``."""
    runner = ThreadPoolTaskRunner(max_workers=cfg.runtime.probe_parallelism)
    flow = mars_search.with_options(task_runner=runner)
    return flow(config=cfg.model_dump(mode="json"), run_name=run_name, progress=progress)
