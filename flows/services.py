"""Local state of Prefect and MLflow under the work directory.

With no ``PREFECT_API_URL``, Prefect starts a temporary local server whose
database lives under the work directory; with no ``MLFLOW_TRACKING_URI``,
MLflow writes to SQLite there too. Nothing goes to the home directory.

Prefect reads its settings when it is first imported, so
:func:`configure_services` must run before any ``import prefect``.
"""

from __future__ import annotations

import os
from pathlib import Path


def configure_services(workdir: Path) -> dict[str, str]:
    """Point Prefect (and its result cache) at ``workdir`` unless a server is configured.

    Returns the environment settings applied, for the log and the summary.
    """
    workdir = workdir.resolve()
    prefect_home = workdir / "prefect"
    settings = {
        # Task results are what the cache returns on a rerun, so they must persist.
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_LOCAL_STORAGE_PATH": str(prefect_home / "results"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(prefect_home / "results"),
    }
    if not os.environ.get("PREFECT_API_URL"):
        settings["PREFECT_HOME"] = str(prefect_home)
        settings["PREFECT_SERVER_ALLOW_EPHEMERAL_MODE"] = "true"
        # Prefect waits 20 s for the temporary server by default; on a busy
        # 2-core machine its start (migrations included) was seen to take longer.
        settings["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
        settings["PREFECT_API_DATABASE_CONNECTION_URL"] = f"sqlite+aiosqlite:///{prefect_home / 'prefect.db'}"
    for key, value in settings.items():
        os.environ.setdefault(key, value)
    prefect_home.mkdir(parents=True, exist_ok=True)
    # Everything MARS loads is local; a hub id only works where the user set up a network.
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    return {key: os.environ[key] for key in settings}


def quiet_libraries() -> None:
    """Hide transformers' per-load progress bars and deprecation notices during a run.

    Every probe loads the base model, so each would print a "Loading weights"
    bar and the same warnings; the stage progress bars of `mars` stay.
    """
    import warnings

    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.")
