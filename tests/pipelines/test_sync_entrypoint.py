"""`mlflow run . -e sync` as a user types it: production in the registry ends up in storage
(local-folder backend here); a registry with no production fails with the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.helpers import REPO_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _mlflow_run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """From `cwd` (tmp): a new experiment's artifact root (./mlruns) lands there, not in the checkout."""
    return subprocess.run([sys.executable, "-m", "mlflow", "run", str(REPO_ROOT), "--env-manager", "local",
                           "--experiment-name", "e2e-sync", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_sync_entry_point(tiny_synth, tmp_path, monkeypatch):
    import mlflow

    from ml.data.synthetic import write_synthetic
    from ml.tracking.training import train_run
    from registry.audit import AuditLog
    from registry.gate import RegistryConfig
    from registry.stages import ModelRegistry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    audit = f"sqlite:///{tmp_path / 'audit.db'}"
    cfg = tmp_path / "deployment.yaml"
    cfg.write_text(f"storage: {{backend: local, local_dir: {tmp_path / 'deployments'}}}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("TOWEROPS_AUDIT_DB_URL", audit)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    write_synthetic(tiny_synth, tmp_path / "data")
    run_id = train_run(str(tmp_path / "data"), None, {
        "model.user_embedding_dim": 32, "model.item_embedding_dim": 32, "model.hidden_units": "[64, 32]",
        "features.text_dim": 16, "training.epochs": 2}, experiment="sync-e2e").run_id
    name = f"tt_{uuid.uuid4().hex[:6]}"
    reg = ModelRegistry(RegistryConfig(model_name=name), audit=AuditLog(audit))   # no deploy hook here
    version = reg.register(run_id).version

    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, TOWEROPS_AUDIT_DB_URL=audit, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false",
               TOWEROPS_LOG_DIR=str(tmp_path / "logs"), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "TOWEROPS_DEPLOY_DSN",
                "SUPABASE_DB_URL", "SUPABASE_URL", "TOWEROPS_S3_ENDPOINT_URL", "TOWEROPS_DEPLOY_BACKEND"):
        env.pop(var, None)
    (tmp_path / "registry.yaml").write_text(f"model_name: {name}\n")

    none = _mlflow_run(["-e", "sync", "-P", f"config={cfg}", "-P", f"registry_config={tmp_path / 'registry.yaml'}"], env, tmp_path)
    assert none.returncode != 0
    assert "has no production version in the registry" in none.stderr + none.stdout

    reg.promote(version, force=True, reason="e2e", data=str(tmp_path / "data"))
    ok = _mlflow_run(["-e", "sync", "-P", f"config={cfg}", "-P", f"registry_config={tmp_path / 'registry.yaml'}"], env, tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    base = tmp_path / "deployments" / "model-artifacts" / name
    pointer = json.loads((base / "production.json").read_text())
    assert (pointer["version"], pointer["registry_version"]) == ("v1.0.0", str(version))
    manifest = json.loads((base / "v1.0.0" / "manifest.json").read_text())
    assert manifest["run_id"] == run_id and "tfjs/item_tower/model.json" in manifest["files"]
    assert "uploaded" in (tmp_path / "logs" / "deployment.log").read_text()
