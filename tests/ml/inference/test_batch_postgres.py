"""Batch inference published to a real PostgreSQL: tables, views, atomic switch, failures that publish nothing."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import psycopg2
import pyarrow.parquet as pq
import pytest
from support.helpers import REPO_ROOT, mlflow_env, refused_port

from ml.inference.batch.parquet import current_version
from ml.inference.batch.postgres import PublishLockTimeout
from ml.inference.batch.run import run_batch

pytestmark = pytest.mark.integration


def _query(dsn: str, sql: str, args: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def _tables(dsn: str) -> set[str]:
    return {r[0] for r in _query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def test_publish_writes_versioned_tables_behind_views(tiny_model_dir, pg_dsn, tmp_path) -> None:
    res = run_batch(tiny_model_dir, tmp_path / "out", top_k=5, dsn=pg_dsn)
    has_vector = _query(pg_dsn, "SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")[0][0] > 0
    assert res.postgres.vector_type == ("vector" if has_vector else "float4[]")
    views = {r[0] for r in _query(pg_dsn, "SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert views == {"towerops_user_embeddings", "towerops_item_embeddings", "towerops_recommendations"}
    assert set(res.postgres.tables.values()) <= _tables(pg_dsn)

    parquet = pq.read_table(res.version_dir / "recommendations.parquet").to_pandas().set_index("user_id")
    rows = _query(pg_dsn, "SELECT user_id, items, scores FROM towerops_recommendations")
    assert len(rows) == len(parquet) == res.n_users
    for user, items, scores in rows[:50]:
        assert items == list(parquet.loc[user, "items"])
        np.testing.assert_array_equal(np.float32(scores), np.float32(parquet.loc[user, "scores"]))
    items = pq.read_table(res.version_dir / "item_embeddings.parquet")
    want = dict(zip(items.column("item_id").to_pylist(), items.column("embedding").to_pylist()))
    cast = "embedding::float4[]" if has_vector else "embedding"
    got = _query(pg_dsn, f"SELECT item_id, {cast} FROM towerops_item_embeddings")
    assert len(got) == len(want)
    for item, emb in got:
        np.testing.assert_array_equal(np.float32(emb), np.float32(want[item]))  # binary COPY: bit-exact
    (reg,) = _query(pg_dsn, "SELECT version, n_users, n_items, top_k, is_current FROM towerops_batch_versions")
    assert reg == (res.version, res.n_users, res.n_items, 5, True)


def test_readers_see_the_old_or_the_new_version_never_a_mix(tiny_model_dir, pg_dsn, tmp_path) -> None:
    out = tmp_path / "out"
    run_batch(tiny_model_dir, out, top_k=3, dsn=pg_dsn)
    seen: list[tuple] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def reader() -> None:
        conn = psycopg2.connect(pg_dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while True:
                    finished = done.is_set()
                    # one statement reads the recommendations view and the registry together
                    cur.execute("SELECT count(*), min(array_length(items, 1)), max(array_length(items, 1)), "
                                "(SELECT top_k FROM towerops_batch_versions WHERE is_current) "
                                "FROM towerops_recommendations")
                    seen.append(cur.fetchone())
                    if finished:
                        return
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            conn.close()

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        deadline = time.time() + 60
        while not seen and not errors and time.time() < deadline:  # the reader has read the old version once
            time.sleep(0.01)
        second = run_batch(tiny_model_dir, out, top_k=5, dsn=pg_dsn)
    finally:
        done.set()
        thread.join(30)
    assert not errors, errors
    n = second.n_users
    assert set(seen) <= {(n, 3, 3, 3), (n, 5, 5, 5)}, set(seen)
    assert seen[0] == (n, 3, 3, 3) and seen[-1] == (n, 5, 5, 5)


def _wait_for_blocked_publisher(admin_dsn: str, timeout: float = 60.0) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = _query(admin_dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = 'towerops-batch' "
                                 "AND wait_event_type = 'Lock'")
        if rows:
            return rows[0][0]
        time.sleep(0.1)
    raise TimeoutError("the publisher never waited on the views' lock")


def test_publisher_killed_before_the_switch_publishes_nothing(tiny_model_dir, pg_dsn, tmp_path) -> None:
    out = tmp_path / "out"
    first = run_batch(tiny_model_dir, out, top_k=3, dsn=pg_dsn)
    before = _tables(pg_dsn)
    # a long-running reader transaction holds the views; the publisher loads its tables, then waits
    blocker = psycopg2.connect(pg_dsn)
    cur = blocker.cursor()
    cur.execute("SELECT count(*) FROM towerops_user_embeddings")
    failure: list[BaseException] = []

    def publish() -> None:
        try:
            run_batch(tiny_model_dir, out, top_k=5, dsn=pg_dsn, lock_timeout_s=60, switch_retries=0)
        except BaseException as exc:  # noqa: BLE001
            failure.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        pid = _wait_for_blocked_publisher(pg_dsn)
        _query(pg_dsn, "SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(60)
    finally:
        blocker.rollback()
        blocker.close()
    assert len(failure) == 1 and isinstance(failure[0], ConnectionError)
    assert "nothing was published" in str(failure[0])
    assert _tables(pg_dsn) == before  # the new version's tables rolled back with the transaction
    assert _query(pg_dsn, "SELECT version FROM towerops_batch_versions WHERE is_current") == [(first.version,)]
    assert _query(pg_dsn, "SELECT min(array_length(items, 1)) FROM towerops_recommendations") == [(3,)]
    assert current_version(out) == first.version and [p.name for p in (out / "versions").iterdir()] == [first.version]


def test_views_held_too_long_fail_with_a_clear_error(tiny_model_dir, pg_dsn, tmp_path) -> None:
    out = tmp_path / "out"
    first = run_batch(tiny_model_dir, out, top_k=3, dsn=pg_dsn)
    blocker = psycopg2.connect(pg_dsn)
    try:
        blocker.cursor().execute("SELECT count(*) FROM towerops_recommendations")
        with pytest.raises(PublishLockTimeout, match="other sessions kept them locked through 2 tries"):
            run_batch(tiny_model_dir, out, top_k=5, dsn=pg_dsn, lock_timeout_s=0.3, switch_retries=1)
    finally:
        blocker.rollback()
        blocker.close()
    assert _query(pg_dsn, "SELECT version FROM towerops_batch_versions") == [(first.version,)]
    assert current_version(out) == first.version


def test_unreachable_database_leaves_no_version(tiny_model_dir, tmp_path) -> None:
    out = tmp_path / "out"
    with refused_port() as port, pytest.raises(ConnectionError, match="cannot connect to PostgreSQL for publishing"):
        run_batch(tiny_model_dir, out, dsn=f"postgresql://postgres@127.0.0.1:{port}/nope")
    assert current_version(out) is None and list((out / "versions").iterdir()) == []


@pytest.mark.slow
def test_batch_infer_entry_point(tiny_model_dir, pg_dsn, tmp_path) -> None:
    """`mlflow run . -e batch_infer` with a bundle folder and a DSN: files, tables and a tracked run."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "-e", "batch_infer", "--env-manager", "local",
           "--experiment-name", "batch", "-P", f"model={tiny_model_dir}", "-P", f"out={out}", "-P", "top_k=4"]
    env = mlflow_env(tmp_path, TOWEROPS_BATCH_DSN=pg_dsn)
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    version = current_version(out)
    assert version and _query(pg_dsn, "SELECT version, top_k FROM towerops_batch_versions") == [(version, 4)]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    (run,) = client.search_runs([client.get_experiment_by_name("batch").experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["towerops.batch_version"] == version
    assert run.data.metrics["n_users"] == 300 and run.data.metrics["users_per_min"] > 0
    assert all(pg_dsn not in v for v in run.data.params.values())  # the DSN came from the env, not a param

    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "batch-infer", "--model", str(tiny_model_dir),
                          "--out", str(out), "--top-k", "0"], cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "top_k=0 must be a positive integer" in bad.stderr
    assert current_version(out) == version
