"""`towerops serve` of the registered recommender (models:/two_tower@production): the
MLflow scoring protocol on waitress with strict request checks (ml/inference/serving.py).

One real server for the module on a free loopback port: valid requests answer exactly
what the in-process engine answers; each bad request gets a 4xx with a clear message and
the server keeps serving; requests land in the prediction log and logs/inference.log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import requests
from support.helpers import mlflow_env, start_on_free_port
from support.servers import start_scoring_server, stop_process_group

from ml.inference.engine import RealtimeInferenceEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REGISTER = """
import json, sys
import mlflow
from mlflow import MlflowClient
from ml.tracking.runs import start_run
from ml.tracking.training import log_recommender
with start_run(run_name="serve-test"):
    info = log_recommender(sys.argv[1], registered_model_name="two_tower")
client = MlflowClient()
version = max(int(v.version) for v in client.search_model_versions("name='two_tower'"))
client.set_registered_model_alias("two_tower", "production", str(version))
print(json.dumps({"model_uri": info.model_uri, "version": str(version)}))
"""


class Server:
    def __init__(self, url: str, workdir: Path, env: dict[str, str], version: str, proc: subprocess.Popen) -> None:
        self.url, self.workdir, self.env, self.version, self.proc = url, workdir, env, version, proc

    def post(self, payload: object, raw: str | None = None) -> requests.Response:
        data = raw if raw is not None else json.dumps(payload)
        return requests.post(f"{self.url}/invocations", data=data, headers={"Content-Type": "application/json"},
                             timeout=30)

    @property
    def prediction_log(self) -> Path:
        return Path(self.env["TOWEROPS_PREDICTION_LOG"])


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("serving")
    env = mlflow_env(work, TOWEROPS_PREDICTION_LOG=str(work / "predictions.jsonl"))
    reg = subprocess.run([sys.executable, "-c", REGISTER, str(tiny_model_dir)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert reg.returncode == 0, reg.stderr[-3000:]
    version = json.loads(reg.stdout.strip().splitlines()[-1])["version"]
    log_path = work / "serve.log"

    def argv(port: int) -> list[str]:
        return [sys.executable, "-m", "pipelines.cli", "serve", "--model-uri", "models:/two_tower@production",
                "--port", str(port)]

    proc, url = start_on_free_port(lambda port: start_scoring_server(argv, env, log_path, port))
    try:
        yield Server(url, work, env, version, proc)
    finally:
        stop_process_group(proc)


@pytest.fixture(scope="module")
def engine(tiny_model_dir) -> RealtimeInferenceEngine:
    return RealtimeInferenceEngine(tiny_model_dir)


def _as_lists(predictions: list[dict]) -> dict:
    out: dict = {}
    for p in predictions:
        out.setdefault(p["user_id"], []).append((p["rank"], p["item_id"], p["score"]))
    return out


def test_known_users_get_the_in_process_answers(server, engine) -> None:
    users = engine.bundle.user_ids[:3]
    resp = server.post({"dataframe_records": [{"user_id": users[0], "top_k": 5}, {"user_id": users[1]},
                                              {"user_id": users[2], "top_k": 2, "exclude_seen": False}]})
    assert resp.status_code == 200, resp.text
    got = _as_lists(resp.json()["predictions"])
    for user, kwargs in zip(users, ({"top_k": 5}, {"top_k": 10}, {"top_k": 2, "exclude_seen": False})):
        want = engine.get_recommendations(user, **kwargs)
        assert got[user] == [(r["rank"], r["item_id"], r["score"]) for r in want]


def test_cold_user_candidates_params_and_list_output(server, engine) -> None:
    ids = engine.bundle.item_ids
    cold = {"liked_items": ids[:3], "noped_items": [ids[3]], "top_k": 4}
    resp = server.post({"dataframe_records": [cold]})
    assert resp.status_code == 200, resp.text
    want = engine.get_recommendations(None, liked_items=ids[:3], noped_items=[ids[3]], top_k=4)
    assert [(p["item_id"], p["score"]) for p in resp.json()["predictions"]] == [(r["item_id"], r["score"]) for r in want]

    user = engine.bundle.user_ids[5]
    cands = ids[10:30]
    resp = server.post({"dataframe_records": [{"user_id": user, "candidate_items": cands}],
                        "params": {"top_k": 3, "output": "lists"}})
    assert resp.status_code == 200, resp.text
    (row,) = resp.json()["predictions"]
    want = engine.get_recommendations(user, candidate_items=cands, top_k=3)
    assert row["items"] == [r["item_id"] for r in want] and row["scores"] == [r["score"] for r in want]


BAD_REQUESTS = [
    ({"dataframe_records": [{"user_id": "nobody"}]}, None, "unknown user_id 'nobody' with no history"),
    ({"dataframe_records": [{"user_id": "u00001", "top_k": 0}]}, None, "top_k=0 must be a positive integer"),
    ({"dataframe_records": [{"user_id": "u00001", "top_k": -3}]}, None, "top_k=-3 must be a positive integer"),
    ({"dataframe_records": [{"user_id": "u00001", "candidate_items": ["i00001", "zzz"]}]}, None,
     "candidate_items: 1 unknown item id(s): 'zzz'"),
    ({"dataframe_records": [{"liked_items": ["nope-1", "nope-2"]}]}, None, "liked_items: 2 unknown item id(s)"),
    ({"dataframe_records": [{"user_id": "u00001", "top_k": "many"}]}, None, "a JSON number, not a string"),
    ({"dataframe_records": [{"user_id": "u00001", "top_k": True}]}, None, "top_k=True must be a positive integer"),
    ({"dataframe_records": [{"user_id": "u00001", "exclude_seen": "false"}]}, None, "must be true or false"),
    ({"dataframe_records": [{"user_id": "u00001", "exclude_seen": "no"}]}, None, "must be true or false"),
    (None, '{"dataframe_records": [{"user_id": "u00001", "top_k": Infinity}]}', "NaN and Infinity are not numbers"),
    (None, '{"dataframe_records": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
    ({"dataframe_records": [{"user_id": "u00001", "top_k": 2.5}]}, None, "top_k=2.5 must be a positive integer"),
    ({"dataframe_records": [{"exclude_seen": True}]}, None, "request needs a user_id (or liked_items"),
    ({"dataframe_records": [{"user_id": "u00001"}], "params": {"output": "xml"}}, None,
     "params.output='xml' must be one of rows, lists"),
    (None, '{"dataframe_records": [{"user_id": ', "Ensure that input is a valid JSON formatted string"),
]


def test_request_without_content_type_and_a_huge_id_get_a_short_4xx(server, engine) -> None:
    body = json.dumps({"dataframe_records": [{"user_id": engine.bundle.user_ids[0]}]})
    resp = requests.post(f"{server.url}/invocations", data=body, headers={"Content-Type": ""}, timeout=30)
    assert resp.status_code == 415 and "Content-Type: application/json" in resp.json()["message"]
    resp = server.post({"dataframe_records": [{"user_id": "x" * 100_000}]})
    assert resp.status_code == 400 and len(resp.content) < 1200 and "Traceback" not in resp.text
    ok = server.post({"dataframe_records": [{"user_id": engine.bundle.user_ids[0], "top_k": 1}]})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


@pytest.mark.parametrize("payload, raw, message", BAD_REQUESTS)
def test_bad_requests_get_a_4xx_and_the_server_keeps_serving(server, engine, payload, raw, message) -> None:
    resp = server.post(payload, raw=raw)
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:500])
    assert message in resp.json()["message"] and "Traceback" not in resp.text and ".py" not in resp.text
    ok = server.post({"dataframe_records": [{"user_id": engine.bundle.user_ids[0], "top_k": 1}]})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


def test_prediction_log_and_inference_log(server) -> None:
    server.post({"dataframe_records": [{"user_id": "u00002", "top_k": 3}]})
    server.post({"dataframe_records": [{"user_id": "ghost-user"}]})
    records = [json.loads(line) for line in server.prediction_log.read_text().splitlines()]
    assert {r["model_version"] for r in records} == {server.version}  # resolved from the alias by `towerops serve`
    ok = [r for r in records if r["user_id"] == "u00002" and r["status"] == "ok"][-1]
    assert ok["top_k"] == 3 and len(ok["items"]) == len(ok["scores"]) == 3 and ok["latency_ms"] >= 0
    err = [r for r in records if r["user_id"] == "ghost-user"][-1]
    assert err["status"] == "error" and "no history" in err["error"] and err["items"] == []
    inference_log = Path(server.env["TOWEROPS_LOG_DIR"]) / "inference.log"
    text = inference_log.read_text()
    assert "pyfunc ready: model_version=" in text and "bad request for user_id='ghost-user'" in text
