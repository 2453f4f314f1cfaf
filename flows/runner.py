"""Run the search flow in this process, sized by the configuration."""

from __future__ import annotations

from typing import Any

from flows.search import mars_search
from mars_core.config import MarsConfig


def run_search(cfg: MarsConfig, run_name: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``mars-search`` in this process; its probes go to the runner that ``runtime.runner`` selects."""
    return mars_search(config=cfg.model_dump(mode="json"), run_name=run_name, progress=progress)
