"""Shared fixtures: one demo dataset and one small demo base model per test session.

Both are built once in a session-wide temporary folder, because the model
and training tests all need a real dataset and a real (if briefly
pretrained) model, and building them takes seconds.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# pytest puts tests/ on sys.path to import this file, and tests/mars_core
# (folders without __init__.py) would then be imported as a namespace
# package in place of the real mars_core. A regular package anywhere on the
# path wins over a namespace one, so the repository root fixes the lookup.
_REPOSITORY_ROOT = str(Path(__file__).resolve().parents[1])
if _REPOSITORY_ROOT not in sys.path:
    sys.path.insert(0, _REPOSITORY_ROOT)

# Nothing in the test suite may reach the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Prefect reads its settings when first imported, which happens while test
# modules are collected: point its home, database and result cache at a
# folder of this session before that, so no test writes to ~/.prefect.
if not os.environ.get("PREFECT_API_URL"):
    from flows.services import configure_services

    _PREFECT_ROOT = Path(tempfile.mkdtemp(prefix="mars-tests-"))
    configure_services(_PREFECT_ROOT)
    atexit.register(shutil.rmtree, _PREFECT_ROOT, ignore_errors=True)



def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``torchvision`` where torchvision cannot be imported, saying why and where they run."""
    from mars_core.model.base import torchvision_problem

    problem = torchvision_problem()
    if problem is None:
        return
    skip = pytest.mark.skip(
        reason=f"needs torchvision, and {problem}; `make test-torchvision` runs it in a second environment"
    )
    for item in items:
        if item.get_closest_marker("torchvision"):
            item.add_marker(skip)


# The architecture of the default demo with a short pretraining: enough for
# the model to tell digits apart, cheap enough to build once per session.
SMALL_PRETRAINING_STEPS = 120


@pytest.fixture(scope="session")
def session_workdir(tmp_path_factory) -> Path:
    """A folder shared by every test of the session, for datasets and models."""
    return tmp_path_factory.mktemp("mars-work")


@pytest.fixture(scope="session")
def demo_dataset(session_workdir):
    """The digits VQA demo dataset with default settings."""
    from mars_core.config import DataConfig
    from mars_core.data import prepare_dataset

    return prepare_dataset(DataConfig(), session_workdir / "datasets")


@pytest.fixture(scope="session")
def small_recipe():
    """The default demo architecture with a short pretraining."""
    from mars_core.model.demo import DemoRecipe

    return DemoRecipe(steps=SMALL_PRETRAINING_STEPS)


@pytest.fixture(scope="session")
def small_base_model(session_workdir, small_recipe):
    """A demo base model built from ``small_recipe`` (a ``BaseModelInfo``)."""
    from mars_core.config import ModelConfig
    from mars_core.model import prepare_base_model

    return prepare_base_model(ModelConfig(), session_workdir / "models", recipe=small_recipe)


@pytest.fixture
def engine_config():
    """A configuration with short runs: small batches, frequent evaluation, a small validation subset."""
    from mars_core.config import MarsConfig

    return MarsConfig.model_validate(
        {
            "train": {
                "batch_size": 16,
                "learning_rate": 3e-3,
                "warmup_samples": 32,
                "eval_every": 64,
                "val_subset": 48,
                "eval_batch_size": 48,
            },
            "final": {"checkpoint_every": 64, "schedule": "cosine"},
        }
    )
