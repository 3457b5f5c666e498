"""The pyfunc in process: same answers as the engine, 400-mapped errors, the prediction log contract."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ml.inference.engine import InferenceRequestError, RealtimeInferenceEngine
from ml.inference.prediction_log import FIELDS, PredictionLogger, sample_rate_from_env
from ml.inference.pyfunc import TwoTowerRecommender


@pytest.fixture
def pyfunc(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG", str(tmp_path / "pred.jsonl"))
    monkeypatch.setenv("TOWEROPS_MODEL_VERSION", "7")
    model = TwoTowerRecommender()
    model.load_context(SimpleNamespace(artifacts={"model_dir": str(tiny_model_dir)}))
    return model


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_predict_rows_and_lists_match_the_engine(pyfunc, tiny_model_dir, tmp_path) -> None:
    engine = RealtimeInferenceEngine(tiny_model_dir)
    ids = engine.bundle.item_ids
    users = engine.bundle.user_ids[:3]
    frame = pd.DataFrame({"user_id": users, "top_k": [3, 4, 5]})
    rows = pyfunc.predict(None, frame)
    assert list(rows.columns) == ["user_id", "item_id", "score", "rank"] and len(rows) == 12
    for user, k in zip(users, (3, 4, 5)):
        got = rows[rows.user_id == user]
        want = engine.get_recommendations(user, top_k=k)
        assert got.item_id.tolist() == [r["item_id"] for r in want]
        assert got.score.tolist() == [r["score"] for r in want]
    cold = pd.DataFrame({"liked_items": [list(ids[:3])], "noped_items": [[ids[3]]]})
    lists = pyfunc.predict(None, cold, params={"top_k": 4, "output": "lists"})
    want = engine.get_recommendations(None, liked_items=ids[:3], noped_items=[ids[3]], top_k=4)
    assert lists["items"].iloc[0] == [r["item_id"] for r in want] and lists.user_id.iloc[0] is None
    np.testing.assert_allclose(lists.scores.iloc[0], [r["score"] for r in want], atol=1e-6)

    log = _lines(tmp_path / "pred.jsonl")
    assert len(log) == 4 and all(tuple(rec) == FIELDS for rec in log)
    assert [r["top_k"] for r in log] == [3, 4, 5, 4] and [r["cold"] for r in log] == [False, False, False, True]
    assert all(r["status"] == "ok" and r["error"] is None and r["model_version"] == "7" for r in log)
    assert log[0]["items"] == rows[rows.user_id == users[0]].item_id.tolist()
    assert len({r["request_id"] for r in log}) == 4 and log[0]["ts"].endswith("Z")


def test_request_errors_are_mlflow_400s_and_are_logged(pyfunc, tmp_path) -> None:
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as info:
        pyfunc.predict(None, pd.DataFrame({"user_id": ["nobody"]}))
    assert isinstance(info.value, InferenceRequestError)
    assert info.value.get_http_status_code() == 400
    assert "unknown user_id 'nobody' with no history" in info.value.message
    with pytest.raises(MlflowException, match="params.output='table' must be one of rows, lists"):
        pyfunc.predict(None, pd.DataFrame({"user_id": ["u00001"]}), params={"output": "table"})
    (rec,) = _lines(tmp_path / "pred.jsonl")
    assert rec["status"] == "error" and rec["user_id"] == "nobody" and rec["items"] == [] and "no history" in rec["error"]


def test_sampling_and_bad_sample_rate(tmp_path, monkeypatch) -> None:
    never = PredictionLogger(tmp_path / "a.jsonl", sample_rate=0.0)
    assert not any(never.log(user_id="u", cold=False, top_k=1, items=["i"], scores=[1.0], latency_ms=1) for _ in range(50))
    assert not (tmp_path / "a.jsonl").exists()
    half = PredictionLogger(tmp_path / "b.jsonl", sample_rate=0.5, seed=1)
    written = sum(half.log(user_id="u", cold=False, top_k=1, items=["i"], scores=[1.0], latency_ms=1) for _ in range(400))
    assert 150 < written < 250 and len(_lines(tmp_path / "b.jsonl")) == written
    for bad in ("lots", "1.5", "-0.1"):
        with pytest.raises(ValueError, match=f"TOWEROPS_PREDICTION_LOG_SAMPLE='{bad}'"):
            sample_rate_from_env(bad)
    monkeypatch.setenv("TOWEROPS_PREDICTION_LOG_SAMPLE", "0.25")
    assert PredictionLogger(tmp_path / "c.jsonl").sample_rate == 0.25


def test_concurrent_writers_keep_whole_lines(tmp_path) -> None:
    logger = PredictionLogger(tmp_path / "p.jsonl")
    items = [f"i{n:05d}" for n in range(200)]

    def work() -> None:
        for _ in range(100):
            logger.log(user_id="u", cold=False, top_k=200, items=items, scores=list(range(200)), latency_ms=0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = _lines(tmp_path / "p.jsonl")
    assert len(lines) == 400 and all(r["items"] == items for r in lines)


def test_monitoring_reads_the_prediction_log(pyfunc, tiny_model_dir, tmp_path) -> None:
    from monitoring.prediction_log import read_prediction_log

    users = RealtimeInferenceEngine(tiny_model_dir).bundle.user_ids[:5]
    pyfunc.predict(None, pd.DataFrame({"user_id": users}))
    with pytest.raises(InferenceRequestError):
        pyfunc.predict(None, pd.DataFrame({"user_id": ["ghost"]}))
    frame = read_prediction_log(tmp_path / "pred.jsonl")
    assert frame.user_id.tolist() == [*users, "ghost"]
    assert frame["items"].map(len).tolist() == [10] * 5 + [0]
    assert (frame.latency_ms >= 0).all() and (frame.model_version == "7").all()
