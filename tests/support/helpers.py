"""Helpers importable from any test module (tests/ is on sys.path via pytest's rootdir conftest)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")

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


# ------------------------------------------------------------------ ports, without a race
# A port the OS reports free is only a candidate: between closing the probe socket and the
# server's bind, another process may take it. So: in-process servers bind port 0 and report
# the port they got; a test that needs "nothing listens here" holds a bound, non-listening
# socket (`refused_port`); a server in a subprocess is started through `start_on_free_port`,
# which retries on a fresh candidate when the server reports the port taken (`PortClash`).

class PortClash(RuntimeError):
    """A server could not bind its port: another process took it first."""


_CLASH_MARKERS = ("address already in use", "errno 98", "eaddrinuse", "could not bind ipv4 address",
                  "could not create any tcp/ip sockets", "port is already in use", "connection in use")


def is_port_clash(text: str) -> bool:
    """Whether a server's output says its port was taken."""
    low = text.lower()
    return any(marker in low for marker in _CLASH_MARKERS)


def candidate_port() -> int:
    """A port the OS reported free a moment ago; use it through `start_on_free_port` only."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_on_free_port(start: Callable[[int], T], attempts: int = 5) -> T:
    """`start(port)` on a fresh candidate port; again on another if it raises PortClash."""
    last: PortClash | None = None
    for _ in range(attempts):
        try:
            return start(candidate_port())
        except PortClash as exc:
            last = exc
    raise RuntimeError(f"no free port after {attempts} tries: {last}")


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port where connections are refused for as long as the block runs: it is bound
    (so no other process can listen there) but not listening."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


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
