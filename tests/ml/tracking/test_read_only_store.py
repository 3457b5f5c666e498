"""A read-only tracking database (or its folder) is a clear error naming the file and the fix,
before any run starts: not a SQLAlchemy traceback ending in `attempt to write a readonly database`.

Read-only is made for real: `chattr +i` (immutable: even root cannot write) when the tests run
as root, else plain permissions."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
from support.helpers import REPO_ROOT, mlflow_env

from ml.settings import ReadOnlyStoreError, check_store_writable


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` (file or folder) unwritable for this process, whoever it runs as."""
    if os.geteuid() == 0:
        if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode:
            pytest.skip("running as root without chattr +i support: cannot make a file read-only for root")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        return
    mode = path.stat().st_mode
    path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        yield
    finally:
        path.chmod(mode)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """An existing SQLite tracking store with one experiment."""
    from mlflow import MlflowClient

    db = tmp_path / "track" / "mlflow.db"
    db.parent.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{db}").create_experiment("existing")
    return db


def test_read_only_database_file_is_named_with_the_fix(store: Path) -> None:
    with read_only(store):
        with pytest.raises(ReadOnlyStoreError) as info:
            check_store_writable(f"sqlite:///{store}")
    message = str(info.value)
    assert f"the tracking database {store} is read-only" in message
    assert f"chmod u+w {store}" in message and "MLFLOW_TRACKING_URI" in message


def test_read_only_folder_is_named_because_sqlite_writes_its_journal_there(store: Path) -> None:
    with read_only(store.parent):
        with pytest.raises(ReadOnlyStoreError, match=f"the folder {store.parent} of the tracking database"):
            check_store_writable(f"sqlite:///{store}")
    check_store_writable(f"sqlite:///{store}")                          # writable again: no error
    check_store_writable("postgresql://u@h/db")                         # not SQLite: nothing to check


def test_cli_train_on_a_read_only_tracking_database_exits_2_with_the_file_and_the_fix(
        store: Path, tiny_data_dir: Path, tmp_path: Path) -> None:
    env = mlflow_env(tmp_path, MLFLOW_TRACKING_URI=f"sqlite:///{store}")
    with read_only(store):
        proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "train", "--data", str(tiny_data_dir),
                               "--set", "training.epochs=1"], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"the tracking database {store} is read-only" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr and "sqlalchemy" not in proc.stderr.lower()


def test_registry_write_on_a_read_only_audit_database_is_named(tmp_path: Path, monkeypatch) -> None:
    from registry.audit import AuditLog

    audit_db = tmp_path / "audit" / "towerops_audit.db"
    audit_db.parent.mkdir()
    log = AuditLog(f"sqlite:///{audit_db}")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with read_only(audit_db):
        with pytest.raises(ReadOnlyStoreError, match=f"the audit database {audit_db} is read-only.*TOWEROPS_AUDIT_DB_URL"):
            with log.locked("two_tower"):
                pass
