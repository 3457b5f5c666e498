"""A growing catalog end to end, against a PostgreSQL-backed `mlflow server`, the Supabase Storage
imitation and PostgreSQL embedding tables: train v1 -> promote -> new items -> `catalog refresh`
(a minor version: new items recommended, old item embeddings unchanged bit for bit) -> drifted
data -> `monitor run --on-alert retrain` -> gate -> a new major in production. Storage's pointer,
`model_versions` and the embedding views follow each step."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.e2e]

TINY = {"model": {"user_embedding_dim": 16, "item_embedding_dim": 16, "hidden_units": [32], "dropout_rate": 0.1,
                  "l2_regularization": 0.0001},
        "training": {"batch_size": 128, "epochs": 2, "patience": 2, "seed": 7}, "features": {"text_dim": 8}}


@pytest.fixture
def storage_server(tmp_path_factory):
    """The Supabase Storage imitation on loopback (tests/support/storage_server.py)."""
    from support.storage_server import StorageServer

    server = StorageServer(tmp_path_factory.mktemp("supabase-storage") / "root").start()
    yield server
    server.kill()


@pytest.fixture
def fresh_db(pg_admin_dsn):
    """A database of its own for the audit trail, `model_versions` and the embedding tables (the
    tracking server's database has a `model_versions` table of MLflow's)."""
    name = f"towerops_cont_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(pg_admin_dsn)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    conn.close()
    yield pg_admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    conn = psycopg2.connect(pg_admin_dsn)
    conn.autocommit = True
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def _query(dsn: str, sql: str, args: tuple = ()) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()
    finally:
        conn.close()


def _item_view(dsn: str) -> dict[str, np.ndarray]:
    rows = _query(dsn, "SELECT item_id, embedding::float4[] FROM towerops_item_embeddings")
    return {i: np.asarray(e, np.float32) for i, e in rows}


def _current_batch(dsn: str) -> str:
    return _query(dsn, "SELECT model FROM towerops_batch_versions WHERE is_current")[0][0]


def _new_items(items: pd.DataFrame, n: int) -> pd.DataFrame:
    new = items.sample(n, random_state=3).copy()
    new["item_id"] = [f"new{i:03d}" for i in range(n)]
    new["title"] = new["title"] + " (new)"
    return new


def test_train_refresh_catalog_then_retrain_on_drift(tmp_path: Path, monkeypatch, mlflow_server, storage_server,
                                                     fresh_db, tiny_synth) -> None:
    from typer.testing import CliRunner

    from ml.bundle.load import load_bundle
    from ml.bundle.resolve import resolve_model
    from ml.data.synthetic import generate_synthetic, write_synthetic
    from ml.inference.engine import RealtimeInferenceEngine
    from pipelines.cli import app
    from registry.service import open_registry

    name = f"tt_{uuid.uuid4().hex[:6]}"
    bucket = f"b-{uuid.uuid4().hex[:8]}"
    storage_server.create_bucket(bucket)
    (tmp_path / "registry.yaml").write_text(
        f"model_name: {name}\neval_ks: [10]\n"
        "gate: {absolute: {ndcg_at_10: 0.0}, relative: {ndcg_at_10: 0.9}, baselines: {}, health: {}}\n")
    (tmp_path / "strict.yaml").write_text(
        f"model_name: {name}\neval_ks: [10]\ngate: {{absolute: {{ndcg_at_10: 0.99}}, baselines: {{}}, health: {{}}}}\n")
    (tmp_path / "deploy.yaml").write_text(
        f"supabase: {{storage_bucket: {bucket}}}\n"
        "storage: {backend: supabase, tfjs: false, retry: {attempts: 2, backoff_s: 0.05, max_backoff_s: 0.1}}\n")
    (tmp_path / "tiny.json").write_text(json.dumps(TINY))
    # another seed: training is deterministic, so the same data and seed would give the same towers (a patch)
    (tmp_path / "tiny8.json").write_text(json.dumps({**TINY, "training": {**TINY["training"], "seed": 8}}))
    (tmp_path / "monitoring.yaml").write_text(
        "reference: {sample_users: 150, sample_items: 150}\n"
        "drift: {embedding_sample: 40, min_outcomes: 1000000}\n"
        "alerts:\n  - {name: item_data_drift, metric: item_drift_share, op: '>=', threshold: 0.2, severity: error}\n"
        "  - {name: user_data_drift, metric: user_drift_share, op: '>=', threshold: 0.2, severity: error}\n"
        f"rollback: {{model_name: {name}}}\n"
        f"retrain: {{on_alerts: [item_data_drift, user_data_drift], training_config: {tmp_path / 'tiny.json'}}}\n")
    for key, value in {**mlflow_server.client_env(), "TOWEROPS_AUDIT_DB_URL": fresh_db,
                       "TOWEROPS_DEPLOY_CONFIG": str(tmp_path / "deploy.yaml"), "TOWEROPS_DEPLOY_DSN": fresh_db,
                       "TOWEROPS_BATCH_DSN": fresh_db, "SUPABASE_URL": storage_server.url,
                       "SUPABASE_SERVICE_ROLE_KEY": storage_server.service_key,
                       "MLFLOW_EXPERIMENT_NAME": "continuous"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TOWEROPS_SUPABASE_STORAGE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(mlflow_server.url)
    runner = CliRunner()
    reg_cfg = str(tmp_path / "registry.yaml")

    def pointer() -> dict:
        from registry.deploy.storage.supabase import SupabaseStorageBackend

        backend = SupabaseStorageBackend(bucket, url=storage_server.url, key=storage_server.service_key)
        try:
            return json.loads(backend.get_bytes(f"{name}/production.json"))
        finally:
            backend.close()

    def active_row() -> list[tuple]:
        return _query(fresh_db, "SELECT version, registry_version FROM model_versions WHERE model_name = %s AND "
                      "is_active", (name,))

    # ------------------------------------------------------------ v1: train, promote (the first major)
    write_synthetic(tiny_synth, tmp_path / "data1")
    out = runner.invoke(app, ["retrain", "--data", str(tmp_path / "data1"), "--training-config",
                              str(tmp_path / "tiny.json"), "--config", reg_cfg, "--format", "json"])
    assert out.exit_code == 0, out.output
    first = json.loads(out.stdout)
    assert (first["semver"], first["promoted"], first["production"]) == ("1.0.0", True, "1")
    assert pointer()["version"] == "v1.0.0" and active_row() == [("v1.0.0", "1")]
    assert _current_batch(fresh_db) == f"models:/{name}/1"
    v1 = load_bundle(resolve_model(f"models:/{name}/1"))
    assert set(_item_view(fresh_db)) == set(v1.item_ids)

    # ------------------------------------------------------------ new items: catalog refresh -> minor
    data2 = tmp_path / "data2"
    write_synthetic(tiny_synth, data2)
    items = pd.read_csv(data2 / "items.csv", dtype=str, keep_default_na=False)
    added = _new_items(items, 25)
    pd.concat([items, added]).to_csv(data2 / "items.csv", index=False)
    out = runner.invoke(app, ["catalog", "refresh", "--items", str(data2), "--config", reg_cfg, "--format", "json"])
    assert out.exit_code == 0, out.output
    refresh = json.loads(out.stdout)
    assert (refresh["semver"], refresh["bump"], refresh["production"]) == ("1.1.0", "minor", "2")
    assert (refresh["n_added"], refresh["n_removed"], refresh["n_kept"]) == (25, 0, len(v1.item_ids))
    reg = open_registry(reg_cfg)
    assert reg.version("2").tags["towers_fingerprint"] == reg.version("1").tags["towers_fingerprint"]
    v2_dir = resolve_model(f"models:/{name}/2")
    v2 = load_bundle(v2_dir)
    old = v2.item_id_rows(v1.item_ids)
    assert (old >= 0).all() and np.array_equal(v2.item_embeddings[old], v1.item_embeddings)   # bit for bit
    assert pointer()["version"] == "v1.1.0" and active_row() == [("v1.1.0", "2")]
    view = _item_view(fresh_db)
    assert set(view) == set(v1.item_ids) | set(added["item_id"])
    assert all(np.array_equal(view[i], v1.item_embeddings[r]) for r, i in enumerate(v1.item_ids))
    assert _current_batch(fresh_db) == f"models:/{name}/2"
    engine = RealtimeInferenceEngine(v2_dir)
    recommended = {r["item_id"] for u in v2.user_ids for r in engine.get_recommendations(user_id=u, top_k=10)}
    assert recommended & set(added["item_id"]), "no new item is recommended to anyone"
    recs = {i for (items_,) in _query(fresh_db, "SELECT items FROM towerops_recommendations") for i in items_}
    assert recs & set(added["item_id"])

    # ------------------------------------------------------------ a retrain the gate refuses changes nothing
    drifted = generate_synthetic(n_users=300, n_items=200, n_interactions=6000, seed=12, shift=1.0)
    write_synthetic(drifted, tmp_path / "data3")
    out = runner.invoke(app, ["retrain", "--data", str(tmp_path / "data3"), "--training-config",
                              str(tmp_path / "tiny8.json"), "--config", str(tmp_path / "strict.yaml")])
    assert out.exit_code == 3, out.output
    assert "version 3 was not promoted" in out.output and "ndcg_at_10" in out.output
    assert open_registry(reg_cfg).alias_version("production") == "2"
    assert pointer()["version"] == "v1.1.0" and active_row() == [("v1.1.0", "2")]
    assert _current_batch(fresh_db) == f"models:/{name}/2"

    # ------------------------------------------------------------ drifted data: monitor -> retrain -> major
    out = runner.invoke(app, ["monitor", "run", "--data", str(tmp_path / "data3"), "--config",
                              str(tmp_path / "monitoring.yaml"), "--workspace", "", "--on-alert", "retrain",
                              "--registry-config", reg_cfg])
    assert out.exit_code == 1, out.output                           # alerts fired (and were acted on)
    reg = open_registry(reg_cfg)
    assert reg.alias_version("production") == "4"
    mv4 = reg.version("4")                            # 2.0.0 is taken by the refused retrain: the next major
    assert (mv4.tags["semver"], mv4.tags["semver_bump"]) == ("3.0.0", "major")
    assert mv4.tags["towers_fingerprint"] != reg.version("2").tags["towers_fingerprint"]
    assert pointer()["version"] == "v3.0.0" and active_row() == [("v3.0.0", "4")]
    assert _current_batch(fresh_db) == f"models:/{name}/4"
    assert set(_item_view(fresh_db)) == set(load_bundle(resolve_model(f"models:/{name}/4")).item_ids)
    last = reg.history(1)[0]
    assert (last.action, last.version, last.trigger, last.gate_passed) == ("promote", "4", "monitoring", True)

    # every retrain step is a nested run under one parent
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name("continuous")
    parents = client.search_runs([exp.experiment_id], "tags.`towerops.step` = 'retrain'", order_by=["start_time DESC"])
    parent = parents[0]
    assert parent.data.tags["towerops.registered_version"] == "4" and parent.data.params["retrain.trigger"] == "monitoring"
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {c.data.tags.get("towerops.step", c.info.run_name) for c in children} >= {"train", "gate"}
    assert len(children) >= 3 and all(c.info.status == "FINISHED" for c in children)
