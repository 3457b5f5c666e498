"""Monitoring end to end on the tiny model: drift found on shifted data and not on a fresh
unshifted sample (fixed seeds); the monitor job against real MLflow runs (SQLite store),
a loopback webhook receiver and an Evidently workspace; bad input errors."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from ml.data.synthetic import generate_synthetic
from monitoring.alerts import evaluate_alerts
from monitoring.config import load_monitoring_config
from monitoring.run import compute_reports, sample_window

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def bundle(tiny_model_dir):
    from ml.bundle.load import load_bundle

    return load_bundle(tiny_model_dir)


@pytest.fixture(scope="module")
def reference(bundle, tiny_synth):
    from monitoring.reference import build_reference

    return build_reference(bundle, tiny_synth.dataset, load_monitoring_config("configs/monitoring.yaml").reference)


def _alerts(reference, bundle, dataset):
    cfg = load_monitoring_config("configs/monitoring.yaml")
    metrics = {}
    for out in compute_reports(reference, bundle, dataset, None, cfg):
        metrics.update(out.metrics)
    return metrics, {a.name for a in evaluate_alerts(metrics, cfg.alerts)}


def test_unshifted_sample_is_not_flagged(reference, bundle, tiny_synth):
    metrics, alerts = _alerts(reference, bundle, sample_window(tiny_synth.dataset, frac=0.5, seed=12))
    assert alerts == set(), metrics
    assert metrics["item_drift_share"] < 0.5 and metrics["user_drift_share"] < 0.5
    assert metrics["item_embedding_drift"] < 0.6 and metrics["new_category_share"] == 0.0


def test_shifted_data_is_flagged(reference, bundle):
    shifted = generate_synthetic(n_users=300, n_items=200, n_interactions=6000, seed=11, shift=0.8).dataset
    metrics, alerts = _alerts(reference, bundle, shifted)
    assert {"item_data_drift", "item_embedding_drift", "new_categories"} <= alerts, metrics
    assert metrics["item_drift_share"] >= 0.5
    assert metrics["new_genre_values"] == 1.0  # the generator's "new_wave" genre


class _Hook:
    def __init__(self, fail_first: int = 1) -> None:
        self.bodies, self.fail = [], fail_first
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                code = 500 if outer.fail > 0 else 200
                outer.fail -= 1
                self.send_response(code)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "monitor-test")
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    from ml.tracking.runs import set_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    set_experiment("monitor-test", uri)  # artifacts beside the database, not in ./mlruns of the checkout
    exp = mlflow.get_experiment_by_name("monitor-test")
    yield exp
    while mlflow.active_run():
        mlflow.end_run()


def _training_run(model_dir):
    """A run that looks like train_run's: the pyfunc with the bundle, tagged with its URI."""
    import mlflow

    from ml.tracking.training import log_recommender

    with mlflow.start_run(run_name="train") as run:
        info = log_recommender(model_dir)
        mlflow.set_tag("towerops.model_uri", info.model_uri)
    return run.info.run_id


def test_monitor_job_logs_reports_alerts_and_snapshots(mlflow_store, tiny_model_dir, tiny_synth, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from monitoring.prediction_log import write_prediction_log
    from monitoring.reference import log_reference
    from monitoring.run import monitor_run
    from monitoring.workspace import open_project

    run_id = _training_run(tiny_model_dir)
    client = MlflowClient()
    # No reference yet: a clear error naming run and artifact, and no monitor run left behind.
    with pytest.raises(FileNotFoundError, match=rf"run {run_id} has no monitoring reference: artifact monitoring/reference/reference.json"):
        monitor_run(dataset=tiny_synth.dataset, model_uri_or_run_id=run_id, workspace=None)
    assert len(client.search_runs([mlflow_store.experiment_id])) == 1

    log_reference(run_id, tiny_model_dir, tiny_synth.dataset)
    names = {a.path for a in client.list_artifacts(run_id, "monitoring/reference")}
    assert "monitoring/reference/item_embeddings.parquet" in names

    # Empty window: named, no run.
    with pytest.raises(ValueError, match="has no interactions between 2030-01-01"):
        monitor_run(dataset=tiny_synth.dataset, model_uri_or_run_id=run_id, start="2030-01-01", workspace=None)

    # Shifted window + a prediction log with slow requests; the webhook fails once, then accepts.
    hook = _Hook(fail_first=1)
    monkeypatch.setenv("TOWEROPS_ALERT_WEBHOOK_URL", hook.url)
    rng = np.random.default_rng(0)
    log_path = tmp_path / "predictions.jsonl"
    shifted = generate_synthetic(n_users=300, n_items=200, n_interactions=6000, seed=11, shift=0.8).dataset
    ts = shifted.interactions["timestamp"].min()
    write_prediction_log([{"ts": (ts + np.timedelta64(i, "s")).isoformat(), "user_id": f"u{(i % 300) + 1:05d}",
                           "latency_ms": float(rng.gamma(2.0, 150.0)), "top_k": 3,
                           "items": [f"i{(i * 7 + j) % 200 + 1:05d}" for j in range(3)],
                           "scores": [0.3, 0.2, 0.1], "model_version": "1"} for i in range(400)], log_path)
    cfg = load_monitoring_config("configs/monitoring.yaml", {"webhook": {"backoff_s": 0.01}})
    ws = tmp_path / "ws"
    result = monitor_run(dataset=shifted, model_uri_or_run_id=run_id, config=cfg, prediction_log=log_path, workspace=ws)

    assert result.exit_code == 1
    fired = {a.name for a in result.alerts}
    assert {"item_data_drift", "latency_p99"} <= fired
    assert len(hook.bodies) == 2 and hook.bodies[1] == hook.bodies[0]
    assert {a["name"] for a in hook.bodies[1]["alerts"]} == fired

    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["towerops.model_run_id"] == run_id
    assert run.data.metrics["item_drift_share"] >= 0.5 and "latency_p99_ms" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(result.run_id, "monitoring/reports")}
    for name in ("item_drift", "user_drift", "embedding_drift", "prediction_drift", "data_quality", "performance"):
        assert {f"monitoring/reports/{name}.html", f"monitoring/reports/{name}.json"} <= logged
    workspace, project = open_project(ws)
    assert {str(s) for s in workspace.list_runs(project.id)} == set(result.snapshot_ids)
    assert len(result.snapshot_ids) == len(result.report_paths) >= 6
