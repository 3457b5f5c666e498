"""Registry → storage: promotions and rollbacks made through the registry deploy through
the hook `open_registry` installs (local-folder backend, `model_versions` in PostgreSQL);
the table's one-active-row switch and its failure path."""

from __future__ import annotations

import json
import os
import uuid

import psycopg2
import pytest
from support.deploy import fast_config, make_bundle
from support.helpers import REPO_ROOT

pytestmark = pytest.mark.integration


def _fresh_db(admin_dsn: str) -> str:
    name = f"towerops_deploy_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def _drop_db(admin_dsn: str, dsn: str) -> None:
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    conn.close()


def _active(dsn: str, model: str) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT version, registry_version, is_active, activated_at IS NOT NULL FROM model_versions "
                    "WHERE model_name = %s ORDER BY version", (model,))
        rows = cur.fetchall()
    conn.close()
    return rows


def test_model_versions_switch_is_atomic_and_a_failed_switch_restores_the_pointer(pg_dsn, tmp_path) -> None:
    from registry.deploy.deployer import SupabaseDeployer
    from registry.deploy.storage.local import LocalFolderBackend
    from registry.deploy.table import DeployDatabaseError

    backend = LocalFolderBackend(tmp_path / "store", "model-artifacts")
    d = SupabaseDeployer(fast_config(), backend=backend, model_name="tt", dsn=pg_dsn)
    d.deploy_model(make_bundle(tmp_path / "b1", seed=1), "v1.0.0", description="one", metrics={"ndcg_at_10": 0.2})
    d.deploy_model(make_bundle(tmp_path / "b2", seed=2), "v1.1.0")
    assert _active(pg_dsn, "tt") == [("v1.0.0", None, False, True), ("v1.1.0", None, True, True)]
    conn = psycopg2.connect(pg_dsn)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT manifest->'files'->'metadata.json'->>'size', metrics, description, storage_path "
                    "FROM model_versions WHERE version = 'v1.0.0'")
        size, metrics, description, path = cur.fetchone()
    assert int(size) > 0 and metrics == {"ndcg_at_10": 0.2} and description == "one" and path == "tt/v1.0.0/"
    with pytest.raises(psycopg2.errors.UniqueViolation):                   # one active row per model
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE model_versions SET is_active = TRUE WHERE model_name = 'tt'")
    with conn, conn.cursor() as cur:                                        # make the next switch fail
        cur.execute("""CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                       $$ BEGIN IF NEW.is_active AND NEW.version = 'v1.2.0' THEN
                          RAISE EXCEPTION 'refused by test trigger'; END IF; RETURN NEW; END $$""")
        cur.execute("CREATE TRIGGER refuse BEFORE UPDATE ON model_versions FOR EACH ROW EXECUTE FUNCTION refuse()")
    conn.close()
    pointer_before = backend.get_bytes("tt/production.json")
    with pytest.raises(DeployDatabaseError, match="refused by test trigger.*production stays v1.1.0 \\(pointer restored\\)"):
        d.deploy_model(make_bundle(tmp_path / "b3", seed=3), "v1.2.0")
    assert backend.get_bytes("tt/production.json") == pointer_before      # readers never saw v1.2.0 for long
    assert ("v1.1.0", None, True, True) in _active(pg_dsn, "tt")
    assert [r for r in _active(pg_dsn, "tt") if r[2]] == [("v1.1.0", None, True, True)]


def test_unreachable_database_fails_before_any_upload(tmp_path) -> None:
    from registry.deploy.deployer import SupabaseDeployer
    from registry.deploy.storage.local import LocalFolderBackend

    backend = LocalFolderBackend(tmp_path / "store", "model-artifacts")
    dsn = "postgresql://deployer:s3cr3t-pw@127.0.0.1:1/nowhere"
    d = SupabaseDeployer(fast_config(), backend=backend, model_name="tt", dsn=dsn)
    with pytest.raises(ConnectionError, match="not reachable.*SUPABASE_DB_URL") as info:
        d.deploy_model(make_bundle(tmp_path / "b"), "v1.0.0")
    assert "s3cr3t-pw" not in str(info.value) and "***" in str(info.value)
    assert not any(p.is_file() for p in (tmp_path / "store").rglob("*"))


@pytest.fixture(scope="module")
def registry_env(pg_admin_dsn, tiny_synth, tmp_path_factory):
    """SQLite MLflow + audit in a tmp folder, model_versions in a fresh PostgreSQL database,
    the local-folder backend, and two trained runs of the tiny config."""
    import mlflow

    from ml.data.synthetic import write_synthetic
    from ml.tracking.training import train_run

    tmp = tmp_path_factory.mktemp("registry_sync")
    dsn = _fresh_db(pg_admin_dsn)
    (tmp / "deployment.yaml").write_text(
        f"supabase: {{storage_bucket: model-artifacts}}\nversioning: {{max_versions: 3}}\n"
        f"storage: {{backend: local, local_dir: {tmp / 'deployments'}, retry: {{attempts: 2, backoff_s: 0.05}}}}\n")
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}", "TOWEROPS_AUDIT_DB_URL": f"sqlite:///{tmp / 'audit.db'}",
           "TOWEROPS_DEPLOY_CONFIG": str(tmp / "deployment.yaml"), "TOWEROPS_DEPLOY_DSN": dsn}
    old_env = {k: os.environ.get(k) for k in env}
    old_cwd = os.getcwd()
    os.environ.update(env)
    os.chdir(tmp)                                                          # ./mlruns lands in tmp
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    try:
        write_synthetic(tiny_synth, tmp / "data")
        base = {"model.user_embedding_dim": 32, "model.item_embedding_dim": 32, "model.hidden_units": "[64, 32]",
                "features.text_dim": 16, "training.epochs": 2, "training.patience": 2}
        runs = [train_run(str(tmp / "data"), None, {**base, "training.seed": s}, experiment="sync").run_id
                for s in (1, 2)]
        yield {"tmp": tmp, "dsn": dsn, "runs": runs, "data": str(tmp / "data")}
    finally:
        os.chdir(old_cwd)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        mlflow.set_tracking_uri(old_env["MLFLOW_TRACKING_URI"] or "")
        _drop_db(pg_admin_dsn, dsn)


@pytest.mark.slow
def test_promote_deploys_rollback_repoints_and_sync_is_a_noop(registry_env) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app
    from registry.deploy.hook import RegistryDeployHook
    from registry.service import open_registry

    name = f"tt_{uuid.uuid4().hex[:6]}"
    cfg = str(REPO_ROOT / "configs" / "registry.yaml")
    reg = open_registry(cfg, name=name)
    assert isinstance(reg.deploy_hook, RegistryDeployHook)
    v1, v2 = (reg.register(r, trigger="api").version for r in registry_env["runs"])
    base = registry_env["tmp"] / "deployments" / "model-artifacts" / name

    first = reg.promote(v1, force=True, reason="test", data=registry_env["data"])
    # uploaded and verified before the alias moved; activated (pointer, row) after the audit commit
    assert len(first.upload.uploaded) > 10 and not first.upload.activated
    assert first.deployment.activated and first.deployment.uploaded == []
    pointer = json.loads((base / "production.json").read_text())
    assert (pointer["version"], pointer["registry_version"]) == ("v1.0.0", str(v1))
    manifest = json.loads((base / "v1.0.0" / "manifest.json").read_text())
    assert manifest["run_id"] == registry_env["runs"][0] and "tfjs/user_tower/model.json" in manifest["files"]
    assert manifest["metrics"] and all(isinstance(v, float) for v in manifest["metrics"].values())

    second = reg.promote(v2, force=True, reason="test", data=registry_env["data"])
    assert second.deployment.activated and second.deployment.previous == "v1.0.0"
    assert _active(registry_env["dsn"], name) == [("v1.0.0", str(v1), False, True), ("v2.0.0", str(v2), True, True)]

    back = reg.rollback(reason="bad online metrics")
    assert back.version == str(v1)
    assert back.deployment.repointed_only and back.deployment.uploaded == []       # no upload, no download
    pointer = json.loads((base / "production.json").read_text())
    assert (pointer["version"], pointer["history"]) == ("v1.0.0", ["v1.0.0"])      # the registry's stack
    assert [r[0] for r in _active(registry_env["dsn"], name) if r[2]] == ["v1.0.0"]

    mtimes = {p: p.stat().st_mtime_ns for p in base.rglob("*") if p.is_file()}
    out = CliRunner().invoke(app, ["sync", "--production", "--registry-config", cfg, "--name", name, "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["unchanged"] is True
    assert {p: p.stat().st_mtime_ns for p in base.rglob("*") if p.is_file()} == mtimes

    pre = CliRunner().invoke(app, ["sync", "--version", str(v2), "--registry-config", cfg, "--name", name, "--json"])
    assert pre.exit_code == 0, pre.output
    assert json.loads(pre.stdout)["activated"] is False
    assert json.loads((base / "production.json").read_text())["version"] == "v1.0.0"
    missing = CliRunner().invoke(app, ["sync", "--version", "99", "--registry-config", cfg, "--name", name])
    assert missing.exit_code == 2 and "has no version '99'" in missing.output
