"""Secrets never reach params, tags, logs, artifacts, outputs or what the commands print.

One real flow on tiny data into tmp_path, with secrets planted in every place a user may
put one: a PostgreSQL password (in a DSN given as a literal CLI option, as `env:VAR` in
CLI options and in an MLproject parameter, in environment variables, and as a reference
inside an environment variable), an alert webhook token (path and query of the URL, named
by `webhook.url: env:VAR` in a monitoring config file) and a Supabase storage key. Error
paths too: the alert delivery fails (nothing listens), a DSN points at a closed port, a
deploy goes to a storage server that is down.

Then the whole output is searched: every file under the work folder (logs/, mlruns/ and
its artifacts, deployments/, the Evidently workspace, batch outputs, model bundles), a dump
of the SQLite tracking database (iterdump), and every command's stdout and stderr. None of
the secrets may appear; the positive checks make sure each flow really used its secret.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import pytest
from support.helpers import REPO_ROOT, mlflow_env, refused_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.integration,
              pytest.mark.timeout(1800)]  # about 14 commands, each importing MLflow (TensorFlow for most)


def _with_password(dsn: str, password: str) -> tuple[str, str]:
    """(DSN with a password, the password): the test server's own password, or a planted one (trust auth)."""
    parts = urlsplit(dsn)
    if parts.password:
        return dsn, parts.password
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc)), password


def _load_tables(dsn: str, folder: Path) -> None:
    import pandas as pd
    import sqlalchemy as sa

    engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        for table in ("users", "items", "interactions"):
            frame = pd.read_csv(folder / f"{table}.csv", dtype={"user_id": str, "item_id": str})
            frame.to_sql(table, engine, index=False)
    finally:
        engine.dispose()


class Flow:
    """Runs commands in the work folder and keeps everything they print."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, env
        self.outputs: list[tuple[str, str]] = []

    def run(self, *args: str, expect: int | None = 0, cwd: Path | None = None, env: dict | None = None,
            module: str = "pipelines.cli") -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", module, *args]
        proc = subprocess.run(cmd, cwd=cwd or self.work, env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=900)
        label = " ".join(args[:3])
        self.outputs += [(f"stdout of {label}", proc.stdout), (f"stderr of {label}", proc.stderr)]
        if expect is not None:
            assert proc.returncode == expect, f"{label}: exit {proc.returncode}\n{proc.stderr[-4000:]}"
        return proc


def _sqlite_dump(path: Path) -> str:
    conn = sqlite3.connect(path)
    try:
        return "\n".join(conn.iterdump())
    finally:
        conn.close()


def _everything_written(work: Path) -> list[tuple[str, bytes]]:
    found = []
    for path in sorted(work.rglob("*")):
        if path.is_file():
            found.append((str(path.relative_to(work)), path.read_bytes()))
    for db in sorted(work.rglob("*.db")):
        found.append((f"iterdump of {db.relative_to(work)}", _sqlite_dump(db).encode()))
    return found


def _forms(secret: str) -> set[str]:
    return {s for s in (secret, quote(secret, safe=""), quote(secret)) if s}


def test_planted_secrets_never_reach_params_logs_artifacts_or_output(tmp_path: Path, tiny_synth, tiny_config,
                                                                    pg_dsn) -> None:
    from mlflow import MlflowClient
    from support.storage_server import StorageServer

    from ml.data.synthetic import write_synthetic

    work = tmp_path / "work"
    work.mkdir()
    # ---------------------------------------------------------------- the secrets
    dsn, password = _with_password(pg_dsn, "pw-" + uuid.uuid4().hex)
    hook_token, hook_query = "hooktoken-" + uuid.uuid4().hex, "sig-" + uuid.uuid4().hex
    storage = StorageServer(tmp_path / "storage" / "root", jwt_secret="jwt-" + uuid.uuid4().hex).start()
    storage_key = storage.service_key
    secrets = {"database password": password, "webhook token": hook_token, "webhook query": hook_query,
               "storage key": storage_key}

    # ---------------------------------------------------------------- data in PostgreSQL, configs with references
    write_synthetic(tiny_synth, tmp_path / "csv")
    _load_tables(dsn, tmp_path / "csv")
    (work / "tiny.json").write_text(json.dumps({**tiny_config, "training": {**tiny_config["training"], "epochs": 1}}))
    (work / "monitoring.yaml").write_text(
        "reference: {sample_users: 200, sample_items: 200}\n"
        "drift: {embedding_sample: 50, min_outcomes: 1000000}\n"
        "alerts:\n  - {name: always, metric: window_interactions, op: '>', threshold: 0, severity: error}\n"
        "webhook: {url: 'env:LEAK_ALERT_URL', attempts: 2, backoff_s: 0.01, timeout_s: 2}\n"
        "rollback: {enabled: false, on_alerts: []}\n")
    (work / "deploy.yaml").write_text(
        "supabase: {storage_bucket: leak-test, auto_deployment: false}\n"
        "storage: {backend: supabase, tfjs: false, retry: {attempts: 2, backoff_s: 0.05, max_backoff_s: 0.1}}\n")
    (work / "deploy-local.yaml").write_text(
        "supabase: {storage_bucket: leak-test}\nstorage: {backend: local, local_dir: deployments, tfjs: false}\n")
    storage.create_bucket("leak-test")

    with refused_port() as dead_port:
        hook_url = f"http://127.0.0.1:{dead_port}/services/{hook_token}?token={hook_query}"
        secrets["webhook URL"] = hook_url
        dead_dsn = urlunsplit(urlsplit(dsn)._replace(netloc=f"postgres:{password}@127.0.0.1:{dead_port}"))
        env = mlflow_env(work, TOWEROPS_LEAK_DSN=dsn, TOWEROPS_DEAD_DSN=dead_dsn, LEAK_ALERT_URL=hook_url,
                         TOWEROPS_BATCH_DSN=dsn,                      # a literal DSN in an environment variable
                         TOWEROPS_DEPLOY_DSN="env:TOWEROPS_LEAK_DSN",  # a reference inside an environment variable
                         SUPABASE_URL=storage.url, SUPABASE_SERVICE_ROLE_KEY=storage_key,
                         MLFLOW_EXPERIMENT_NAME="leaks")
        env.pop("TOWEROPS_DEPLOY_DIR", None)  # local deploys go to ./deployments in the work folder
        flow = Flow(work, env)

        # ------------------------------------------------------------ the flow
        flow.run("data", "validate", "env:TOWEROPS_LEAK_DSN")
        train = flow.run("run", str(REPO_ROOT), "-e", "train", "--env-manager", "local", "--experiment-name", "leaks",
                         "-P", "data=env:TOWEROPS_LEAK_DSN", "-P", f"config={work / 'tiny.json'}",
                         "-P", f"model_dir={work / 'model'}", module="mlflow")
        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        (run,) = client.search_runs([client.get_experiment_by_name("leaks").experiment_id])
        run_id = run.info.run_id
        flow.run("monitor", "reference", "--run-id", run_id, "--data", "env:TOWEROPS_LEAK_DSN", "--config",
                 "monitoring.yaml")
        monitor = flow.run("monitor", "run", "--data", dsn, "--model-uri",        # a literal DSN as a CLI option
                           f"runs:/{run_id}/recommender", "--config", "monitoring.yaml", "--workspace", "ws",
                           expect=1)                                  # the alert fires; its delivery fails
        flow.run("evaluate", "--model", str(work / "model"), "--data", "env:TOWEROPS_LEAK_DSN", "--ks", "10",
                 "--n-bootstrap", "10")
        flow.run("batch-infer", "--model", str(work / "model"), "--out", "batch", "--track")   # TOWEROPS_BATCH_DSN
        deployed = flow.run("deploy", "--model-dir", str(work / "model"), "--version", "v1.0.0", "--config",
                            "deploy.yaml", "--json")
        flow.run("deploy", "--model-dir", str(work / "model"), "--version", "v1.0.0", "--config", "deploy-local.yaml",
                 env={"TOWEROPS_DEPLOY_DSN": ""})
        # error paths: a DSN to a closed port (literal and by reference), storage that is down, an unset reference
        dead_train = flow.run("train", "--data", dead_dsn, "--config", "tiny.json", expect=2)
        dead_validate = flow.run("data", "validate", "env:TOWEROPS_DEAD_DSN", expect=2)
        dead_batch = flow.run("batch-infer", "--model", str(work / "model"), "--out", "batch2", "--dsn",
                              "env:TOWEROPS_DEAD_DSN", "--no-track", expect=2)  # --dsn env:VAR, then a failed connect
        unset = flow.run("data", "validate", "env:TOWEROPS_NOT_SET", expect=2)
        storage_down = flow.run("deploy", "--model-dir", str(work / "model"), "--version", "v1.0.1", "--config",
                                "deploy.yaml", env={"SUPABASE_URL": f"http://127.0.0.1:{dead_port}"}, expect=None)

    # ---------------------------------------------------------------- each flow really used its secret
    assert "Running command" in train.stderr and "env:TOWEROPS_LEAK_DSN" in train.stderr
    params = client.get_run(run_id).data.params
    assert params["data"] == "env:TOWEROPS_LEAK_DSN" and params["data.source"] == "env:TOWEROPS_LEAK_DSN"
    monitor_runs = [r for r in client.search_runs([run.info.experiment_id]) if r.data.params.get("monitor.source")]
    masked = dsn.replace(f":{password}@", ":***@")
    assert {r.data.params["monitor.source"] for r in monitor_runs} == {masked}      # recorded without its password
    assert monitor_runs[0].data.tags["towerops.webhook"] == "failed"
    monitoring_log = (work / "logs" / "monitoring.log").read_text()
    assert "alert webhook failed" in monitoring_log and f"127.0.0.1:{dead_port}/***" in monitoring_log
    assert "always" in monitor.stderr
    import psycopg2

    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM towerops_recommendations")     # published with $TOWEROPS_BATCH_DSN
        assert cur.fetchone()[0] > 0
        cur.execute("SELECT count(*) FROM model_versions")
        assert cur.fetchone()[0] >= 1                                 # TOWEROPS_DEPLOY_DSN=env:... was resolved
    assert json.loads(deployed.stdout)["version"] == "v1.0.0"        # uploaded with the storage key
    assert (work / "deployments").is_dir() and (work / "ws").is_dir() and (work / "batch").is_dir()
    for proc in (dead_train, dead_validate, dead_batch):
        assert "could not connect" in proc.stderr.lower() or "cannot connect" in proc.stderr.lower(), proc.stderr[-800:]
        assert "postgres:***@" in proc.stderr or "host=127.0.0.1" in proc.stderr
    assert "env:TOWEROPS_NOT_SET names the environment variable TOWEROPS_NOT_SET, which is not set" in unset.stderr
    assert storage_down.returncode != 0 and "Traceback" not in storage_down.stderr

    # ---------------------------------------------------------------- and none of them anywhere
    storage.kill()
    haystacks = [(name, text.encode()) for name, text in flow.outputs] + _everything_written(work)
    assert len(haystacks) > 50 and any("mlruns" in name for name, _ in haystacks)
    assert any(name.startswith("iterdump of mlflow.db") for name, _ in haystacks)
    leaks = [f"{what} in {name}" for what, secret in secrets.items() for form in _forms(secret)
             for name, data in haystacks if form.encode() in data]
    assert not leaks, "secrets leaked:\n  " + "\n  ".join(sorted(set(leaks)))
