"""A team's set-up, run as a team runs it: a PostgreSQL-backed tracking server, the webhook
receiver, a "laptop" CLI and the cron reconcile, each its own process in its own working
directory with its own HOME, sharing one towerops.yaml (by $TOWEROPS_CONFIG) and nothing else.

The laptop trains from a relative data folder (`--data data`) that no other process can see,
with no training section in the config (the packaged defaults plus --set), so the receiver and
reconcile can gate only through what the run logged to the tracking server. Then:
a gate-failing UI-style alias change is reverted and audited by the receiver; a passing one is
deployed; with the receiver down, a dropped delivery is caught by reconcile; `registry history`
prints the same from all three folders; `towerops doctor` passes on the whole set-up.

Also: `towerops doctor` and `towerops webhooks serve` from a folder outside the repository with
no towerops.yaml at all (the packaged defaults), and a doctor that fails names what to fix.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psycopg2
import pytest
import requests
import yaml
from support.helpers import candidate_port, is_port_clash, wait_for_port

from ml.data.loaders import write_folder

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1800)]

GATE = {"absolute": {"ndcg_at_10": 0.0}, "relative": {"ndcg_at_10": 0.05}, "baselines": {}, "health": {}}
TINY = ["--set", "model.user_embedding_dim=32", "--set", "model.item_embedding_dim=32", "--set",
        "model.hidden_units=[64, 32]", "--set", "features.text_dim=16", "--set", "training.patience=2",
        "--set", "training.batch_size=128"]
MODEL = "team_tt"


class Host:
    """One process's world: a working directory, a HOME, logs; the shared config by $TOWEROPS_CONFIG."""

    def __init__(self, root: Path, name: str, base_env: dict[str, str]) -> None:
        self.cwd = root / name
        (self.cwd / "home").mkdir(parents=True)
        self.env = {**base_env, "HOME": str(self.cwd / "home"), "TOWEROPS_LOG_DIR": str(self.cwd / "home" / "logs")}

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "pipelines.cli", *args]

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*args), cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def ok(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        proc = self.run(*args, timeout=timeout)
        assert proc.returncode == 0, f"towerops {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-4000:]}"
        return proc


def _audit(dsn: str) -> list[tuple]:
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT action, version, trigger, gate_passed FROM towerops_stage_audit WHERE model_name = %s "
                        "ORDER BY id", (MODEL,))
            return cur.fetchall()
    finally:
        conn.close()


def _wait(predicate, what: str, timeout: float = 180.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout}s")


def _alias(server, version: str) -> None:
    """What the MLflow UI's alias editor sends (the REST handler, so webhooks fire)."""
    r = requests.post(f"{server.url}/api/2.0/mlflow/registered-models/alias",
                      json={"name": MODEL, "alias": "production", "version": version}, timeout=30)
    assert r.status_code == 200, r.text


def _holder(server) -> str | None:
    r = requests.get(f"{server.url}/api/2.0/mlflow/registered-models/alias",
                     params={"name": MODEL, "alias": "production"}, timeout=30)
    return r.json()["model_version"]["version"] if r.status_code == 200 else None


def _start_receiver(host: Host, config: Path, settings: dict) -> tuple[subprocess.Popen, int]:
    """`towerops webhooks serve` on a fresh port (another one if that one was taken meanwhile)."""
    for _ in range(5):
        port = candidate_port()
        settings["webhooks"]["port"] = port
        settings["webhooks"]["url"] = f"http://127.0.0.1:{port}/webhooks/mlflow"
        config.write_text(yaml.safe_dump(settings))
        log = open(host.cwd / "home" / "receiver.log", "ab")
        proc = subprocess.Popen(host.argv("webhooks", "serve"), cwd=host.cwd, env=host.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return proc, port
            except requests.RequestException:
                time.sleep(0.3)
        output = (host.cwd / "home" / "receiver.log").read_text(errors="replace")
        _stop(proc)
        if not is_port_clash(output):
            raise AssertionError(f"the receiver did not start:\n{output[-4000:]}")
    raise AssertionError("no free port for the receiver")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _pointer(root: Path) -> dict:
    path = root / "deployments" / "model-artifacts" / MODEL / "production.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def test_receiver_laptop_and_reconcile_in_different_folders_end_promotions_the_same_way(
        mlflow_server_factory, pg_dsn, tiny_synth, tmp_path) -> None:
    server = mlflow_server_factory(env={"MLFLOW_WEBHOOK_CACHE_TTL": "1"})
    secret = uuid.uuid4().hex
    shared = tmp_path / "shared" / "towerops.yaml"
    shared.parent.mkdir()
    settings = {
        "tracking": {"uri": server.url},
        "audit": {"url": "env:TEAM_AUDIT_DSN"},
        "webhooks": {"secret": "env:TEAM_HOOK_SECRET", "host": "127.0.0.1", "port": 1},
        "registry": {"model_name": MODEL, "gate": GATE},
        "deployment": {"storage": {"backend": "local", "local_dir": str(tmp_path / "deployments"), "tfjs": False,
                                   "retry": {"attempts": 2, "backoff_s": 0.05}}},
    }
    shared.write_text(yaml.safe_dump(settings))
    base = server.client_env(TOWEROPS_CONFIG=str(shared), TEAM_AUDIT_DSN=pg_dsn, TEAM_HOOK_SECRET=secret)
    for var in ("MLFLOW_TRACKING_URI", "TOWEROPS_AUDIT_DB_URL", "TOWEROPS_DEPLOY_CONFIG", "TOWEROPS_DEPLOY_DIR",
                "TOWEROPS_DEPLOY_DSN", "SUPABASE_DB_URL", "SUPABASE_URL", "TOWEROPS_S3_ENDPOINT_URL",
                "TOWEROPS_WEBHOOK_SECRET", "TOWEROPS_DEPLOY_BACKEND", "TOWEROPS_SUPABASE_STORAGE_URL"):
        base.pop(var, None)                                   # the config file alone says where everything is
    laptop, receiver_host, cron = (Host(tmp_path, n, base) for n in ("laptop", "receiver", "cron"))
    write_folder(tiny_synth.dataset, laptop.cwd / "data")

    # the laptop trains from ./data: a path that means nothing on the other hosts
    runs = {}
    for label, extra in (("good", ["--set", "training.epochs=2", "--set", "training.seed=3"]),
                         ("bad", ["--set", "training.epochs=1", "--set", "training.learning_rate=1e-7"])):
        proc = laptop.ok("train", "--data", "data", *TINY, *extra, "--run-name", label)
        runs[label] = re.search(r"run ([0-9a-f]{32}) FINISHED", proc.stderr).group(1)
    promoted = laptop.ok("promote", "--run-id", runs["good"])
    assert "-> production" in promoted.stdout and _holder(server) == "1"
    assert _pointer(tmp_path)["registry_version"] == "1"
    assert "v2" in laptop.ok("register", "--run-id", runs["bad"]).stdout
    assert "v3" in laptop.ok("register", "--run-id", runs["good"]).stdout

    receiver, port = _start_receiver(receiver_host, shared, settings)
    try:
        registered = laptop.ok("webhooks", "register")                     # webhooks.url from the config
        assert f"http://127.0.0.1:{port}/webhooks/mlflow" in registered.stdout
        doctor = laptop.run("doctor", "--format", "json")
        checks = {c["name"]: c for c in json.loads(doctor.stdout)["checks"]}
        assert doctor.returncode == 0, doctor.stdout
        assert {n: c["status"] for n, c in checks.items() if n != "storage"} == {
            "config": "ok", "tracking server": "ok", "schema": "ok", "audit database": "ok", "webhook": "ok"}
        assert checks["storage"]["status"] == "warn"                     # local folder behind a team server
        time.sleep(1.5)                                                  # the server's webhook cache (TTL 1 s)

        _alias(server, "2")                                              # fails the gate
        _wait(lambda: ("refused", "2", "webhook", False) in _audit(pg_dsn), "the receiver's refusal of v2")
        _wait(lambda: _holder(server) == "1", "the alias put back on v1")
        assert _pointer(tmp_path)["registry_version"] == "1"

        _alias(server, "3")                                              # passes: deployed
        _wait(lambda: ("promote", "3", "webhook", True) in _audit(pg_dsn), "the receiver's promotion of v3")
        _wait(lambda: _pointer(tmp_path).get("registry_version") == "3", "v3 deployed")
    finally:
        _stop(receiver)
    log = (receiver_host.cwd / "home" / "receiver.log").read_text(errors="replace")
    assert "reconcile will catch up" not in log and "Traceback" not in log

    _alias(server, "2")                                                  # the receiver is down: delivery lost
    assert _audit(pg_dsn)[-1][:2] == ("promote", "3")
    caught = cron.ok("registry", "reconcile")
    assert caught.stdout.startswith(f"refused: {MODEL} v2 -> production") and "put back on v3" in caught.stdout
    assert _holder(server) == "3" and _audit(pg_dsn)[-1][:3] == ("refused", "2", "reconcile")
    assert cron.ok("registry", "reconcile").stdout.startswith("in sync")

    histories = [h.ok("registry", "history", "--format", "json").stdout for h in (laptop, receiver_host, cron)]
    assert histories[0] == histories[1] == histories[2]
    entries = json.loads(histories[0])
    assert [(e["action"], e["version"], e["trigger"]) for e in reversed(entries)] == [
        ("register", "1", "cli"), ("promote", "1", "cli"), ("register", "2", "cli"), ("register", "3", "cli"),
        ("refused", "2", "webhook"), ("promote", "3", "webhook"), ("refused", "2", "reconcile")]
    for host in (laptop, receiver_host, cron):                          # nothing local: one trail, one store
        assert not list(host.cwd.glob("*.db")) and not (host.cwd / "mlruns").exists()


def test_doctor_and_webhooks_serve_work_outside_the_repository_without_a_config(tmp_path) -> None:
    outside = tmp_path / "anywhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOWEROPS_", "MLFLOW_"))}
    env.update(HOME=str(tmp_path / "home"), TOWEROPS_LOG_DIR=str(tmp_path / "logs"),
               TOWEROPS_WEBHOOK_SECRET=uuid.uuid4().hex, TF_CPP_MIN_LOG_LEVEL="3")
    cli = [sys.executable, "-m", "pipelines.cli"]
    doctor = subprocess.run([*cli, "doctor", "--format", "json"], cwd=outside, env=env, capture_output=True,
                            text=True, timeout=600)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    checks = {c["name"]: c["status"] for c in json.loads(doctor.stdout)["checks"]}
    assert checks == {"config": "warn", "tracking server": "ok", "schema": "ok", "audit database": "ok",
                      "storage": "ok", "webhook": "skip"}                 # packaged defaults: a one-person set-up

    port = candidate_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([*cli, "webhooks", "serve", "--port", str(port)], cwd=outside, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, timeout=180)
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        _stop(proc)
    assert "Traceback" not in log_path.read_text(errors="replace")

    broken = tmp_path / "broken.yaml"                                    # a doctor that fails says what to fix
    broken.write_text(yaml.safe_dump({"tracking": {"uri": "http://127.0.0.1:9/"}, "audit": {"allow_local": False}}))
    failing = subprocess.run([*cli, "--config", str(broken), "doctor", "--format", "json"], cwd=outside, env=env,
                             capture_output=True, text=True, timeout=600)
    assert failing.returncode == 1
    checks = {c["name"]: c for c in json.loads(failing.stdout)["checks"]}
    assert checks["tracking server"]["status"] == "fail" and "towerops server" in checks["tracking server"]["fix"]
    assert checks["audit database"]["status"] == "fail" and "audit.url" in checks["audit database"]["fix"]
