"""MLflow's own exceptions from any command: one `error:` line that says what to fix, exit 2, no traceback."""

from __future__ import annotations

import pytest


def _mlflow_error(message: str):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


@pytest.fixture
def local_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TOWEROPS_AUDIT_DB_URL", f"sqlite:///{tmp_path / 'audit.db'}")
    monkeypatch.setenv("TOWEROPS_WEBHOOK_SECRET", "a-webhook-secret")
    monkeypatch.chdir(tmp_path)


def test_an_http_webhook_url_refused_by_the_server_names_the_flag_that_allows_it(local_store, monkeypatch) -> None:
    from typer.testing import CliRunner

    import registry.webhooks
    from pipelines.cli import app

    def refuse(*args, **kwargs):  # what the server answers when only https is allowed (mlflow.utils.validation)
        raise _mlflow_error("Invalid webhook URL scheme: 'http'. Allowed schemes are: https.")

    monkeypatch.setattr(registry.webhooks, "register_webhook", refuse)
    out = CliRunner().invoke(app, ["webhooks", "register", "--url", "http://10.0.0.5:8765/webhooks/mlflow"])
    assert out.exit_code == 2
    assert out.output.count("error:") == 1 and "Traceback" not in out.output
    assert "--allow-loopback-webhooks" in out.output and "MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https" in out.output


def test_any_mlflow_exception_becomes_one_line(local_store, monkeypatch) -> None:
    from typer.testing import CliRunner

    import registry.stages
    from pipelines.cli import app

    def boom(self, *args, **kwargs):
        raise _mlflow_error("Registered Model with name=two_tower not found")

    monkeypatch.setattr(registry.stages.ModelRegistry, "status", boom)
    out = CliRunner().invoke(app, ["registry", "status"])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "error: MLflow INVALID_PARAMETER_VALUE: Registered Model with name=two_tower not found" in out.output


@pytest.mark.parametrize("keep_thread", [False, True])
def test_the_console_entry_keeps_exit_status_output_and_atexit_work(tmp_path, keep_thread: bool) -> None:
    """`pipelines.cli.run` leaves with os._exit once TensorFlow is loaded (no interpreter teardown), after the
    atexit handlers ran and stdio was flushed; with a non-daemon thread still working it exits as Python does."""
    import subprocess
    import sys

    from support.helpers import REPO_ROOT

    marker = tmp_path / "atexit.txt"
    script = f"""
import atexit, sys, threading, time
import tensorflow
atexit.register(lambda: open({str(marker)!r}, "w").write("ran"))
if {keep_thread}:
    threading.Thread(target=lambda: (time.sleep(0.5), print("thread done", flush=True))).start()
sys.stdout.write("buffered result line\\n")   # not flushed: run() must flush it
sys.argv = ["towerops", "no-such-command"]
from pipelines.cli import run
run()
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "No such command" in proc.stderr
    assert "buffered result line" in proc.stdout
    assert marker.read_text() == "ran"
    assert ("thread done" in proc.stdout) is keep_thread
