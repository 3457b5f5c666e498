"""The MLflow webhook receiver (registry/webhooks.py) against hostile deliveries.

Correctly signed bodies that are not JSON objects get 400, replays of a delivery id are
not processed twice, bodies over the limit get 413, a future timestamp is reported as
such, and the receiver runs on waitress. A property-based part signs random bodies and
headers: zero 5xx, and the handler only ever sees JSON objects.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.helpers import REPO_ROOT, PortClash, is_port_clash, mlflow_env, start_on_free_port

from registry.webhooks import (
    DELIVERY_HEADER,
    MAX_AGE_S,
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    create_app,
    make_server,
    sign,
)

SECRET = "whsec-test-" + uuid.uuid4().hex
ALIAS_EVENT = {"entity": "model_version_alias", "action": "created",
               "data": {"name": "two_tower", "alias": "production", "version": "1"}}


def _serve_until_closed(server) -> None:
    """waitress' loop in a thread; `server.close()` from the test ends it (the loop may then see a closed fd)."""
    try:
        server.run()
    except OSError:
        pass


class Recorder:
    """The handler: records payloads (in the receiver's worker thread)."""

    def __init__(self) -> None:
        self.payloads: list = []
        self.lock = threading.Lock()

    def __call__(self, payload) -> None:
        with self.lock:
            self.payloads.append(payload)


@pytest.fixture
def receiver():
    handler = Recorder()
    app = create_app(SECRET, handler)
    yield app, app.test_client(), handler
    app.config["processor"].stop()


def headers_for(body: bytes | str, delivery: str | None = None, ts: int | str | None = None,
                secret: str = SECRET) -> dict[str, str]:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    delivery = delivery or uuid.uuid4().hex
    ts = str(int(time.time()) if ts is None else ts)
    return {SIGNATURE_HEADER: sign(secret, delivery, ts, text), TIMESTAMP_HEADER: ts, DELIVERY_HEADER: delivery,
            "Content-Type": "application/json"}


def deliver(client, body: bytes | str, **kw):
    return client.post("/webhooks/mlflow", data=body, headers=headers_for(body, **kw))


def drained(app) -> None:
    app.config["processor"].queue.join()


# ------------------------------------------------------------------ each case of issue 15
@pytest.mark.parametrize("body, message", [
    ("[1, 2, 3]", "body is a JSON list, not an object"),
    ('"model_version_alias"', "body is a JSON str, not an object"),
    ("null", "body is a JSON NoneType, not an object"),
    ("42", "body is a JSON int, not an object"),
    (b'{"entity": "\xff\xfe"}', "body is not UTF-8"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"entity": ' + "[" * 50_000 + "]" * 50_000 + "}", "nested too deeply"),
    ('{"entity": "model_version_alias", ', "body is not JSON"),
    ('{"entity": 5, "action": "created"}', "entity must be a string"),
    ('{"entity": "model_version_alias", "data": [1]}', "data must be an object"),
])
def test_signed_body_that_is_not_a_json_object_is_400(receiver, body, message) -> None:
    app, client, handler = receiver
    resp = deliver(client, body)
    assert resp.status_code == 400, resp.get_data(as_text=True)[:300]
    assert message in resp.get_json()["error"]
    ok = deliver(client, json.dumps(ALIAS_EVENT))                      # and it keeps serving
    assert ok.status_code == 202
    drained(app)
    assert handler.payloads == [ALIAS_EVENT]


def test_replayed_delivery_id_is_not_processed_again(receiver) -> None:
    app, client, handler = receiver
    body = json.dumps(ALIAS_EVENT)
    headers = headers_for(body, delivery="delivery-1")
    first = client.post("/webhooks/mlflow", data=body, headers=headers)
    again = client.post("/webhooks/mlflow", data=body, headers=headers)          # a byte-for-byte replay
    resigned = deliver(client, body, delivery="delivery-1", ts=int(time.time()) - 5)  # same id, fresh signature
    assert (first.status_code, again.status_code, resigned.status_code) == (202, 200, 200)
    assert again.get_json() == {"status": "duplicate", "delivery_id": "delivery-1"}
    other = deliver(client, body, delivery="delivery-2")
    assert other.status_code == 202
    drained(app)
    assert len(handler.payloads) == 2 and app.config["processor"].processed == 2


def test_unauthentic_delivery_does_not_burn_its_id(receiver) -> None:
    app, client, handler = receiver
    body = json.dumps(ALIAS_EVENT)
    forged = client.post("/webhooks/mlflow", data=body, headers=headers_for(body, delivery="d-9", secret="wrong"))
    assert forged.status_code == 401 and "signature mismatch" in forged.get_json()["error"]
    assert deliver(client, body, delivery="d-9").status_code == 202       # the real one still goes through


def test_body_over_the_limit_is_413(receiver) -> None:
    app, client, handler = receiver
    body = json.dumps({**ALIAS_EVENT, "pad": "x" * MAX_BODY_BYTES})
    resp = deliver(client, body)
    assert resp.status_code == 413 and f"over the limit of {MAX_BODY_BYTES} bytes" in resp.get_json()["error"]
    assert deliver(client, json.dumps(ALIAS_EVENT)).status_code == 202
    drained(app)
    assert handler.payloads == [ALIAS_EVENT]


def test_timestamp_in_the_future_is_reported_as_such(receiver) -> None:
    app, client, handler = receiver
    body = json.dumps(ALIAS_EVENT)
    future = deliver(client, body, ts=int(time.time()) + 3600)
    assert future.status_code == 401
    message = future.get_json()["error"]
    assert "in the future" in message and "old" not in message and "clocks" in message
    old = deliver(client, body, ts=int(time.time()) - 3600)
    assert old.status_code == 401 and "s old" in old.get_json()["error"]
    assert deliver(client, body, ts=int(time.time()) + MAX_AGE_S // 2).status_code == 202  # small skew is fine


@pytest.mark.parametrize("ts", ["soon", "1e9", "-5", "١٧٠٠٠٠٠٠٠٠", "9" * 5000])
def test_bad_timestamp_is_401_naming_the_header(receiver, ts) -> None:
    app, client, handler = receiver
    resp = deliver(client, json.dumps(ALIAS_EVENT), ts=ts)
    assert resp.status_code == 401 and f"{TIMESTAMP_HEADER} must be Unix seconds" in resp.get_json()["error"]
    assert len(resp.get_data()) < 400


def test_non_ascii_signature_and_missing_headers_are_401(receiver) -> None:
    app, client, handler = receiver
    body = json.dumps(ALIAS_EVENT)
    headers = {**headers_for(body), SIGNATURE_HEADER: "v1,ÿÿÿÿ"}
    resp = client.post("/webhooks/mlflow", data=body, headers=headers)
    assert resp.status_code == 401 and "signature mismatch" in resp.get_json()["error"]
    missing = client.post("/webhooks/mlflow", data=body, headers={TIMESTAMP_HEADER: "1"})
    assert missing.status_code == 401 and SIGNATURE_HEADER in missing.get_json()["error"]
    assert client.get("/webhooks/mlflow").status_code == 405
    assert client.get("/nope").status_code == 404 and "error" in client.get("/nope").get_json()


def test_receiver_runs_on_waitress_over_loopback(receiver) -> None:
    app, _, handler = receiver
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=_serve_until_closed, args=(server,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.effective_port}"
    try:
        body = json.dumps(ALIAS_EVENT)
        resp = requests.post(f"{url}/webhooks/mlflow", data=body, headers=headers_for(body), timeout=10)
        assert resp.status_code == 202 and resp.headers["Server"] == "towerops-webhooks"
        big = requests.post(f"{url}/webhooks/mlflow", data=b"x" * (MAX_BODY_BYTES + 10), timeout=10,
                            headers=headers_for("x"))
        assert big.status_code == 413
        chunked = requests.post(f"{url}/webhooks/mlflow", data=iter([b"[", b"1", b"]"]), timeout=10,
                                headers=headers_for("[1]"))
        assert chunked.status_code == 400
    finally:
        server.close()
        thread.join(10)


def test_towerops_webhooks_serve_is_a_production_server(tmp_path) -> None:
    env = mlflow_env(tmp_path, TOWEROPS_WEBHOOK_SECRET=SECRET)
    logfile = tmp_path / "receiver.log"

    def start(port: int) -> tuple[subprocess.Popen, int]:
        with open(logfile, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "webhooks", "serve", "--port", str(port)],
                                    cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                if is_port_clash(logfile.read_text()):
                    raise PortClash(logfile.read_text()[-300:])
                raise RuntimeError(f"receiver exited: {logfile.read_text()[-2000:]}")
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                return proc, port
            except requests.RequestException:
                time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
        raise TimeoutError(f"receiver not up: {logfile.read_text()[-2000:]}")

    proc, port = start_on_free_port(start)
    try:
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=10)
        assert health.status_code == 200 and health.headers["Server"] == "towerops-webhooks"
        body = "[]"
        resp = requests.post(f"http://127.0.0.1:{port}/webhooks/mlflow", data=body, headers=headers_for(body),
                             timeout=10)
        assert resp.status_code == 400
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    text = logfile.read_text()
    assert "development server" not in text and "Traceback" not in text


# ------------------------------------------------------------------ property-based: zero 5xx
_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
                     lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner,
                                                                                           max_size=4)),
                     max_leaves=25)
_bodies = st.one_of(st.binary(max_size=400), _json.map(lambda v: json.dumps(v).encode()),
                    st.fixed_dictionaries({"entity": st.one_of(st.text(max_size=30), _json),
                                           "action": st.one_of(st.sampled_from(["created", "deleted"]), _json)},
                                          optional={"data": _json}).map(lambda v: json.dumps(v).encode()))
_header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=60)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_bodies, delivery=st.one_of(_header_text, st.just("fixed-id")),
       ts_offset=st.one_of(st.integers(-2 * MAX_AGE_S, 2 * MAX_AGE_S), st.integers(-10**9, 10**9)),
       raw_ts=st.one_of(st.none(), _header_text), signed=st.booleans(), drop=st.sampled_from([None, SIGNATURE_HEADER,
                                                                                                  TIMESTAMP_HEADER,
                                                                                                  DELIVERY_HEADER]))
def test_fuzz_signed_random_bodies_and_headers_get_no_5xx(receiver_for_fuzz, body, delivery, ts_offset, raw_ts,
                                                          signed, drop) -> None:
    app, client, handler = receiver_for_fuzz
    ts = raw_ts if raw_ts is not None else str(int(time.time()) + ts_offset)
    headers = headers_for(body, delivery=delivery or "d", ts=ts, secret=SECRET if signed else "other")
    if drop:
        headers.pop(drop)
    resp = client.post("/webhooks/mlflow", data=body, headers=headers)
    assert resp.status_code in (200, 202, 400, 401, 413), (body[:200], headers, resp.get_data(as_text=True)[:300])
    assert isinstance(resp.get_json(), dict)
    if resp.status_code == 202:
        assert signed and not drop and isinstance(json.loads(body), dict)


@pytest.fixture(scope="module")
def receiver_for_fuzz():
    handler = Recorder()
    app = create_app(SECRET, handler)
    yield app, app.test_client(), handler
    drained(app)
    assert all(isinstance(p, dict) for p in handler.payloads)  # the handler only ever sees JSON objects
    app.config["processor"].stop()
