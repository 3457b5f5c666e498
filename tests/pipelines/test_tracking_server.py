"""`towerops server` against real PostgreSQL: preflight errors, all-or-nothing migrations,
`mlflow run . -e train` through the server read back over REST, S3 (moto) artifacts, basic auth."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import requests
from support.helpers import REPO_ROOT, refused_port

pytestmark = pytest.mark.integration


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`towerops ...` in a fresh temp folder: its defaults (mlartifacts/, .towerops/server) land there."""
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=tempfile.mkdtemp(prefix="towerops-cli-"),
                          capture_output=True, text=True, timeout=timeout, env=env)


def _tables(dsn: str) -> set[str]:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {r[0] for r in cur.fetchall()}
    finally:
        conn.close()


# ------------------------------------------------------------------ preflight
@pytest.mark.parametrize("case", ["unreachable", "unknown_role", "missing_db", "bad_scheme", "no_db_name"])
def test_bad_backend_store_is_a_clear_error_and_exit_2(case: str, pg_admin_dsn: str) -> None:
    admin = urlsplit(pg_admin_dsn)
    with refused_port() as closed:  # bound, not listening: nothing answers there, nobody else can listen
        dsn = {
            "unreachable": f"postgresql://mlflow:sekrit-pw@127.0.0.1:{closed}/mlflow",
            "unknown_role": urlunsplit(admin._replace(netloc=f"no_such_role:sekrit-pw@{admin.hostname}:{admin.port or 5432}")),
            "missing_db": urlunsplit(admin._replace(path="/towerops_no_such_db")),
            "bad_scheme": "mysql://mlflow:sekrit-pw@127.0.0.1/mlflow",
            "no_db_name": "postgresql://mlflow:sekrit-pw@127.0.0.1:5432",
        }[case]
        proc = _cli("server", "--dsn", dsn, "--check-only")
        expected = {
            "unreachable": "cannot connect to PostgreSQL at 127.0.0.1",
            "unknown_role": "check the user and password",
            "missing_db": "createdb",
            "bad_scheme": "must start with postgresql://",
            "no_db_name": "has no database name",
        }[case]
        out = " ".join(proc.stderr.split())
        assert proc.returncode == 2, proc.stderr
        assert out.startswith("error:") and expected in out
        assert "sekrit-pw" not in proc.stderr + proc.stdout
        assert "Traceback" not in proc.stderr


def test_dsn_from_environment_and_missing_dsn(pg_dsn: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TOWEROPS_TRACKING_DSN", "MLFLOW_BACKEND_STORE_URI")}
    missing = _cli("server", "--check-only", env=env)
    assert missing.returncode == 2 and "TOWEROPS_TRACKING_DSN" in missing.stderr
    # --check-only never migrates: an empty database is reported, not changed
    unmigrated = _cli("server", "--check-only", "--state-dir", str(tmp_path / "state"),
                      "--artifacts-destination", str(tmp_path / "art"), env={**env, "TOWEROPS_TRACKING_DSN": pg_dsn})
    assert unmigrated.returncode == 2 and "towerops server migrate" in " ".join(unmigrated.stderr.split())
    assert _tables(pg_dsn) == set()


# ------------------------------------------------------------------ migrations
def test_migrate_builds_the_whole_schema_once(pg_dsn: str) -> None:
    from mlflow.store.db.utils import _get_latest_schema_revision

    first = _cli("server", "migrate", "--dsn", pg_dsn)
    assert first.returncode == 0, first.stderr
    assert "empty ->" in first.stderr
    tables = _tables(pg_dsn)
    assert {"experiments", "runs", "metrics", "params", "registered_models", "webhooks", "alembic_version"} <= tables
    conn = psycopg2.connect(pg_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        assert cur.fetchone()[0] == _get_latest_schema_revision()
    conn.close()
    again = _cli("server", "migrate", "--dsn", pg_dsn)
    assert again.returncode == 0 and "up to date" in again.stderr


def test_a_migration_failing_midway_leaves_nothing_behind(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fault injection: the 20th alembic step fails; the database must stay empty, then migrate cleanly."""
    import sqlalchemy

    import ml.tracking.server as server

    real_engine = server._engine
    steps = {"n": 0}

    def failing_engine(uri: str):
        engine = real_engine(uri)

        @sqlalchemy.event.listens_for(engine, "before_cursor_execute")
        def _fail(conn, cursor, statement, params, context, executemany):  # noqa: ANN001
            if statement.lstrip().upper().startswith("UPDATE ALEMBIC_VERSION"):
                steps["n"] += 1
                if steps["n"] == 20:
                    raise RuntimeError("injected failure in the middle of the migrations")

        return engine

    target = server.parse_dsn(pg_dsn)
    monkeypatch.setattr(server, "_engine", failing_engine)
    with pytest.raises(RuntimeError, match="injected"):
        server.migrate_tracking_db(target)
    assert steps["n"] == 20
    assert _tables(pg_dsn) == set(), "a failed migration must roll back every table it made"
    monkeypatch.setattr(server, "_engine", real_engine)
    result = server.migrate_tracking_db(target)
    assert result.created and result.before is None and "runs" in _tables(pg_dsn)


def test_half_initialised_database_is_refused(pg_dsn: str) -> None:
    conn = psycopg2.connect(pg_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE experiments (experiment_id integer primary key)")
    conn.close()
    proc = _cli("server", "migrate", "--dsn", pg_dsn)
    assert proc.returncode == 2
    assert "no alembic_version stamp" in " ".join(proc.stderr.split())
    assert _tables(pg_dsn) == {"experiments"}


def test_webhook_key_is_generated_once_private_and_env_wins(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    from ml.tracking.server import webhook_encryption_key

    key = webhook_encryption_key(tmp_path, env={})
    Fernet(key.encode())  # a valid Fernet key
    path = tmp_path / "webhook_encryption.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert webhook_encryption_key(tmp_path, env={}) == key
    assert webhook_encryption_key(tmp_path, env={"TOWEROPS_WEBHOOK_ENCRYPTION_KEY": "from-env"}) == "from-env"
    path.chmod(0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        webhook_encryption_key(tmp_path, env={})


# ------------------------------------------------------------------ mlflow run . -e train through the server
def _get(server, endpoint: str, **params) -> dict:
    resp = requests.get(f"{server.url}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.json()


@pytest.mark.slow
def test_mlflow_run_train_is_tracked_in_postgres(mlflow_server, tiny_data_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    proc = subprocess.run(
        ["mlflow", "run", ".", "-e", "train", "--env-manager", "local", "--experiment-name", "server-it",
         "-P", f"data={tiny_data_dir}", "-P", "epochs=2", "-P", "patience=5", "-P", "embedding_dim=32",
         "-P", "hidden_units=[64,32]", "-P", "batch_size=128", "-P", f"model_dir={model_dir}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
        env=mlflow_server.client_env(TOWEROPS_LOG_DIR=str(tmp_path / "logs")))
    assert proc.returncode == 0, proc.stderr[-4000:]

    exp = _get(mlflow_server, "experiments/get-by-name", experiment_name="server-it")["experiment"]
    runs = requests.post(f"{mlflow_server.url}/api/2.0/mlflow/runs/search", timeout=30,
                         json={"experiment_ids": [exp["experiment_id"]]}).json()["runs"]
    assert len(runs) == 1
    run_id = runs[0]["info"]["run_id"]
    run = _get(mlflow_server, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["artifact_uri"].startswith("mlflow-artifacts:/")  # proxied through the server
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["training.epochs"] == "2"
    assert params["model.user_embedding_dim"] == "32" and params["model.hidden_units"] == "[64, 32]"
    assert len(params["data.hash"]) == 64
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["towerops.data_hash"] == params["data.hash"]
    assert tags["towerops.model_uri"].startswith("models:/")

    for key in ("loss", "val_loss", "val_auc"):
        history = _get(mlflow_server, "metrics/get-history", run_id=run_id, metric_key=key)["metrics"]
        assert sorted(m["step"] for m in history) == [0, 1], key
    best = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert best["epochs_run"] == 2.0 and "best_val_loss" in best

    listed = {f["path"] for f in _get(mlflow_server, "artifacts/list", run_id=run_id).get("files", [])}
    assert {"data_fingerprint.json", "config.json", "metadata.json", "history.json", "training_curves.png",
            "preprocessing", "keras", "saved_model"} <= listed
    config = requests.get(f"{mlflow_server.url}/get-artifact", params={"path": "config.json", "run_uuid": run_id},
                          timeout=30).json()
    assert config["model"]["user_embedding_dim"] == 32
    # the bytes really live in the server's artifacts destination, not on the client
    stored = {p.name for p in Path(mlflow_server.artifacts).rglob("*") if p.is_file()}
    assert {"history.json", "training_curves.png", "MLmodel"} <= stored


# ------------------------------------------------------------------ S3-compatible artifact store (moto)
@pytest.fixture
def moto_s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # binds a port of its own
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_artifacts_land_in_an_s3_bucket(mlflow_server_factory, moto_s3: str, tmp_path: Path) -> None:
    import boto3
    from mlflow import MlflowClient

    s3_env = {"MLFLOW_S3_ENDPOINT_URL": moto_s3, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
              "AWS_DEFAULT_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=moto_s3, region_name="us-east-1", aws_access_key_id="testing",
                      aws_secret_access_key="testing")
    s3.create_bucket(Bucket="towerops-artifacts")

    # a bucket that does not exist is caught before the server starts
    from ml.tracking.server import check_artifacts_destination

    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        check_artifacts_destination("s3://no-such-bucket/x", env=s3_env)

    server = mlflow_server_factory(artifacts="s3://towerops-artifacts/mlflow", env=s3_env)
    client = MlflowClient(tracking_uri=server.url)
    exp_id = client.create_experiment("s3-it")
    run = client.create_run(exp_id)
    client.log_text(run.info.run_id, "hello bucket", "notes/hello.txt")  # no S3 keys on the client side
    client.set_terminated(run.info.run_id)

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="towerops-artifacts").get("Contents", [])]
    match = [k for k in keys if k.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt")]
    assert match and match[0].startswith("mlflow/"), keys
    body = s3.get_object(Bucket="towerops-artifacts", Key=match[0])["Body"].read()
    assert body == b"hello bucket"
    assert not any(Path(server.state_dir).rglob("hello.txt"))


# ------------------------------------------------------------------ basic auth
def test_basic_auth_rejects_anonymous_and_accepts_admin(mlflow_server_factory, pg_dsn: str,
                                                        pg_admin_dsn: str) -> None:
    auth_db = f"{urlsplit(pg_dsn).path.lstrip('/')}_auth"
    try:
        server = mlflow_server_factory(extra_args=("--auth",), env={"MLFLOW_AUTH_ADMIN_PASSWORD": "admin-pw-123"})
        search = f"{server.url}/api/2.0/mlflow/experiments/search"
        anonymous = requests.post(search, json={"max_results": 5}, timeout=30)
        assert anonymous.status_code == 401
        wrong = requests.post(search, json={"max_results": 5}, auth=("admin", "nope"), timeout=30)
        assert wrong.status_code == 401
        ok = requests.post(search, json={"max_results": 5}, auth=("admin", "admin-pw-123"), timeout=30)
        assert ok.status_code == 200 and "experiments" in ok.json()
        assert "users" in _tables(urlunsplit(urlsplit(pg_dsn)._replace(path=f"/{auth_db}")))  # users in PostgreSQL
        ini = (Path(server.state_dir) / "basic_auth.ini")
        assert stat.S_IMODE(ini.stat().st_mode) == 0o600
        server.kill()
    finally:
        conn = psycopg2.connect(pg_admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{auth_db}" WITH (FORCE)')
        conn.close()
