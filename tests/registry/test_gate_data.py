"""The gate on location-free data, never wedging the registry, and registry = storage.

One module fixture: SQLite tracking and audit, the local storage backend (no deployment
database), and two tiny trained runs:
- `pg`: trained from PostgreSQL on the data without its last 20 items (the champion);
- `retrain`: all the data (adds those 20 items), learning rate 1e-7 for one epoch: a model a
  strict gate must refuse against the champion and a lenient one accept.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NEW_ITEMS = 20
OPEN = {"absolute": {"ndcg_at_10": 0.0}, "relative": {"ndcg_at_10": 0.99}, "baselines": {}, "health": {}}
STRICT = {"absolute": {"ndcg_at_10": 0.0}, "relative": {"ndcg_at_10": 0.05}, "baselines": {}, "health": {}}
BASE = {"model.user_embedding_dim": 32, "model.item_embedding_dim": 32, "model.hidden_units": "[64, 32]",
        "model.l2_regularization": 0.0001, "features.text_dim": 16, "training.patience": 2}
ENV_KEYS = ("MLFLOW_TRACKING_URI", "TOWEROPS_AUDIT_DB_URL", "TOWEROPS_DEPLOY_CONFIG", "TOWEROPS_DEPLOY_DIR",
            "TOWEROPS_DEPLOY_DSN", "SUPABASE_DB_URL", "SUPABASE_URL", "TOWEROPS_S3_ENDPOINT_URL", "TOWEROPS_CONFIG",
            "TOWEROPS_DEPLOY_BACKEND", "TOWEROPS_SUPABASE_STORAGE_URL")


def _with_password(dsn: str) -> tuple[str, str]:
    """The DSN with a password: the server's own, else one trust auth ignores (it must never be recorded)."""
    parts = urlsplit(dsn)
    if parts.password:
        return dsn, parts.password
    password = "gate-data-pw-123"
    netloc = f"{parts.username or 'postgres'}:{password}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit(parts._replace(netloc=netloc)), password


def _to_postgres(dataset, dsn: str, folder: Path) -> None:
    import pandas as pd
    import sqlalchemy as sa

    from ml.data.loaders import write_folder

    write_folder(dataset, folder)
    engine = sa.create_engine(dsn.replace("postgresql://", "postgresql+psycopg2://", 1))
    try:
        for table in ("users", "items", "interactions"):
            pd.read_csv(folder / f"{table}.csv", dtype={"user_id": str, "item_id": str}).to_sql(table, engine,
                                                                                                 index=False)
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def env(pg_admin_dsn, tiny_synth, tmp_path_factory):
    import dataclasses

    import mlflow

    from ml.data.loaders import write_folder
    from ml.tracking.training import train_run

    tmp = tmp_path_factory.mktemp("gate_data")
    db = f"towerops_gate_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(pg_admin_dsn)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{db}"')
    conn.close()
    data_dsn, password = _with_password(pg_admin_dsn.rsplit("/", 1)[0] + f"/{db}")
    (tmp / "deployment.yaml").write_text(yaml.safe_dump({"storage": {
        "backend": "local", "local_dir": str(tmp / "deployments"), "tfjs": False,
        "retry": {"attempts": 2, "backoff_s": 0.05}}}))
    saved = {k: os.environ.get(k) for k in ENV_KEYS}
    old_cwd = os.getcwd()
    for k in ENV_KEYS:
        os.environ.pop(k, None)
    os.environ.update({"MLFLOW_TRACKING_URI": f"sqlite:///{tmp / 'mlflow.db'}",
                       "TOWEROPS_AUDIT_DB_URL": f"sqlite:///{tmp / 'audit.db'}",
                       "TOWEROPS_DEPLOY_CONFIG": str(tmp / "deployment.yaml")})
    os.chdir(tmp)
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    try:
        full = tiny_synth.dataset
        dropped = set(full.items["item_id"].astype(str).tolist()[-NEW_ITEMS:])
        old = dataclasses.replace(
            full, items=full.items[~full.items["item_id"].astype(str).isin(dropped)].reset_index(drop=True),
            interactions=full.interactions[~full.interactions["item_id"].astype(str).isin(dropped)].reset_index(drop=True))
        _to_postgres(old, data_dsn, tmp / "old_csv")
        write_folder(full, tmp / "data")
        runs = {
            "pg": train_run(data_dsn, None, {**BASE, "training.epochs": 2, "training.seed": 1}, experiment="gate").run_id,
            "retrain": train_run("data", None, {**BASE, "training.epochs": 1, "training.learning_rate": 1e-7,
                                                "model.l2_regularization": 0.0}, experiment="gate").run_id,
        }
        yield {"tmp": tmp, "runs": runs, "dsn": data_dsn, "password": password, "dropped": dropped}
    finally:
        os.chdir(old_cwd)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"] or "")
        conn = psycopg2.connect(pg_admin_dsn)
        conn.autocommit = True
        conn.cursor().execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.close()


def _registry(gate: dict, name: str, deploy: bool = False):
    from registry.audit import AuditLog
    from registry.deploy.hook import deploy_hook_from_env
    from registry.gate import GateConfig, RegistryConfig
    from registry.stages import ModelRegistry

    audit = AuditLog()
    hook = deploy_hook_from_env(audit=audit) if deploy else None
    return ModelRegistry(config=RegistryConfig(model_name=name, gate=GateConfig.from_mapping(gate)), audit=audit,
                         deploy_hook=hook)


def _registry_file(env, gate: dict) -> str:
    path = env["tmp"] / f"registry_{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump({"gate": gate}))
    return str(path)


def _name() -> str:
    return f"tt_{uuid.uuid4().hex[:6]}"


def test_a_model_trained_from_postgres_promotes_without_data(env) -> None:
    import mlflow
    from typer.testing import CliRunner

    from pipelines.cli import app

    run = mlflow.MlflowClient().get_run(env["runs"]["pg"])
    (inp,) = run.inputs.dataset_inputs
    source = json.loads(inp.dataset.source)
    recorded = json.dumps({"source": source, "params": run.data.params, "tags": run.data.tags})
    assert source["kind"] == "postgresql" and source["uri"].startswith("postgresql://") and "@127.0.0.1" in source["uri"]
    assert env["password"] not in recorded                                   # the DSN's password is nowhere
    name = _name()
    reg = _registry(OPEN, name)
    version = str(reg.register(env["runs"]["pg"]).version)
    tags = reg.version(version).tags
    assert tags["data_source"] == source["uri"] and tags["eval_set"] == f"runs:/{env['runs']['pg']}/evaluation/test_set"

    out = CliRunner().invoke(app, ["promote", "--version", version, "--name", name,
                                   "--config", _registry_file(env, OPEN)])        # no --data
    assert out.exit_code == 0, out.output
    assert "-> production" in out.stdout and "evaluated on the evaluation set" in out.stdout
    assert reg.alias_version("production") == version
    pointer = json.loads((env["tmp"] / "deployments" / "model-artifacts" / name / "production.json").read_text())
    assert pointer["registry_version"] == version                              # the CLI's registry deploys


def test_a_retrain_that_adds_items_is_gated_refused_then_accepted(env) -> None:
    """The champion is scored on the retrain's test set, its 20 unknown items through its content
    path: a strict gate refuses the (weak) retrain on that comparison, a lenient one accepts it."""
    from ml.bundle.load import load_bundle
    from ml.bundle.resolve import resolve_model
    from ml.evaluation.catalog import align_catalog
    from ml.evaluation.evaluate import evaluate_bundle
    from ml.tracking.datasets import load_eval_set
    from registry.stages import GateFailed

    name = _name()
    open_gate, strict = _registry(OPEN, name), _registry(STRICT, name)
    champion = str(open_gate.register(env["runs"]["pg"]).version)
    open_gate.promote(champion)
    retrain = str(strict.register(env["runs"]["retrain"]).version)
    with pytest.raises(GateFailed) as caught:                               # compared, not crashed
        strict.promote(retrain)
    gate = caught.value.result.gate
    (relative,) = [c for c in gate.checks if c.kind == "relative"]
    assert not relative.passed and relative.value < relative.baseline
    assert any(f"v{champion} does not know {NEW_ITEMS} of the 200 items: scored through its content path" in n
               for n in gate.notes), gate.notes
    assert strict.alias_version("production") == champion
    assert strict.history(1)[0].action == "refused"

    # the champion's figure is its evaluation on the challenger's evaluation set, new items included
    evalset = load_eval_set(strict.version(retrain).tags["eval_set"])
    assert set(evalset.dataset.items["item_id"].astype(str)) >= env["dropped"]
    bundle = load_bundle(resolve_model(f"models:/{name}/{champion}", download_dir=str(env["tmp"] / f"dl_{name}")))
    view, alignment = align_catalog(bundle, evalset.dataset.items)
    assert (alignment.n_cold, alignment.n_dropped) == (NEW_ITEMS, 0)
    expected = evaluate_bundle(view, evalset.dataset, ks=strict.config.eval_ks, baselines=(),
                               validation_split=evalset.validation_split, test_split=evalset.test_split)
    assert relative.baseline == pytest.approx(expected.metrics["ndcg_at_10"], rel=1e-6)

    result = open_gate.promote(retrain)
    assert result.gate.passed and open_gate.alias_version("production") == retrain
    (accepted,) = [c for c in result.gate.checks if c.kind == "relative"]
    assert accepted.baseline == pytest.approx(relative.baseline) and accepted.value == pytest.approx(relative.value)
    assert any(f"v{champion} does not know {NEW_ITEMS}" in n for n in result.gate.notes)
    entry = open_gate.history(1)[0]
    assert entry.action == "promote" and entry.gate_result["notes"] == result.gate.notes


def test_a_gate_error_during_reconcile_is_a_refusal_and_does_not_block_the_next_promote(env) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    name = _name()
    reg = _registry(OPEN, name)
    v1 = str(reg.register(env["runs"]["pg"]).version)
    reg.promote(v1)
    broken = str(reg.register(env["runs"]["retrain"]).version)
    reg.client.set_model_version_tag(name, broken, "eval_set", f"runs:/{env['runs']['retrain']}/evaluation/missing")
    # as someone would in the UI: the alias, and a stage tag by hand
    reg.client.set_registered_model_alias(name, "production", broken)
    reg.client.set_model_version_tag(name, broken, "stage", "production")
    reg.client.set_model_version_tag(name, v1, "stage", "archived")

    result = reg.reconcile()
    assert result.action == "refused" and result.reverted and "evaluation set" in result.error
    assert result.describe().startswith(f"refused: {name} v{broken} -> production: the gate could not evaluate")
    assert f"production alias put back on v{v1}" in result.describe() and "already in" not in result.describe()
    assert reg.alias_version("production") == v1
    assert (reg.version(v1).tags["stage"], reg.version(broken).tags["stage"]) == ("production", "archived")
    entry = reg.history(1)[0]
    assert (entry.action, entry.version, entry.trigger, entry.gate_passed) == ("refused", broken, "reconcile", False)
    assert "evaluation set" in entry.gate_result["error"]
    assert reg.reconcile() is None                                          # settled: nothing pending

    before = [e.id for e in reg.history(20)]                                # a CLI promotion that can't be gated
    out = CliRunner().invoke(app, ["promote", "--version", broken, "--name", name,
                                   "--config", _registry_file(env, OPEN)])
    assert out.exit_code == 2 and f"could not gate v{broken}" in out.output and "Nothing was changed" in out.output
    assert "Traceback" not in out.output
    assert reg.alias_version("production") == v1 and [e.id for e in reg.history(20)] == before

    reg.client.set_registered_model_alias(name, "production", broken)        # the UI again, webhook lost
    nxt = str(reg.register(env["runs"]["retrain"]).version)
    promoted = reg.promote(nxt)                                              # reconcile refuses, the promote goes on
    assert promoted.gate.passed and reg.alias_version("production") == nxt
    actions = [(e.action, e.version) for e in reg.history(3)]
    assert actions[:2] == [("promote", nxt), ("refused", broken)]


def test_reconcile_repairs_a_pointer_left_behind_either_way(env) -> None:
    name = _name()
    reg = _registry(OPEN, name, deploy=True)
    hook = reg.deploy_hook
    v1, v2 = (str(reg.register(env["runs"][r]).version) for r in ("pg", "retrain"))
    reg.promote(v1)
    pointer_path = env["tmp"] / "deployments" / "model-artifacts" / name / "production.json"

    class CrashAfterAudit:                      # uploads like the hook, then the process dies before the pointer
        audit = hook.audit

        def prepare(self, *args):
            return hook.prepare(*args)

        def __call__(self, *args):
            raise RuntimeError("killed after the audit commit")

    reg.deploy_hook = CrashAfterAudit()
    with pytest.raises(RuntimeError, match="killed"):
        reg.promote(v2)
    assert reg.alias_version("production") == v2 and reg.history(1)[0].version == v2
    assert json.loads(pointer_path.read_text())["registry_version"] == v1      # storage left behind
    reg.deploy_hook = hook
    repaired = reg.reconcile()
    assert repaired.action == "repair" and f"re-pointed to production v{v2} (was: pointer v{v1})" in repaired.describe()
    assert json.loads(pointer_path.read_text())["registry_version"] == v2

    deployer = hook.deployer(name)                                           # the other way: moved by hand
    deployer.activate(json.loads(pointer_path.read_text())["history"][0], name)
    deployer.close()
    assert json.loads(pointer_path.read_text())["registry_version"] == v1
    assert "re-pointed" in reg.reconcile().describe()
    assert json.loads(pointer_path.read_text())["registry_version"] == v2
    assert reg.reconcile() is None


def test_two_concurrent_promotions_without_a_deployment_database_leave_pointer_equal_registry(env,
                                                                                            monkeypatch) -> None:
    """The worst order: the first promotion has checked "still production?" and is about to write
    its pointer when the second moves the alias and activates. The first waits (up to 10 s) for
    the second's pointer write to land, then writes its own. Without a lock that buries the
    registry's production under the loser's pointer; with the activation lock (the audit
    database's, there being no deployment database) the second cannot write before the first
    is done, and then finds itself still production and writes last."""
    from registry.deploy.activation import ActivationSteps

    name = _name()
    first, second = _registry(OPEN, name, deploy=True), _registry(OPEN, name, deploy=True)
    v1, v2 = (str(first.register(env["runs"][r]).version) for r in ("pg", "retrain"))
    assert first.deploy_hook.deployer(name).table is None                    # no deployment database
    pointer_path = env["tmp"] / "deployments" / "model-artifacts" / name / "production.json"
    original_switch, original_lock = ActivationSteps._switch, ActivationSteps._activation_lock
    held, second_locking = threading.Event(), threading.Event()

    def pointer_version() -> str | None:
        return json.loads(pointer_path.read_text()).get("registry_version") if pointer_path.is_file() else None

    def lock(self, model_name):
        if model_name == name and threading.current_thread() is threading.main_thread():
            second_locking.set()
        return original_lock(self, model_name)

    def switch(self, model_name, version, *args, **kwargs):
        if model_name == name and threading.current_thread() is not threading.main_thread():
            held.set()
            assert second_locking.wait(300), "the second promotion never reached its activation"
            deadline = time.time() + 10
            while pointer_version() != v2 and time.time() < deadline:
                time.sleep(0.1)
        return original_switch(self, model_name, version, *args, **kwargs)

    monkeypatch.setattr(ActivationSteps, "_switch", switch)
    monkeypatch.setattr(ActivationSteps, "_activation_lock", lock)
    errors: list = []

    def promote_first() -> None:
        try:
            first.promote(v1)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=promote_first)
    thread.start()
    assert held.wait(300), "the first promotion never reached its pointer write"
    second.promote(v2)
    thread.join(300)
    assert not errors
    assert first.alias_version("production") == v2 and pointer_version() == v2
