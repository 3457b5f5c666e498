"""Online A/B at serving: `towerops serve --challenger-uri ...` answers two registered versions
from one endpoint (ml/inference/serving.py ABRouter).

One real server for the module (production = v1, challenger = v2 of `two_tower`), split by
the salted hash of `towerops ab assign`: each user's arm in the prediction log is the arm
`ab assign` gives, with the version that answered; the response keeps the request's row
order across arms; bad requests stay 4xx; `towerops ab analyze --from-log` reads the log and
the swipes and decides with the existing test. In process: shadow mode (the client always
gets the control, the challenger's answer is only a shadow line) and start-up errors.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pandas as pd
import pytest
import requests
from support.helpers import REPO_ROOT, mlflow_env, start_on_free_port
from support.servers import start_scoring_server, stop_process_group
from typer.testing import CliRunner

from ml.inference.engine import RealtimeInferenceEngine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SALT = "reco-ab-test"
ARMS = "control=50,treatment=50"

REGISTER = """
import json, sys
from mlflow import MlflowClient
from ml.tracking.runs import start_run
from ml.tracking.training import log_recommender
for _ in range(2):
    with start_run(run_name="serve-ab-test"):
        log_recommender(sys.argv[1], registered_model_name="two_tower")
client = MlflowClient()
client.set_registered_model_alias("two_tower", "production", "1")
client.set_registered_model_alias("two_tower", "challenger", "2")
"""


class Server:
    def __init__(self, url: str, work: Path, env: dict[str, str], proc: subprocess.Popen) -> None:
        self.url, self.work, self.env, self.proc = url, work, env, proc

    def post(self, payload: object) -> requests.Response:
        return requests.post(f"{self.url}/invocations", data=json.dumps(payload),
                             headers={"Content-Type": "application/json"}, timeout=30)

    def log_lines(self) -> list[dict]:
        return [json.loads(line) for line in Path(self.env["TOWEROPS_PREDICTION_LOG"]).read_text().splitlines()]


def _serve_cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "serve", "--model-uri", "models:/two_tower@production",
            "--challenger-uri", "models:/two_tower@challenger", "--ab-salt", SALT, "--arms", ARMS, *extra]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    work = tmp_path_factory.mktemp("serving-ab")
    env = mlflow_env(work, TOWEROPS_PREDICTION_LOG=str(work / "predictions.jsonl"))
    reg = subprocess.run([sys.executable, "-c", REGISTER, str(tiny_model_dir)], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert reg.returncode == 0, reg.stderr[-3000:]
    log_path = work / "serve.log"

    proc, url = start_on_free_port(
        lambda port: start_scoring_server(lambda p: _serve_cmd("--port", str(p)), env, log_path, port))
    try:
        yield Server(url, work, env, proc)
    finally:
        stop_process_group(proc)


def _ab_assign(users: list[str]) -> dict[str, str]:
    from pipelines.cli import app

    args = ["ab", "assign", "--salt", SALT, "--arms", ARMS]
    for u in users:
        args += ["--user", u]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(io.StringIO(result.stdout))
    return dict(zip(table["user_id"], table["arm"]))


def test_two_versions_split_by_the_ab_assign_hash_and_the_log_records_arms(server, tiny_model_dir, tmp_path) -> None:
    engine = RealtimeInferenceEngine(tiny_model_dir)
    users = list(engine.bundle.user_ids[:60])
    want = _ab_assign(users)
    assert set(want.values()) == {"control", "treatment"}
    # one request mixing both arms: rows come back in the request's order
    mixed = users[:8]
    assert len({want[u] for u in mixed}) == 2
    resp = server.post({"dataframe_records": [{"user_id": u, "top_k": 3} for u in mixed]})
    assert resp.status_code == 200, resp.text
    got = [p["user_id"] for p in resp.json()["predictions"]]
    assert got == [u for u in mixed for _ in range(3)]
    first = resp.json()["predictions"][:3]
    assert [(p["item_id"], p["score"]) for p in first] == [
        (r["item_id"], r["score"]) for r in engine.get_recommendations(mixed[0], top_k=3)]
    for u in users[8:]:
        assert server.post({"dataframe_records": [{"user_id": u, "top_k": 5}]}).status_code == 200
    # bad requests stay 4xx, the server keeps serving, and the refusal is logged with its arm
    bad = server.post({"dataframe_records": [{"user_id": users[0], "top_k": 0}]})
    assert bad.status_code == 400 and "top_k=0" in bad.json()["message"]
    assert server.post({"dataframe_records": [{"user_id": "nobody-at-all"}]}).status_code == 400
    assert server.post({"dataframe_records": [{"user_id": users[1]}]}).status_code == 200

    lines = server.log_lines()
    ok = [r for r in lines if r["status"] == "ok"]
    assert {r["user_id"] for r in ok} == set(users)
    assert all(r["arm"] == want[r["user_id"]] for r in ok)  # the same hash as `towerops ab assign`
    assert {r["arm"]: r["model_version"] for r in ok} == {"control": "1", "treatment": "2"}
    assert not any(r["shadow"] for r in lines)
    errors = [r for r in lines if r["status"] == "error"]
    assert any(r["user_id"] == users[0] and r["arm"] == want[users[0]] and "top_k=0" in r["error"] for r in errors)

    # swipes on what each user was shown; treatment users like more of them
    rows = []
    for r in ok:
        for n, item in enumerate(r["items"]):
            liked = n < (3 if r["arm"] == "treatment" else 1)
            rows.append({"user_id": r["user_id"], "item_id": item, "decision": "like" if liked else "nope"})
    rows.append({"user_id": "never-served", "item_id": "x", "decision": "like"})
    swipes = tmp_path / "swipes.csv"
    pd.DataFrame(rows).to_csv(swipes, index=False)

    from pipelines.cli import app

    result = CliRunner().invoke(app, ["ab", "analyze", "--from-log", server.env["TOWEROPS_PREDICTION_LOG"],
                                      "--outcomes", str(swipes), "--arms", ARMS, "--min-per-arm", "10",
                                      "--format", "json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    frame = pd.DataFrame(rows[:-1])
    frame["arm"] = frame["user_id"].map(want)
    for arm in report["arms"]:
        sub = frame[frame["arm"] == arm["arm"]]
        assert arm["users"] == sub["user_id"].nunique() and arm["swipes"] == len(sub)
        assert arm["likes"] == int((sub["decision"] == "like").sum())
    (cmp,) = report["comparisons"]
    assert cmp["treatment"] == "treatment" and cmp["control"] == "control" and cmp["difference"] > 0
    assert cmp["significant"] and cmp["decision"] == "treatment is better"
    assert report["versions"] == {"control": ["1"], "treatment": ["2"]}
    assert "1 of" in result.stderr or "1 of" in result.output  # the never-served user's swipe is left out


def test_unknown_alias_or_arm_fails_at_start_up(server) -> None:
    base = [sys.executable, "-m", "pipelines.cli", "serve", "--model-uri", "models:/two_tower@production",
            "--ab-salt", SALT, "--dry-run"]
    cases = [
        (["--challenger-uri", "models:/two_tower@nosuch"], "cannot resolve models:/two_tower@nosuch"),
        (["--challenger-uri", "models:/two_tower@challenger", "--arms", "a=1,b=1,c=1"], "exactly two"),
        (["--challenger-uri", "models:/two_tower@challenger", "--control-arm", "blue"], "'blue' is not one of"),
    ]
    for extra, message in cases:
        proc = subprocess.run(base + extra, cwd=REPO_ROOT, env=server.env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert message in " ".join((proc.stdout + proc.stderr).split())


def test_shadow_mode_answers_with_the_control_and_logs_the_challenger_as_shadow(tiny_model_dir, tmp_path,
                                                                                 monkeypatch) -> None:
    from werkzeug.test import Client

    from ml.inference.serving import ab_settings, load_ab_app

    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG", str(tmp_path / "predictions.jsonl"))
    settings = ab_settings(SALT, ARMS, None, shadow=True)
    app = load_ab_app(str(tiny_model_dir), str(tiny_model_dir), settings, {"control": "1", "treatment": "2"})
    engine = RealtimeInferenceEngine(tiny_model_dir)
    users = list(engine.bundle.user_ids[:6])
    resp = Client(app).post("/invocations", data=json.dumps({"dataframe_records": [{"user_id": u} for u in users]}),
                            headers={"Content-Type": "application/json"})
    assert resp.status_code == 200
    app.model._pool.shutdown(wait=True)  # the shadow scores in the background
    lines = [json.loads(x) for x in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    served = [r for r in lines if not r["shadow"]]
    shadow = [r for r in lines if r["shadow"]]
    assert [r["user_id"] for r in served] == users and {r["arm"] for r in served} == {"control"}
    assert [r["user_id"] for r in shadow] == users and {(r["arm"], r["model_version"]) for r in shadow} == {
        ("treatment", "2")}

    from monitoring.prediction_log import read_prediction_log

    assert len(read_prediction_log(tmp_path / "predictions.jsonl")) == len(users)  # monitoring skips shadow lines

    with pytest.raises(RuntimeError, match="arm 'treatment': cannot load .*nowhere"):
        load_ab_app(str(tiny_model_dir), str(tmp_path / "nowhere"), settings, {})
