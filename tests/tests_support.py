"""Helpers importable from any test module (tests/ is on sys.path via pytest's rootdir conftest)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def mlflow_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess tracking to SQLite + artifacts inside tmp_path."""
    env = dict(os.environ)
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TOWEROPS_LOG_DIR": str(tmp_path / "logs"),
        "PATH": f"{Path(os.sys.executable).parent}:{env.get('PATH', '')}",
        "PYTHONPATH": f"{REPO_ROOT}:{env.get('PYTHONPATH', '')}",
    })
    env.update(extra)
    return env
