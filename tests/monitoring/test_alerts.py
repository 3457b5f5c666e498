"""Alerts: thresholds, log levels, webhook delivery with retries to a real loopback receiver,
rollback policy; prediction-log parsing and per-window performance."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from monitoring.alerts import Alert, WebhookDeliveryError, apply_rollback_policy, deliver_alerts, evaluate_alerts, log_alerts, post_webhook
from monitoring.config import load_monitoring_config, parse_config
from monitoring.prediction_log import performance_windows, read_prediction_log, write_prediction_log

RULES = [
    {"name": "item_data_drift", "metric": "item_drift_share", "op": ">=", "threshold": 0.5, "severity": "error"},
    {"name": "latency_p99", "metric": "latency_p99_ms", "op": ">", "threshold": 250, "severity": "warning"},
]


class _Receiver:
    """HTTP server on a free loopback port answering `statuses` in turn (then 200), recording bodies."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.bodies = list(statuses), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                outer.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                status = outer.statuses.pop(0) if outer.statuses else 200
                self.send_response(status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    made = []

    def make(statuses):
        made.append(_Receiver(statuses))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_thresholds_fire_and_skip_missing_metrics():
    cfg = parse_config({"alerts": RULES})
    alerts = evaluate_alerts({"item_drift_share": 0.5, "latency_p99_ms": 100.0}, cfg.alerts)
    assert [a.name for a in alerts] == ["item_data_drift"]
    assert evaluate_alerts({"item_drift_share": 0.49}, cfg.alerts) == []


def test_repo_config_loads_and_bad_config_is_named(tmp_path):
    cfg = load_monitoring_config("configs/monitoring.yaml")
    assert {"like_rate_drop", "item_embedding_drift", "latency_p99"} <= {a.name for a in cfg.alerts}
    bad = tmp_path / "m.yaml"
    bad.write_text("alerts:\n  - {name: x, metric: m, op: '=>', threshold: 1}\n")
    with pytest.raises(ValueError, match=r"alerts.0.op='=>' is unknown: use >, >=, < or <="):
        load_monitoring_config(bad)
    with pytest.raises(ValueError, match="rollback.on_alerts names \\['nope'\\]"):
        parse_config({"alerts": RULES, "rollback": {"enabled": True, "on_alerts": ["nope"]}})


def test_alert_is_delivered_after_a_retry(receiver, monkeypatch, tmp_path):
    rec = receiver([500])
    monkeypatch.setenv("TEST_HOOK_URL", rec.url)
    cfg = parse_config({"alerts": RULES, "webhook": {"url_env": "TEST_HOOK_URL", "attempts": 3, "backoff_s": 0.01}})
    alerts = evaluate_alerts({"item_drift_share": 0.8, "latency_p99_ms": 400.0}, cfg.alerts)
    used = deliver_alerts(alerts, cfg, {"model": "models:/two_tower@production", "run_id": "abc"})
    assert used == 2 and len(rec.bodies) == 2
    body = rec.bodies[-1]
    assert "item_data_drift" in body["text"] and "latency_p99" in body["text"]
    assert body["severity"] == "error"
    assert {a["name"] for a in body["alerts"]} == {"item_data_drift", "latency_p99"}
    assert body["alerts"][0]["value"] == pytest.approx(0.8)
    assert body["context"]["run_id"] == "abc"


def test_webhook_gives_up_and_does_not_retry_client_errors(receiver):
    always_down = receiver([503, 503, 503])
    with pytest.raises(WebhookDeliveryError, match="after 3 attempt"):
        post_webhook(always_down.url, {"text": "x"}, attempts=3, backoff_s=0.01)
    refused = receiver([404])
    with pytest.raises(WebhookDeliveryError, match="HTTP 404"):
        post_webhook(refused.url, {"text": "x"}, attempts=3, backoff_s=0.01)
    assert len(refused.bodies) == 1


def test_alerts_log_at_warn_and_error():
    import logging
    from pathlib import Path

    logger = logging.getLogger("towerops.monitoring")
    log_alerts([Alert("a_warn", "m1", 1.0, ">", 0.5, "warning"), Alert("b_err", "m2", 2.0, ">", 1.0, "error")])
    files = [h.baseFilename for h in logger.handlers if isinstance(h, logging.FileHandler)]
    assert files and Path(files[0]).name == "monitoring.log"
    for h in logger.handlers:
        h.flush()
    text = Path(files[0]).read_text()
    assert any("WARNING" in line and "a_warn" in line for line in text.splitlines())
    assert any("ERROR" in line and "b_err" in line for line in text.splitlines())


def test_rollback_policy_calls_the_injected_rollback_only_for_named_alerts():
    cfg = parse_config({"alerts": RULES, "rollback": {"enabled": True, "on_alerts": ["item_data_drift"]}})
    calls = []
    stub = lambda **kw: calls.append(kw) or "rolled back to v1"  # noqa: E731
    latency = [Alert("latency_p99", "latency_p99_ms", 300, ">", 250, "warning")]
    assert apply_rollback_policy(latency, cfg, stub) is None and calls == []
    drift = [Alert("item_data_drift", "item_drift_share", 0.9, ">=", 0.5, "error")]
    assert apply_rollback_policy(drift, cfg, stub) == "rolled back to v1"
    assert calls[0]["model_name"] == "two_tower" and calls[0]["alias"] == "production"
    assert "item_data_drift" in calls[0]["reason"]
    disabled = parse_config({"alerts": RULES})
    assert apply_rollback_policy(drift, disabled, stub) is None and len(calls) == 1


def test_prediction_log_windows_and_errors(tmp_path):
    path = tmp_path / "predictions.jsonl"
    recs = [{"ts": f"2026-11-03T12:0{m}:00Z", "user_id": "u1", "latency_ms": float(10 + m), "top_k": 2,
             "items": ["i1", "i2"], "scores": [0.9, 0.5], "model_version": "1"} for m in range(6)]
    write_prediction_log(recs, path)
    frame = read_prediction_log(path)
    assert len(frame) == 6 and frame["ts"].dt.tz is None
    win = performance_windows(frame, "5min")
    assert win["requests"].tolist() == [5, 1]
    assert win["throughput_rps"].iloc[0] == pytest.approx(5 / 300)
    assert win["latency_p99_ms"].iloc[1] == pytest.approx(15.0)
    assert len(read_prediction_log(path, start="2026-11-03T12:03:00")) == 3
    write_prediction_log([{**recs[0], "ts": "2026-11-03T12:09:00Z", "items": [], "scores": [], "top_k": None,
                           "status": "error", "error": "unknown user_id"}], path)
    from monitoring.reports import performance_report

    perf = performance_report(read_prediction_log(path), "5min")
    assert perf.metrics["requests"] == 7 and perf.metrics["error_share"] == pytest.approx(1 / 7)
    bad = tmp_path / "bad.jsonl"
    write_prediction_log([{k: v for k, v in recs[0].items() if k != "latency_ms"}], bad)
    write_prediction_log([recs[0]], bad)
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing field\(s\) latency_ms"):
        read_prediction_log(bad)
