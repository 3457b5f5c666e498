"""Every TOWEROPS_* environment variable, read in one place (pydantic-settings)."""

from __future__ import annotations

import os
from pathlib import Path


def ensure_tracking_uri() -> str:
    """Use $MLFLOW_TRACKING_URI, else the embedded default: SQLite `mlflow.db` + local `mlruns/`."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path('mlflow.db').resolve()}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    return uri
