"""One prediction-log schema: monitoring reads what serving writes, with the field names and
required fields defined once in ml/inference/prediction_log.py."""

from __future__ import annotations

import json

import pytest

import ml.inference.prediction_log as schema
import monitoring.prediction_log as reader


def _line(**fields) -> dict:
    """One record exactly as serving builds it."""
    logger = schema.PredictionLogger(path="unused.jsonl", model_version="3", sample_rate=1.0)
    base = dict(user_id="u1", cold=False, top_k=2, items=["i1", "i2"], scores=[0.9, 0.8], latency_ms=1.5,
                ts="2026-11-03T12:00:01.250Z")
    return logger.record(**{**base, **fields})


def test_monitoring_uses_the_schema_of_ml_inference_and_defines_none() -> None:
    assert reader.REQUIRED_FIELDS is schema.REQUIRED_FIELDS
    assert set(schema.REQUIRED_FIELDS) <= set(schema.FIELDS)
    # no second list of field names in the reader's module
    own = [name for name, value in vars(reader).items()
           if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value)
           and value is not schema.REQUIRED_FIELDS and value is not schema.FIELDS]
    assert own == []


def test_a_line_serving_writes_is_read_by_monitoring(tmp_path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(_line()) + "\n" + json.dumps(_line(status="error", error="bad k", items=[], scores=[]))
                    + "\n")
    frame = reader.read_prediction_log(path)
    assert list(frame.columns) == [*schema.REQUIRED_FIELDS, "status"]
    assert frame["status"].tolist() == ["ok", "error"]
    assert frame["items"].tolist() == [["i1", "i2"], []]
    assert frame["model_version"].tolist() == ["3", "3"]


@pytest.mark.parametrize("field", schema.REQUIRED_FIELDS)
def test_each_required_field_of_the_schema_is_required_by_the_reader(tmp_path, field) -> None:
    rec = _line()
    del rec[field]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(rec) + "\n" + json.dumps(_line()) + "\n")
    with pytest.raises(ValueError, match=rf"p.jsonl:1: missing field\(s\) {field};"):
        reader.read_prediction_log(path)


@pytest.mark.parametrize("field", sorted(set(schema.FIELDS) - set(schema.REQUIRED_FIELDS)))
def test_fields_outside_the_required_set_may_be_missing(tmp_path, field) -> None:
    rec = _line()
    del rec[field]
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(rec) + "\n")
    frame = reader.read_prediction_log(path)
    assert len(frame) == 1 and frame["status"].iloc[0] == "ok"
