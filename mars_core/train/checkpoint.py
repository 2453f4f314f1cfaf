"""Resumable checkpoints of final runs, written atomically.

A checkpoint is one file, ``<out_dir>/checkpoint/state.pt``, holding the
trainable weights, the optimizer and scheduler states, torch's global
random state (LoRA dropout draws from it), the samples seen (the data
position: the batch order is a function of the seed and this position),
the curve so far, and a key of everything that defines the run. It is
written to a temporary file in the same folder and renamed over the old
one, so a crash leaves either the previous checkpoint or the new one.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import torch

CHECKPOINT_FILE = "state.pt"


def checkpoint_path(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoint" / CHECKPOINT_FILE


def save_checkpoint(out_dir: Path, state: dict) -> Path:
    """Write ``state`` atomically to the run's checkpoint file and return its path."""
    path = checkpoint_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".tmp-{uuid.uuid4().hex}-{CHECKPOINT_FILE}")
    try:
        torch.save(state, staging)
        os.replace(staging, path)
    finally:
        if staging.exists():
            staging.unlink()
    return path


def load_checkpoint(out_dir: Path) -> dict | None:
    """Load the run's checkpoint, or return None when it has none."""
    path = checkpoint_path(out_dir)
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def capture_rng() -> dict:
    """Torch's global random state (CPU, and CUDA when present)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
