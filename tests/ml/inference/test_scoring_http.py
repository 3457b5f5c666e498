"""The scoring server's WSGI app (what `towerops serve` runs on waitress), in process.

Every hostile or careless request gets a 4xx whose message names the field and the fix,
never a 5xx, a traceback or the whole request echoed back, and the next good request is
answered. Good requests in every MLflow scoring format answer what the engine answers.
A property-based part throws generated bodies and headers at it: zero 5xx.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.test import Client

from ml.inference.engine import MAX_TOP_K, RealtimeInferenceEngine
from ml.inference.serving import MAX_BODY_BYTES, MAX_ROWS, ScoringApp

JSON = {"Content-Type": "application/json"}


def _serve_until_closed(server) -> None:
    """waitress' loop in a thread; `server.close()` from the test ends it (the loop may then see a closed fd)."""
    try:
        server.run()
    except OSError:
        pass


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory) -> ScoringApp:
    work = tmp_path_factory.mktemp("scoring-http")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOWEROPS_PREDICTION_LOG", str(work / "predictions.jsonl"))
        mp.setenv("TOWEROPS_MODEL_VERSION", "3")
        return ScoringApp.for_model_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def client(app) -> Client:
    return Client(app)


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> RealtimeInferenceEngine:
    return RealtimeInferenceEngine(tiny_model_dir)


def post(client: Client, body: Any = None, raw: bytes | str | None = None, headers: dict | None = None):
    data = raw if raw is not None else json.dumps(body)
    return client.post("/invocations", data=data, headers=JSON if headers is None else headers)


def assert_still_serving(client: Client, engine: RealtimeInferenceEngine) -> None:
    ok = post(client, {"dataframe_records": [{"user_id": engine.bundle.user_ids[0], "top_k": 2}]})
    assert ok.status_code == 200 and len(ok.get_json()["predictions"]) == 2


def assert_clean_4xx(resp, status: int | None = None, message: str | None = None) -> dict:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.get_data(as_text=True)[:500])
    if status is not None:
        assert resp.status_code == status, resp.get_data(as_text=True)[:500]
    text = resp.get_data(as_text=True)
    assert "Traceback" not in text and ".py" not in text and "/work/" not in text and "site-packages" not in text
    doc = json.loads(text)
    assert set(doc) == {"error_code", "message"}
    if message is not None:
        assert message in doc["message"], doc["message"]
    return doc


# ------------------------------------------------------------------ good requests, every format
def test_every_scoring_format_answers_what_the_engine_answers(client, engine) -> None:
    users = engine.bundle.user_ids[:2]
    want = {u: [(r["item_id"], r["score"]) for r in engine.get_recommendations(u, top_k=3)] for u in users}
    bodies = [
        {"dataframe_records": [{"user_id": u, "top_k": 3} for u in users]},
        {"dataframe_split": {"columns": ["user_id", "top_k"], "data": [[u, 3] for u in users]}},
        {"inputs": {"user_id": list(users), "top_k": [3, 3]}},
        {"instances": [{"user_id": u} for u in users], "params": {"top_k": 3}},
        {"inputs": [{"user_id": u, "top_k": 3.0} for u in users]},  # an integral float is an integer
    ]
    for body in bodies:
        resp = post(client, body)
        assert resp.status_code == 200, (body, resp.get_data(as_text=True))
        got: dict = {}
        for p in resp.get_json()["predictions"]:
            got.setdefault(p["user_id"], []).append((p["item_id"], p["score"]))
        assert got == want, body


def test_exclude_seen_false_and_lists_output(client, engine) -> None:
    user = engine.bundle.user_ids[4]
    resp = post(client, {"dataframe_records": [{"user_id": user, "top_k": 5, "exclude_seen": False}],
                         "params": {"output": "lists"}})
    assert resp.status_code == 200
    (row,) = resp.get_json()["predictions"]
    assert row["items"] == [r["item_id"] for r in engine.get_recommendations(user, top_k=5, exclude_seen=False)]


def test_ping_health_version_and_unknown_routes(client) -> None:
    import mlflow

    assert client.get("/ping").status_code == 200 and client.get("/health").status_code == 200
    assert client.get("/version").get_data(as_text=True) == mlflow.__version__
    assert_clean_4xx(client.get("/nope"), 404, "the scoring server answers POST /invocations")
    assert_clean_4xx(client.get("/invocations"), 405, "/invocations answers POST")
    assert_clean_4xx(client.post("/ping"), 405)


# ------------------------------------------------------------------ each case of issue 15
def test_request_without_content_type_is_415_naming_the_header(client, engine) -> None:
    resp = client.post("/invocations", data=json.dumps({"dataframe_records": [{"user_id": "u00001"}]}))
    assert_clean_4xx(resp, 415, "Content-Type: application/json")
    assert_still_serving(client, engine)


def test_csv_or_text_content_type_is_415(client, engine) -> None:
    assert_clean_4xx(post(client, raw="user_id\nu00001\n", headers={"Content-Type": "text/csv"}), 415,
                     "CSV input is not supported")
    assert_clean_4xx(post(client, raw="{}", headers={"Content-Type": "text/plain"}), 415)
    assert_still_serving(client, engine)


@pytest.mark.parametrize("depth", [200, 100_000])
def test_deeply_nested_json_is_400(client, engine, depth) -> None:
    raw = '{"dataframe_records": ' + "[" * depth + "]" * depth + "}"
    assert_clean_4xx(post(client, raw=raw), 400)
    raw = '{"dataframe_records": [{"user_id": "u00001", "liked_items": ' + "[" * depth + "]" * depth + "}]}"
    assert_clean_4xx(post(client, raw=raw), 400)
    assert_still_serving(client, engine)


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e999"])
def test_top_k_infinity_is_400_without_a_stack_trace(client, engine, literal) -> None:
    raw = '{"dataframe_records": [{"user_id": "u00001", "top_k": ' + literal + "}]}"
    doc = assert_clean_4xx(post(client, raw=raw), 400)
    assert "top_k" in doc["message"] or "not valid JSON" in doc["message"]
    assert_still_serving(client, engine)


@pytest.mark.parametrize("where", ["row", "params"])
def test_top_k_true_is_refused(client, engine, where) -> None:
    user = engine.bundle.user_ids[0]
    body = ({"dataframe_records": [{"user_id": user, "top_k": True}]} if where == "row"
            else {"dataframe_records": [{"user_id": user}], "params": {"top_k": True}})
    assert_clean_4xx(post(client, body), 400, "top_k=True must be a positive integer")
    assert_still_serving(client, engine)


@pytest.mark.parametrize("value", ["false", "no", "true", 0, 1, [], {}])
def test_exclude_seen_must_be_a_json_bool(client, engine, value) -> None:
    body = {"dataframe_records": [{"user_id": engine.bundle.user_ids[0], "exclude_seen": value}]}
    assert_clean_4xx(post(client, body), 400, "exclude_seen=")
    assert "must be true or false" in post(client, body).get_json()["message"]
    assert_still_serving(client, engine)


def test_error_does_not_echo_the_whole_request(client, engine) -> None:
    huge = "x" * 100_000
    for body in ({"dataframe_records": [{"user_id": huge}]},
                 {"dataframe_records": [{"user_id": engine.bundle.user_ids[0], "candidate_items": [huge]}]},
                 {"dataframe_records": [{"user_id": engine.bundle.user_ids[0], "top_k": huge}]},
                 {"dataframe_records": [{huge: 1}]},
                 {"dataframe_records": [{"user_id": engine.bundle.user_ids[0], "liked_items": huge}]}):
        resp = post(client, body)
        assert_clean_4xx(resp, 400)
        assert len(resp.get_data()) < 1200, len(resp.get_data())
        assert "(100002 characters)" in resp.get_json()["message"] or "characters" in resp.get_json()["message"]
    assert_still_serving(client, engine)


@pytest.mark.parametrize("body, message", [
    ({"dataframe_records": [{"user_id": "u00001", "top_k": "5"}]}, "a JSON number, not a string"),
    ({"dataframe_records": [{"user_id": "u00001", "top_k": 0}]}, "top_k=0 must be a positive integer"),
    ({"dataframe_records": [{"user_id": "u00001", "top_k": 2.5}]}, "top_k=2.5 must be a positive integer"),
    ({"dataframe_records": [{"user_id": "u00001", "top_k": MAX_TOP_K + 1}]}, f"above the limit of {MAX_TOP_K}"),
    ({"dataframe_records": [{"user_id": True}]}, "user_id must be a string"),
    ({"dataframe_records": [{"user_id": {"a": 1}}]}, "user_id must be a string"),
    ({"dataframe_records": [{"user_id": "u00001", "candidate_items": "i00001"}]}, "candidate_items must be a list"),
    ({"dataframe_records": [{"user_id": "u00001", "candidate_items": [1.5]}]}, "candidate_items[0] must be an item id"),
    ({"dataframe_records": [{"user_id": "u00001", "candidate_items": [None]}]}, "candidate_items[0] must be an item id"),
    ({"dataframe_records": [{"user_id": "u00001", "topk": 3}]}, "unknown field(s) 'topk'; known fields: user_id"),
    ({"dataframe_records": [{"top_k": 3}]}, "needs a user_id"),
    ({"dataframe_records": ["u00001"]}, "must be an object"),
    ({"dataframe_records": []}, "holds no rows"),
    ({"dataframe_records": {"user_id": "u00001"}}, "dataframe_records must be a list of rows"),
    ({"dataframe_split": {"columns": ["user_id"], "data": [["u00001", 3]]}}, "dataframe_split.data[0] must be a list of 1"),
    ({"inputs": {"user_id": ["u00001"], "top_k": [1, 2]}}, "all of the same length"),
    ({"user_id": "u00001"}, "unknown key(s) 'user_id' in the request"),
    ({"dataframe_records": [{"user_id": "u00001"}], "inputs": []}, "exactly one of"),
    ({}, "exactly one of"),
    ({"dataframe_records": [{"user_id": "u00001"}], "params": {"output": "xml"}}, "params.output='xml'"),
    ({"dataframe_records": [{"user_id": "u00001"}], "params": {"k": 3}}, "params: unknown key(s) 'k'"),
    ({"dataframe_records": [{"user_id": "u00001"}], "params": [3]}, "params must be an object"),
    ({"dataframe_records": [{"user_id": "nobody"}]}, "unknown user_id 'nobody' with no history"),
    ({"dataframe_records": [{"liked_items": ["nope-1", "nope-2"]}]}, "liked_items: 2 unknown item id(s)"),
    ([{"user_id": "u00001"}], "the request must be a JSON object"),
    (None, "the request must be a JSON object"),
    ("u00001", "the request must be a JSON object"),
])
def test_bad_fields_are_400_naming_the_field_and_the_fix(client, engine, body, message) -> None:
    assert_clean_4xx(post(client, body), 400, message)
    assert_still_serving(client, engine)


def test_invalid_utf8_and_invalid_json_are_400(client, engine) -> None:
    assert_clean_4xx(post(client, raw=b'{"dataframe_records": [{"user_id": "\xff\xfe"}]}'), 400, "not UTF-8")
    assert_clean_4xx(post(client, raw='{"dataframe_records": [{"user_id": '), 400,
                     "Ensure that input is a valid JSON formatted string")
    assert_clean_4xx(post(client, raw='{"top_k": ' + "9" * 5000 + "}"), 400, "not valid JSON")
    assert_still_serving(client, engine)


def test_body_over_the_limit_is_413_and_too_many_rows_is_413(client, engine) -> None:
    raw = json.dumps({"dataframe_records": [{"user_id": "u" * (MAX_BODY_BYTES + 10)}]})
    assert_clean_4xx(post(client, raw=raw), 413, "over the limit")
    rows = [{"user_id": engine.bundle.user_ids[0]}] * (MAX_ROWS + 1)
    assert_clean_4xx(post(client, {"dataframe_records": rows}), 413, "split the request")
    assert_still_serving(client, engine)


def test_bad_requests_are_in_the_prediction_log_with_a_bounded_error(app, client, engine) -> None:
    post(client, {"dataframe_records": [{"user_id": "y" * 50_000}]})
    path = Path(app.model.prediction_log.path)
    last = json.loads(path.read_text().splitlines()[-1])
    assert last["status"] == "error" and len(last["error"]) < 400 and len(last["user_id"]) <= 200


# ------------------------------------------------------------------ over real HTTP (waitress)
def test_waitress_server_answers_bad_requests_with_4xx_and_keeps_serving(app, engine) -> None:
    from waitress import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=2)
    thread = threading.Thread(target=_serve_until_closed, args=(server,), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.effective_port}"
    try:
        no_type = requests.post(f"{url}/invocations", data=b'{"dataframe_records": [{"user_id": "u00001"}]}',
                                headers={"Content-Type": ""}, timeout=30)
        assert no_type.status_code == 415 and "Content-Type" in no_type.json()["message"]
        deep = requests.post(f"{url}/invocations", data="[" * 50_000 + "]" * 50_000, headers=JSON, timeout=30)
        assert deep.status_code == 400
        inf = requests.post(f"{url}/invocations", data='{"dataframe_records": [{"user_id": "u00001", "top_k": Infinity}]}',
                            headers=JSON, timeout=30)
        assert inf.status_code == 400 and "Traceback" not in inf.text and ".py" not in inf.text
        ok = requests.post(f"{url}/invocations", json={"dataframe_records": [{"user_id": engine.bundle.user_ids[1]}]},
                           timeout=30)
        assert ok.status_code == 200 and len(ok.json()["predictions"]) == 10
    finally:
        server.close()
        thread.join(10)


# ------------------------------------------------------------------ property-based: zero 5xx
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**20), st.floats(allow_nan=False),
                     st.text(max_size=30))
_json = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                     max_leaves=20)
_field_values = {
    "user_id": st.one_of(st.sampled_from(["u00001", "u00002", "nobody", ""]), _scalars),
    "top_k": st.one_of(st.integers(-5, MAX_TOP_K + 5), st.floats(), st.booleans(), st.text(max_size=5), st.none()),
    "exclude_seen": st.one_of(st.booleans(), st.sampled_from(["false", "no", "true"]), st.integers(0, 1), st.none()),
    "candidate_items": st.one_of(st.lists(st.sampled_from(["i00001", "i00002", "i00003", "zzz"]), max_size=4),
                                 _json),
    "liked_items": st.one_of(st.lists(st.sampled_from(["i00004", "i00005", "bad"]), max_size=3), _json),
    "noped_items": st.one_of(st.lists(st.sampled_from(["i00006"]), max_size=2), _json),
}
_rows = st.lists(st.fixed_dictionaries({}, optional=_field_values), min_size=0, max_size=4)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(payload=st.one_of(_json, st.fixed_dictionaries({}, optional={
    "dataframe_records": _json, "dataframe_split": _json, "inputs": _json, "instances": _json, "params": _json})))
def test_fuzz_any_json_body_gets_no_5xx(client, payload) -> None:
    resp = post(client, payload)
    assert resp.status_code < 500, (payload, resp.get_data(as_text=True)[:300])
    if resp.status_code != 200:
        assert_clean_4xx(resp)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.binary(max_size=300), ctype=st.one_of(st.none(), st.sampled_from(
    ["application/json", "application/json; charset=utf-8", "text/csv", "", "application/x-www-form-urlencoded"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=20)), method=st.sampled_from(["POST", "GET", "PUT", "DELETE"]),
    path=st.sampled_from(["/invocations", "/ping", "/version", "/health", "/x"]))
def test_fuzz_random_bytes_headers_and_methods_get_no_5xx(client, body, ctype, method, path) -> None:
    headers = {} if ctype is None else {"Content-Type": ctype}  # what HTTP can carry: latin-1, no control characters
    resp = client.open(path, method=method, data=body, headers=headers)
    assert resp.status_code < 500, (body, ctype, resp.get_data(as_text=True)[:300])


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(rows=_rows, params=st.one_of(st.none(), st.fixed_dictionaries({}, optional={
    "top_k": _field_values["top_k"], "output": st.sampled_from(["rows", "lists", "xml"])})))
def test_fuzz_request_rows_with_wrong_types_get_no_5xx(client, rows, params) -> None:
    body: dict = {"dataframe_records": rows}
    if params is not None:
        body["params"] = params
    resp = post(client, body)
    assert resp.status_code in (200, 400), (body, resp.get_data(as_text=True)[:300])
    if resp.status_code == 200:
        for row in rows:  # a 200 means every row was well typed
            assert "top_k" not in row or row["top_k"] is None or (not isinstance(row["top_k"], bool)
                                                                  and float(row["top_k"]).is_integer())
            assert "exclude_seen" not in row or row["exclude_seen"] is None or isinstance(row["exclude_seen"], bool)
    else:
        assert_clean_4xx(resp)
