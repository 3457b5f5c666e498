"""The tracking server is SIGKILLed in the middle of training.

Either the server is back within the MLflow client's retry window and the run carries
on to FINISHED with everything logged, or the client gives up with a clear error and,
once the server is back, the run is FAILED. Never a FINISHED run with missing parts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from support.helpers import REPO_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPOCHS = 24  # the trainer is paused (SIGSTOP) at its first logged epoch, so the kill lands mid-training
TINY = ["--set", "model.user_embedding_dim=32", "--set", "model.item_embedding_dim=32",
        "--set", "model.hidden_units=[64,32]", "--set", "training.batch_size=128",
        "--set", f"training.epochs={EPOCHS}", "--set", f"training.patience={EPOCHS}"]
ARTIFACTS = {"data_fingerprint.json", "config.json", "metadata.json", "history.json", "training_curves.png",
             "preprocessing", "keras", "saved_model"}


def _api(server, endpoint: str, **params) -> dict:
    resp = requests.get(f"{server.url}/api/2.0/mlflow/{endpoint}", params=params, timeout=30)
    resp.raise_for_status()
    return resp.json()


def _wait_first_epoch(server, experiment: str, proc: subprocess.Popen, out: Path, timeout: float = 300) -> str:
    """Run id once the run has its first per-epoch metric on the server."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) before the first epoch was logged:\n"
                        f"{out.read_text()[-3000:]}")
        try:
            exp = _api(server, "experiments/get-by-name", experiment_name=experiment)["experiment"]
            runs = requests.post(f"{server.url}/api/2.0/mlflow/runs/search", timeout=10,
                                 json={"experiment_ids": [exp["experiment_id"]]}).json().get("runs", [])
            if runs:
                run_id = runs[0]["info"]["run_id"]
                if _api(server, "metrics/get-history", run_id=run_id, metric_key="loss").get("metrics"):
                    return run_id
        except requests.RequestException:
            pass
        time.sleep(0.2)
    pytest.fail(f"no epoch metric on the server after {timeout}s:\n{out.read_text()[-3000:]}")


def _loss_steps(server, run_id: str) -> list[int]:
    history = _api(server, "metrics/get-history", run_id=run_id, metric_key="loss").get("metrics", [])
    return sorted(m["step"] for m in history)


def _pause(proc: subprocess.Popen, server, run_id: str) -> int:
    """SIGSTOP the training process group; the number of epochs it had logged (fewer than EPOCHS)."""
    os.killpg(proc.pid, signal.SIGSTOP)
    logged = len(_loss_steps(server, run_id))
    if logged >= EPOCHS:
        os.killpg(proc.pid, signal.SIGCONT)
        pytest.fail(f"training logged all {EPOCHS} epochs before it could be paused")
    return logged


def _wait_for_line(out: Path, proc: subprocess.Popen, text: str, timeout: float = 300) -> None:
    """Until the training output holds `text` (the process must still run)."""
    deadline = time.time() + timeout
    while text not in out.read_text(errors="replace"):
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) before printing {text!r}:\n{out.read_text()[-3000:]}")
        if time.time() > deadline:
            pytest.fail(f"training never printed {text!r}:\n{out.read_text()[-3000:]}")
        time.sleep(0.2)


def test_server_back_within_retry_window_run_carries_on(mlflow_server, tiny_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.log"
    env = mlflow_server.client_env(MLFLOW_EXPERIMENT_NAME="fault-resume", MLFLOW_HTTP_REQUEST_MAX_RETRIES="6",
                                   MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="2", TOWEROPS_LOG_DIR=str(tmp_path / "logs"))
    with open(out, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", "--data", str(tiny_data_dir),
                                 "--model-dir", str(tmp_path / "model"), *TINY],
                                cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run_id = _wait_first_epoch(mlflow_server, "fault-resume", proc, out)
        logged = _pause(proc, mlflow_server, run_id)
        mlflow_server.kill()
        os.killpg(proc.pid, signal.SIGCONT)
        # the next epoch's line is printed just before its metrics are sent: from there on the
        # trainer is retrying against the dead server
        _wait_for_line(out, proc, f"epoch {logged + 1}/{EPOCHS}")
        mlflow_server.start()  # same database, same port, inside the retry window (6 retries, backoff 2: ~2 min)
        rc = proc.wait(timeout=480)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = out.read_text()
    assert rc == 0, log[-4000:]
    run = _api(mlflow_server, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FINISHED"
    metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
    assert metrics["epochs_run"] == EPOCHS
    assert _loss_steps(mlflow_server, run_id) == list(range(EPOCHS)), "an epoch's metrics were lost in the outage"
    listed = {f["path"] for f in _api(mlflow_server, "artifacts/list", run_id=run_id).get("files", [])}
    assert ARTIFACTS <= listed
    assert any(p.name == "MLmodel" for p in Path(mlflow_server.artifacts).rglob("MLmodel"))


def test_server_down_past_retry_window_run_ends_failed(mlflow_server, tiny_data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "train.log"
    env = mlflow_server.client_env(MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
                                   TOWEROPS_TRACKING_RECOVERY_S="300", TOWEROPS_LOG_DIR=str(tmp_path / "logs"))
    params = ["-P", f"data={tiny_data_dir}", "-P", f"epochs={EPOCHS}", "-P", f"patience={EPOCHS}",
              "-P", "embedding_dim=32", "-P", "hidden_units=[64,32]", "-P", "batch_size=128",
              "-P", f"model_dir={tmp_path / 'model'}"]
    with open(out, "wb") as fh:
        proc = subprocess.Popen(["mlflow", "run", ".", "-e", "train", "--env-manager", "local",
                                 "--experiment-name", "fault-fail", *params],
                                cwd=REPO_ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        run_id = _wait_first_epoch(mlflow_server, "fault-fail", proc, out)
        _pause(proc, mlflow_server, run_id)
        mlflow_server.kill()
        os.killpg(proc.pid, signal.SIGCONT)
        deadline = time.time() + 180
        while "tracking server unreachable during run" not in out.read_text():  # the client gave up retrying
            assert proc.poll() is None, out.read_text()[-3000:]
            assert time.time() < deadline, out.read_text()[-3000:]
            time.sleep(0.5)
        mlflow_server.start()
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = " ".join(out.read_text().split())
    assert rc != 0
    assert f"stopped answering during run {run_id}" in log and "marked FAILED" in log
    assert "succeeded" not in log
    run = _api(mlflow_server, "runs/get", run_id=run_id)["run"]
    assert run["info"]["status"] == "FAILED" and run["info"].get("end_time")
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["towerops.failure"] == "tracking server unreachable during training"
    assert "towerops.model_uri" not in tags  # the pyfunc was never logged
    steps = _loss_steps(mlflow_server, run_id)
    assert steps == list(range(len(steps))) and 0 < len(steps) < EPOCHS
