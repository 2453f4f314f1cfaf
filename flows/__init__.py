"""Prefect orchestration and MLflow tracking for MARS; the method itself lives in ``mars_core``."""

import os

# MARS runs offline by default: no usage telemetry from MLflow or Prefect. These
# are read when those packages are imported, so they are set before any of them.
# Prefect's usage ping also writes to its SQLite database while the local
# server migrates it, which fails with "database is locked".
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
