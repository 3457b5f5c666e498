"""MLflow webhooks → the registry: promotions made in the MLflow UI get the same gate,
audit and deployment as CLI promotions.

MLflow signs each delivery: `X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret,
"{delivery_id}.{timestamp}.{body}")>`. A missing or bad signature, or a stale timestamp,
gets 401 and nothing is done. Valid deliveries are acknowledged at once (202) and processed
in one worker thread, in order; MLflow delivers fire-and-forget, so `reconcile` catches
whatever never arrives.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import threading
import time
from typing import Any, Callable

from ml.logs import get_logger

log = get_logger("deployment")

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
MAX_AGE_S = 300
EVENTS = ["model_version_alias.created", "model_version_alias.deleted"]


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Any, body: bytes, now: float | None = None) -> str | None:
    """None when the delivery is authentic and fresh, else the reason it is not."""
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    delivery = headers.get(DELIVERY_HEADER)
    if not (signature and timestamp and delivery):
        return "missing signature headers"
    try:
        age = abs((now or time.time()) - int(timestamp))
    except ValueError:
        return "bad timestamp"
    if age > MAX_AGE_S:
        return f"timestamp {age:.0f}s old (limit {MAX_AGE_S}s)"
    expected = sign(secret, delivery, timestamp, body.decode("utf-8", errors="replace"))
    if not hmac.compare_digest(expected, signature):
        return "signature mismatch"
    return None


class WebhookProcessor:
    """Queue + worker thread calling `handler(payload)` for each accepted delivery."""

    def __init__(self, handler: Callable[[dict], Any]) -> None:
        self.handler = handler
        self.queue: "queue.Queue[dict | None]" = queue.Queue()
        self.processed = 0
        self._thread = threading.Thread(target=self._run, name="towerops-webhooks", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            payload = self.queue.get()
            if payload is None:
                return
            try:
                self.handler(payload)
            except Exception:  # noqa: BLE001 - a failed delivery is caught up by reconcile
                log.exception("webhook processing failed; `towerops registry reconcile` will catch up")
            finally:
                self.processed += 1
                self.queue.task_done()

    def stop(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=30)


def create_app(secret: str, handler: Callable[[dict], Any]):
    """A Flask app with POST /webhooks/mlflow and GET /health."""
    from flask import Flask, jsonify, request

    if not secret:
        raise ValueError("a webhook secret is required: set TOWEROPS_WEBHOOK_SECRET (the same one given to MLflow)")
    app = Flask("towerops-webhooks")
    processor = WebhookProcessor(handler)
    app.config["processor"] = processor

    @app.get("/health")
    def health():
        return jsonify(status="ok", processed=processor.processed, pending=processor.queue.qsize())

    @app.post("/webhooks/mlflow")
    def receive():
        body = request.get_data()
        problem = verify(secret, request.headers, body)
        if problem:
            log.warning("rejected webhook delivery %s: %s", request.headers.get(DELIVERY_HEADER), problem)
            return jsonify(error=f"unauthorized: {problem}"), 401
        try:
            payload = json.loads(body)
        except json.JSONDecodeError as exc:
            return jsonify(error=f"body is not JSON: {exc}"), 400
        log.debug("accepted webhook %s %s.%s", request.headers.get(DELIVERY_HEADER), payload.get("entity"),
                  payload.get("action"))
        processor.queue.put(payload)
        return jsonify(status="accepted"), 202

    return app


def register_webhook(client: Any, url: str, secret: str, name: str = "towerops-registry") -> Any:
    """Create (or update) the MLflow webhook that points at our receiver."""
    existing = [w for w in client.list_webhooks() if w.name == name]
    if existing:
        return client.update_webhook(existing[0].webhook_id, url=url, events=EVENTS, secret=secret, status="ACTIVE")
    return client.create_webhook(name=name, url=url, events=EVENTS, secret=secret,
                                 description="towerops: gate, audit and deploy production alias changes")


def serve(registry_factory: Callable[[], Any], secret: str, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Blocking server (werkzeug, threaded)."""
    from werkzeug.serving import make_server

    registry = registry_factory()
    app = create_app(secret, registry.handle_alias_event)
    server = make_server(host, port, app, threaded=True)
    log.info("webhook receiver for %s on http://%s:%d/webhooks/mlflow", registry.name, host, port)
    try:
        server.serve_forever()
    finally:
        app.config["processor"].stop()
