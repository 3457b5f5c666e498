"""A real `mlflow server` (through `towerops server`) on a free loopback port.

`mlflow_server`: PostgreSQL backend in a fresh database (`pg_dsn`), artifacts proxied to
a tmp folder, one worker, webhooks ready for loopback receivers (fixed encryption key,
http + private IPs allowed). `mlflow_server_factory(...)` makes variants (auth, S3
destination, another database). Each server has `.url`, `.dsn`, `.artifacts`, `.port`,
`.start()`, `.stop()`, `.kill()` (SIGKILL to the process group) and `.client_env()`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from support.helpers import REPO_ROOT, PortClash, candidate_port, is_port_clash

# A fixed Fernet key for tests only (MLflow encrypts webhook secrets with it).
TEST_WEBHOOK_KEY = "dG93ZXJvcHMtdGVzdC13ZWJob29rLWtleS0zMmJ5dGU="


class MlflowServer:
    """One `towerops server` process group; restartable on the same database and port."""

    def __init__(self, dsn: str, artifacts: str, state_dir: Path, port: int | None = None,
                 extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.dsn = dsn
        self.artifacts = artifacts
        self.state_dir = state_dir
        self._pick_port = port is None  # until the first start succeeds: a clash moves to a fresh port
        self.port = port or candidate_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.webhook_key = TEST_WEBHOOK_KEY
        self.extra_args = tuple(extra_args)
        self.extra_env = dict(env or {})
        self.log_path = state_dir / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> "MlflowServer":
        """Start and wait for /health; a first start whose port was taken retries on a fresh one."""
        for _ in range(5):
            try:
                self._start_once(timeout)
                self._pick_port = False
                return self
            except PortClash:
                if not self._pick_port:
                    raise
                self.port = candidate_port()
                self.url = f"http://127.0.0.1:{self.port}"
        raise RuntimeError(f"towerops server found no free port in 5 tries:\n{self.log_tail()}")

    def _start_once(self, timeout: float) -> "MlflowServer":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = {**os.environ, "TOWEROPS_WEBHOOK_ENCRYPTION_KEY": self.webhook_key, **self.extra_env}
        env.pop("MLFLOW_TRACKING_URI", None)
        argv = [sys.executable, "-m", "pipelines.cli", "server", "--dsn", self.dsn, "--port", str(self.port),
                "--artifacts-destination", self.artifacts, "--workers", "1", "--state-dir", str(self.state_dir),
                "--allow-loopback-webhooks", *self.extra_args]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                if is_port_clash(self.log_path.read_bytes()[offset:].decode(errors="replace")):
                    raise PortClash(f"port {self.port} taken:\n{self.log_tail()}")
                raise RuntimeError(f"towerops server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.kill()
        raise TimeoutError(f"mlflow server not healthy on {self.url} after {timeout}s:\n{self.log_tail()}")

    def _signal(self, sig: int, wait: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        """Graceful stop (SIGTERM to the group, SIGKILL after 20 s)."""
        self._signal(signal.SIGTERM, 20)

    def kill(self) -> None:
        """Crash: SIGKILL to the whole process group (server and workers)."""
        self._signal(signal.SIGKILL, 30)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def client_env(self, **extra: str) -> dict[str, str]:
        """Environment for a client subprocess: this server, short HTTP retries, TF quiet."""
        env = {**os.environ, "MLFLOW_TRACKING_URI": self.url, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
               "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
               "TF_CPP_MIN_LOG_LEVEL": "2", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        for key in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            env.pop(key, None)
        env.update(extra)
        return env


@pytest.fixture
def mlflow_server_factory(pg_dsn: str, tmp_path: Path) -> Iterator[Callable[..., MlflowServer]]:
    """Start servers with options; all are killed at teardown. Default database: `pg_dsn`."""
    servers: list[MlflowServer] = []

    def make(dsn: str | None = None, artifacts: str | None = None, extra_args: tuple[str, ...] = (),
             env: dict[str, str] | None = None, start: bool = True) -> MlflowServer:
        n = len(servers)
        server = MlflowServer(dsn or pg_dsn, artifacts or str(tmp_path / f"artifacts{n}"),
                              tmp_path / f"server{n}", extra_args=extra_args, env=env)
        servers.append(server)
        return server.start() if start else server

    yield make
    for server in servers:
        server.kill()


@pytest.fixture
def mlflow_server(mlflow_server_factory: Callable[..., MlflowServer]) -> MlflowServer:
    """A running PostgreSQL-backed `mlflow server` on loopback with a tmp artifacts folder."""
    return mlflow_server_factory()


@pytest.fixture(scope="session")
def tiny_data_dir(tiny_synth, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_synth` written as a CSV folder (for `mlflow run ... -P data=`)."""
    from ml.data.synthetic import write_synthetic

    out = tmp_path_factory.mktemp("tiny_data")
    write_synthetic(tiny_synth, out)
    return out


# ----------------------------------------------------------------- towerops serve
def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (started with start_new_session), SIGKILL if it lingers."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def start_scoring_server(argv_for_port: Callable[[int], list[str]], env: dict[str, str],
                         log_path: Path, port: int, timeout: float = 240.0) -> tuple[subprocess.Popen, str]:
    """`towerops serve ...` (argv for `port`) once /ping answers; PortClash when the port was taken meanwhile
    (for `start_on_free_port`); the server's log tail when it exits or never answers."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv_for_port(port), cwd=REPO_ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        if proc.poll() is not None:
            text = log_path.read_text(errors="replace")
            if is_port_clash(text):
                raise PortClash(f"port {port} taken")
            raise RuntimeError(f"server exited: {text[-3000:]}")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if time.time() > deadline:
            stop_process_group(proc)
            raise TimeoutError(f"no /ping after {timeout:.0f}s: {log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
