"""Helpers importable from any test module (tests/ is on sys.path via pytest's rootdir conftest)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def mlflow_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for a subprocess tracking to SQLite + artifacts inside tmp_path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID")}
    env.update({
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TOWEROPS_LOG_DIR": str(tmp_path / "logs"),
        "TOWEROPS_DEPLOY_DIR": str(tmp_path / "deployments"),
        "PATH": f"{Path(os.sys.executable).parent}:{env.get('PATH', '')}",
        "PYTHONPATH": f"{REPO_ROOT}:{env.get('PYTHONPATH', '')}",
    })
    env.update(extra)
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0, host: str = "127.0.0.1") -> None:
    import socket
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
