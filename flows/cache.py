"""Content-derived cache keys for the pipeline's tasks.

A key combines the stage name, the content it depends on (dataset and base
model fingerprints, the stage's configuration) and the stage's code version:
a hash of the source files of the library packages the stage runs. Editing
the training loop therefore retrains probes, while editing the README or
the CLI does not.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import mars_core

_LIBRARY_ROOT = Path(mars_core.__file__).resolve().parent

# Which library packages each stage's result depends on.
STAGE_CODE = {
    "dataset": ("data", "config.py"),
    "base_model": ("model", "data", "config.py"),
    "probe": ("model", "train", "data", "search", "probes.py", "config.py"),
    "law_t": ("search", "probes.py", "config.py"),
    "law_p": ("search", "config.py"),
    "final": ("model", "train", "data", "config.py"),
    "evaluation": ("model", "train", "data", "config.py"),
}


@functools.cache
def code_version(stage: str) -> str:
    """Hash of the source files the stage's result depends on."""
    digest = hashlib.sha256()
    for part in STAGE_CODE[stage]:
        path = _LIBRARY_ROOT / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(_LIBRARY_ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


def cache_key(stage: str, **content: Any) -> str:
    """Key for a stage's result from the content it depends on and its code version."""
    blob = json.dumps(content, sort_keys=True, default=str).encode()
    return f"{stage}-{code_version(stage)}-{hashlib.sha256(blob).hexdigest()[:24]}"
