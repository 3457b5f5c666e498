"""Shared fixtures: a real PostgreSQL for integration tests, tiny datasets, isolated logs.

PostgreSQL comes from, in order: $TOWEROPS_TEST_PG_DSN, a server at 127.0.0.1:5432
(user postgres, trust auth, as on CI), or a throwaway cluster started with
initdb/pg_ctl when those binaries exist. With none of these the session stops
with a message saying how to provide one; it never silently skips.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from support.helpers import PortClash, is_port_clash, start_on_free_port, wait_for_port  # noqa: F401

pytest_plugins = ["support.servers"]  # mlflow server and loopback-server fixtures

REPO_ROOT = Path(__file__).resolve().parents[1]


def _can_connect(dsn: str) -> bool:
    import psycopg2

    try:
        psycopg2.connect(dsn, connect_timeout=3).close()
        return True
    except Exception:
        return False


def _find_pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    return None


class _ThrowawayCluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="towerops-pg-"))
        initdb, pg_ctl = _find_pg_bin("initdb"), _find_pg_bin("pg_ctl")
        if not (initdb and pg_ctl):
            raise RuntimeError("initdb/pg_ctl not found")
        self.pg_ctl = pg_ctl
        env = dict(os.environ)
        run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            subprocess.run(["chown", "-R", "postgres", str(self.dir)], check=False)
            run_as = ["runuser", "-u", "postgres", "--"]
        subprocess.run(run_as + [initdb, "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust"],
                       check=True, capture_output=True, env=env)
        self.run_as = run_as

        def start(port: int) -> int:
            proc = subprocess.run(run_as + [pg_ctl, "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
                                            "-o", f"-p {port} -k {self.dir} -c listen_addresses=127.0.0.1", "start"],
                                  capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                log = (self.dir / "log").read_text(errors="replace") if (self.dir / "log").exists() else ""
                if is_port_clash(log + proc.stderr):
                    raise PortClash(f"port {port}: {proc.stderr.strip()}")
                raise RuntimeError(f"pg_ctl start failed: {proc.stderr.strip()}\n{log[-2000:]}")
            return port

        self.port = start_on_free_port(start)
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run(self.run_as + [self.pg_ctl, "-D", str(self.dir / "data"), "-m", "fast", "stop"],
                       check=False, capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_admin_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL server where we may create databases."""
    dsn = os.environ.get("TOWEROPS_TEST_PG_DSN")
    if dsn:
        if not _can_connect(dsn):
            pytest.exit(f"TOWEROPS_TEST_PG_DSN={dsn!r} is set but PostgreSQL does not answer there.", 2)
        yield dsn
        return
    default = "postgresql://postgres@127.0.0.1:5432/postgres"
    if _can_connect(default):
        yield default
        return
    try:
        cluster = _ThrowawayCluster()
    except Exception as exc:  # noqa: BLE001
        pytest.exit(
            "Integration tests need PostgreSQL: none answers at 127.0.0.1:5432 and a throwaway "
            f"cluster could not be started with initdb/pg_ctl ({exc}). Set TOWEROPS_TEST_PG_DSN to a "
            "server where the user may CREATE DATABASE, or install PostgreSQL (apt-get install postgresql).",
            2,
        )
    try:
        yield cluster.dsn
    finally:
        cluster.stop()


def _with_db(dsn: str, db: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture
def pg_dsn(pg_admin_dsn: str) -> Iterator[str]:
    """DSN of a fresh, empty database, dropped after the test."""
    import psycopg2

    name = f"towerops_test_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(pg_admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    conn.close()
    try:
        yield _with_db(pg_admin_dsn, name)
    finally:
        conn = psycopg2.connect(pg_admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


_MLFLOW_PROCESS_ENV = ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI",
                       "TOWEROPS_AUDIT_DB_URL",
                       # set by `towerops --config` / `--allow-local-audit` for the process and its children
                       "TOWEROPS_CONFIG", "TOWEROPS_AUDIT_ALLOW_LOCAL")


@pytest.fixture(scope="session", autouse=True)
def _session_logs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Log files of in-process code under the session's tmp dir, bound the way an entry point
    binds them (`configure_logging`), before any test runs: nothing lands in the checkout's logs/."""
    from ml.logs import configure_logging

    logs = tmp_path_factory.getbasetemp() / "logs"
    saved = os.environ.get("TOWEROPS_LOG_DIR")
    os.environ["TOWEROPS_LOG_DIR"] = str(logs)
    configure_logging(directory=logs)
    yield
    if saved is None:
        os.environ.pop("TOWEROPS_LOG_DIR", None)
    else:
        os.environ["TOWEROPS_LOG_DIR"] = saved


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Logs under the session's tmp dir; MLflow state that in-process calls put in
    os.environ (`mlflow.set_experiment` sets MLFLOW_EXPERIMENT_ID) does not leak into later tests."""
    base = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("TOWEROPS_LOG_DIR", str(base / "logs"))
    saved = {k: os.environ.get(k) for k in _MLFLOW_PROCESS_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


# ----------------------------------------------------------------- a clean checkout
# What the app writes relative to its working directory by default (logs, tracking store,
# workspaces, deployments, state). After the session none of these may be new or changed in
# the checkout, nor any new file at its top level: tests write under tmp paths only.
_WRITTEN_BY_DEFAULT = ("logs", "mlruns", "mlartifacts", "mlflow.db", "monitoring_workspace", "evidently_workspace",
                       "deployments", ".towerops", "data", "models", "outputs", "best_config.json",
                       "towerops_audit.db", ".hypothesis")


def _checkout_state() -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file under the default output paths, and the names of top-level files."""
    state: dict[str, tuple[int, int]] = {}
    for name in _WRITTEN_BY_DEFAULT:
        root = REPO_ROOT / name
        for path in [root] if root.is_file() else (root.rglob("*") if root.is_dir() else []):
            if path.is_file():
                st = path.stat()
                state[str(path.relative_to(REPO_ROOT))] = (st.st_mtime_ns, st.st_size)
    for path in REPO_ROOT.iterdir():
        if path.is_file():
            state.setdefault(path.name, (0, 0))
    return state


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_CHECKOUT_KEY] = _checkout_state()
    factory = getattr(session.config, "_tmp_path_factory", None)  # hypothesis' example database, not ./.hypothesis
    base = factory.getbasetemp() if factory is not None else Path(tempfile.mkdtemp(prefix="towerops-tests-"))
    os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", str(base / "hypothesis"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    before = session.config.stash.get(_CHECKOUT_KEY, None)
    if before is None:
        return
    after = _checkout_state()
    dirty = sorted(p for p, v in after.items() if before.get(p) != v)
    if dirty:
        shown = "\n  ".join(dirty[:20]) + (f"\n  ... and {len(dirty) - 20} more" if len(dirty) > 20 else "")
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = (f"the tests wrote into the checkout ({REPO_ROOT}); every test must write under tmp paths "
                   f"(TOWEROPS_LOG_DIR, MLFLOW_TRACKING_URI, workspace/deploy folders):\n  {shown}")
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_CHECKOUT_KEY = pytest.StashKey[dict]()


# ----------------------------------------------------------------- markers
# Fixtures that train a model: a test using one (directly or through another fixture) is `slow`,
# like a test that trains on its own (those carry the marker themselves).
TRAINING_FIXTURES = frozenset({"tiny_model_dir", "logged_model", "registry_env"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if TRAINING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


# ----------------------------------------------------------------- tiny models
TINY_CONFIG = {
    "model": {"user_embedding_dim": 32, "item_embedding_dim": 32, "hidden_units": [64, 32], "dropout_rate": 0.1,
              "l2_regularization": 0.0001},
    "training": {"batch_size": 128, "epochs": 3, "patience": 2, "seed": 7},
    "features": {"text_dim": 16},
}


@pytest.fixture
def tiny_config() -> dict:
    """A fresh copy of TINY_CONFIG (small dims, 3 epochs) to modify per test."""
    import copy

    return copy.deepcopy(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_synth():
    """A small synthetic dataset (300 users, 200 items, 6,000 swipes), fixed seed."""
    from ml.data.synthetic import generate_synthetic

    return generate_synthetic(n_users=300, n_items=200, n_interactions=6000, seed=11)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_synth, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model bundle trained once per session on `tiny_synth` with TINY_CONFIG (no MLflow)."""
    from ml.training.trainer import create_standard_trainer

    out = tmp_path_factory.mktemp("tiny_model")
    create_standard_trainer(model_dir=out, config=TINY_CONFIG).train(dataset=tiny_synth.dataset)
    return out


@pytest.fixture(autouse=True)
def _towerops_logs_reach_caplog(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """`configure_logging` stops towerops loggers propagating to the root (no double lines on a
    terminal), so caplog's root handler would miss them once any test configured logging."""
    import logging

    base = logging.getLogger("towerops")
    base.addHandler(caplog.handler)
    try:
        yield
    finally:
        base.removeHandler(caplog.handler)
