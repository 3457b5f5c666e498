"""Latency of a UI-style promotion: alias set through the MLflow REST API → webhook →
gate → audit entry → deployment trigger, against the direct `towerops promote` path
(the baseline) on the same server, same versions, same run.

Starts `towerops server` on PostgreSQL (a fresh database on $TOWEROPS_BENCH_PG_DSN,
default postgresql://postgres@127.0.0.1:5432/postgres) and a webhook receiver on loopback,
trains two tiny models, and alternates production between them. Prints one JSON object.

    python bench/registry.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise TimeoutError("timed out")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()

    import psycopg2
    import requests
    from werkzeug.serving import make_server

    admin = os.environ.get("TOWEROPS_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
    db = f"towerops_bench_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{db}"')
    conn.close()
    dsn = admin.rsplit("/", 1)[0] + f"/{db}"
    tmp = Path(tempfile.mkdtemp(prefix="towerops-bench-registry-"))
    port = _port()
    from cryptography.fernet import Fernet

    env = dict(os.environ, MLFLOW_WEBHOOK_CACHE_TTL="1", TOWEROPS_WEBHOOK_ENCRYPTION_KEY=Fernet.generate_key().decode())
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "server", "--dsn", dsn, "--port", str(port),
                               "--artifacts-destination", str(tmp / "artifacts"), "--state-dir", str(tmp / "state"),
                               "--workers", "1", "--allow-loopback-webhooks"],
                              cwd=REPO, env=env, stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        if server.poll() is not None:
            raise SystemExit("towerops server exited:\n" + (tmp / "server.log").read_text()[-2000:])
        try:
            if requests.get(url + "/health", timeout=1).ok:
                break
        except requests.RequestException:
            pass
        if time.time() > deadline:
            server.kill()
            raise SystemExit("towerops server did not become healthy in 180 s")
        time.sleep(0.3)
    os.environ["MLFLOW_TRACKING_URI"] = url
    os.environ["TOWEROPS_AUDIT_DB_URL"] = dsn

    from ml.data.synthetic import generate_synthetic, write_synthetic
    from ml.tracking.training import train_run
    from registry.audit import AuditLog
    from registry.gate import GateConfig, RegistryConfig
    from registry.stages import ModelRegistry
    from registry.webhooks import create_app, register_webhook

    write_synthetic(generate_synthetic(n_users=300, n_items=200, n_interactions=6000, seed=3), tmp / "data")
    data = str(tmp / "data")  # the gate evaluates on the candidate's training data, as for UI promotions
    small = {"model.user_embedding_dim": 32, "model.item_embedding_dim": 32, "model.hidden_units": "[64, 32]",
             "features.text_dim": 16, "training.epochs": 2}
    runs = [train_run(data, None, {**small, "training.seed": s}, experiment="bench").run_id for s in (1, 2)]

    deploy_times: list[float] = []
    cfg = RegistryConfig(model_name="bench_tt", gate=GateConfig.from_mapping({"absolute": {"ndcg_at_10": 0.0},
                                                                             "relative": {"ndcg_at_10": 1.0}}))
    reg = ModelRegistry(config=cfg, audit=AuditLog(dsn), deploy_hook=lambda n, v, mv: deploy_times.append(time.time()))
    versions = [reg.register(r).version for r in runs]
    reg.promote(versions[0], data=data)          # warm the gate's evaluation cache for both versions
    reg.promote(versions[1], data=data)

    secret = uuid.uuid4().hex
    rport = _port()
    app = create_app(secret, lambda payload: reg.handle_alias_event(payload))
    httpd = make_server("127.0.0.1", rport, app, threaded=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    hook = register_webhook(reg.client, f"http://127.0.0.1:{rport}/webhooks/mlflow", secret, name="bench")
    time.sleep(1.5)

    def latest_id() -> int:
        e = reg.audit.entries(reg.name, limit=1)
        return e[0].id if e else 0

    ui_audit, ui_deploy, direct_audit, direct_deploy = [], [], [], []
    for i in range(args.rounds):
        holder = reg.alias_version("production")
        target = versions[0] if holder == versions[1] else versions[1]
        # UI path: alias through the REST API, exactly what the registry UI's alias editor sends
        before, n_deploy = latest_id(), len(deploy_times)
        t0 = time.time()
        r = requests.post(url + "/api/2.0/mlflow/registered-models/alias",
                          json={"name": reg.name, "alias": "production", "version": target}, timeout=30)
        r.raise_for_status()
        entry = _wait(lambda: next((e for e in reg.audit.entries(reg.name, limit=3) if e.id > before), None))
        _wait(lambda: len(deploy_times) > n_deploy)
        ui_audit.append(entry.created_at.timestamp() - t0)
        ui_deploy.append(deploy_times[-1] - t0)
        # direct path (baseline): towerops promote of the other version
        other = versions[0] if target == versions[1] else versions[1]
        n_deploy = len(deploy_times)
        t0 = time.time()
        res = reg.promote(other, data=data, trigger="api")
        direct_audit.append(reg.audit.entries(reg.name, limit=1)[0].created_at.timestamp() - t0)
        direct_deploy.append(deploy_times[-1] - t0 if len(deploy_times) > n_deploy else float("nan"))
        assert res.changed

    reg.client.delete_webhook(hook.webhook_id)
    httpd.shutdown()
    server.kill()
    med = lambda xs: round(statistics.median(xs), 3)  # noqa: E731
    print(json.dumps({
        "rounds": args.rounds,
        "ui_alias_via_webhook": {"to_audit_s_median": med(ui_audit), "to_deploy_trigger_s_median": med(ui_deploy),
                                 "to_audit_s": [round(x, 3) for x in ui_audit]},
        "direct_promote_baseline": {"to_audit_s_median": med(direct_audit),
                                    "to_deploy_trigger_s_median": med(direct_deploy)},
        "ratio_ui_vs_direct_to_deploy": round(med(ui_deploy) / med(direct_deploy), 2),
        "note": "gate evaluations cached per version (warm); both paths run the gate, the audit insert and the hook",
    }, indent=2))


if __name__ == "__main__":
    main()
