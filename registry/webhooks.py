"""MLflow webhooks → the registry: promotions made in the MLflow UI get the same gate,
audit and deployment as CLI promotions.

MLflow signs each delivery: `X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret,
"{delivery_id}.{timestamp}.{body}")>`. A missing or bad signature, or a timestamp more than
MAX_AGE_S away from now (old, or in the future), gets 401 and nothing is done. A body over
MAX_BODY_BYTES gets 413 before it is read; an authentic body that is not a JSON object
(`{"entity", "action", "data"}`) gets 400. A delivery id seen within the time window is
answered 200 "duplicate" and not processed again (MLflow retries; an attacker may replay).
Valid deliveries are acknowledged at once (202) and processed in one worker thread, in
order; MLflow delivers fire-and-forget, so `reconcile` catches whatever never arrives.
`serve` runs the app on waitress (a production WSGI server), never Flask's development server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from ml.logs import get_logger

log = get_logger("deployment")

SIGNATURE_HEADER = "X-MLflow-Signature"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
MAX_AGE_S = 300
MAX_BODY_BYTES = 256 * 1024      # MLflow's payloads are a few hundred bytes
MAX_DELIVERY_ID = 200            # characters
EVENTS = ["model_version_alias.created", "model_version_alias.deleted"]


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def sign(secret: str, delivery_id: str, timestamp: str, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret: str, headers: Any, body: bytes, now: float | None = None) -> str | None:
    """None when the delivery is authentic and fresh, else the reason it is not."""
    signature = headers.get(SIGNATURE_HEADER)
    timestamp = headers.get(TIMESTAMP_HEADER)
    delivery = headers.get(DELIVERY_HEADER)
    if not (signature and timestamp and delivery):
        missing = [h for h, v in ((SIGNATURE_HEADER, signature), (TIMESTAMP_HEADER, timestamp),
                                  (DELIVERY_HEADER, delivery)) if not v]
        return f"missing signature headers ({', '.join(missing)})"
    if len(delivery) > MAX_DELIVERY_ID:
        return f"{DELIVERY_HEADER} is longer than {MAX_DELIVERY_ID} characters"
    text = timestamp.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 12):
        return f"bad timestamp {_shown(timestamp, 40)}: {TIMESTAMP_HEADER} must be Unix seconds"
    skew = (now or time.time()) - int(text)
    if skew > MAX_AGE_S:
        return f"timestamp {skew:.0f}s old (limit {MAX_AGE_S}s): a late or replayed delivery"
    if skew < -MAX_AGE_S:
        return (f"timestamp {-skew:.0f}s in the future (limit {MAX_AGE_S}s): check the clocks of the MLflow server "
                "and this receiver (NTP)")
    expected = sign(secret, delivery, timestamp, body.decode("utf-8", errors="replace"))
    # bytes: compare_digest refuses str with non-ASCII characters (a forged header must be a 401, not a 500)
    if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", errors="surrogateescape")):
        return "signature mismatch"
    return None


class DeliveryLog:
    """Delivery ids accepted within the replay window (older ones are refused as stale anyway)."""

    def __init__(self, window_s: float = 2 * MAX_AGE_S, max_entries: int = 100_000) -> None:
        self.window_s, self.max_entries = window_s, max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, delivery_id: str, now: float | None = None) -> bool:
        """Record `delivery_id`; False when it was already recorded within the window."""
        now = time.time() if now is None else now
        with self._lock:
            while self._seen and (now - next(iter(self._seen.values())) > self.window_s
                                  or len(self._seen) >= self.max_entries):
                self._seen.popitem(last=False)
            if delivery_id in self._seen:
                return False
            self._seen[delivery_id] = now
            return True


def parse_payload(body: bytes) -> tuple[dict | None, str | None]:
    """(payload, None) for a JSON object body with the fields the registry reads, else (None, why not)."""
    shape = 'a JSON object {"entity": ..., "action": ..., "data": {...}}'
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"body is not UTF-8 (byte {exc.start}): MLflow sends {shape}"
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"body is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}): expected {shape}"
    except RecursionError:
        return None, f"body is nested too deeply: expected {shape}"
    except ValueError as exc:
        return None, f"body is not JSON ({_shown(str(exc), 120)}): expected {shape}"
    if not isinstance(payload, dict):
        return None, f"body is a JSON {type(payload).__name__}, not an object: expected {shape}"
    for key in ("entity", "action"):
        if key in payload and not isinstance(payload[key], str):
            return None, f"{key} must be a string, got {type(payload[key]).__name__}"
    if "data" in payload and not isinstance(payload["data"], (dict, type(None))):
        return None, f"data must be an object, got {type(payload['data']).__name__}"
    return payload, None


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


def create_app(secret: str, handler: Callable[[dict], Any], max_body_bytes: int = MAX_BODY_BYTES):
    """A Flask app (WSGI) with POST /webhooks/mlflow and GET /health; every answer is JSON."""
    from flask import Flask, jsonify, request
    from werkzeug.exceptions import HTTPException

    if not secret:
        raise ValueError("a webhook secret is required: set TOWEROPS_WEBHOOK_SECRET (the same one given to MLflow)")
    app = Flask("towerops-webhooks")
    processor = WebhookProcessor(handler)
    deliveries = DeliveryLog()
    app.config["processor"] = processor
    app.config["deliveries"] = deliveries
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify(error=f"{exc.name}: {exc.description}"), exc.code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):  # never a traceback to the client; the log has it
        log.exception("webhook receiver: unexpected error")
        return jsonify(error="internal error in the webhook receiver; see logs/deployment.log"), 500

    @app.get("/health")
    def health():
        return jsonify(status="ok", processed=processor.processed, pending=processor.queue.qsize())

    @app.post("/webhooks/mlflow")
    def receive():
        delivery = request.headers.get(DELIVERY_HEADER)
        length = request.content_length
        if length is not None and length > max_body_bytes:
            log.warning("refused webhook delivery %s: body of %d bytes", _shown(delivery), length)
            return jsonify(error=f"body of {length} bytes is over the limit of {max_body_bytes} bytes"), 413
        body = request.stream.read(max_body_bytes + 1)
        if len(body) > max_body_bytes:
            return jsonify(error=f"body is over the limit of {max_body_bytes} bytes"), 413
        problem = verify(secret, request.headers, body)
        if problem:
            log.warning("rejected webhook delivery %s: %s", _shown(delivery), problem)
            return jsonify(error=f"unauthorized: {problem}"), 401
        payload, why = parse_payload(body)
        if payload is None:
            log.warning("refused signed webhook delivery %s: %s", _shown(delivery), why)
            return jsonify(error=why), 400
        if not deliveries.first_time(delivery):
            log.info("duplicate webhook delivery %s: already accepted, not processed again", _shown(delivery))
            return jsonify(status="duplicate", delivery_id=delivery), 200
        log.debug("accepted webhook %s %s.%s", _shown(delivery), payload.get("entity"), payload.get("action"))
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


def make_server(app: Any, host: str = "127.0.0.1", port: int = 8765, threads: int = 4) -> Any:
    """A waitress server for `app` (not started); `.run()` blocks, `.close()` stops. port 0: any free port
    (`.effective_port`)."""
    from waitress import create_server

    return create_server(app, host=host, port=port, threads=threads, max_request_body_size=MAX_BODY_BYTES + 1024,
                         ident="towerops-webhooks", clear_untrusted_proxy_headers=True)


def serve(registry_factory: Callable[[], Any], secret: str, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Blocking production server (waitress, threaded) until interrupted."""
    registry = registry_factory()
    app = create_app(secret, registry.handle_alias_event)
    server = make_server(app, host, port)
    log.info("webhook receiver for %s on http://%s:%s/webhooks/mlflow (waitress)", registry.name, host,
             server.effective_port)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        app.config["processor"].stop()
