"""`monitor run --on-alert retrain`: which fired alerts start a retrain, with what, and config errors."""

from __future__ import annotations

import pytest

from monitoring.alerts import Alert
from monitoring.config import parse_config

DRIFT = Alert("item_data_drift", "item_drift_share", 0.7, ">=", 0.5, "error")
LATENCY = Alert("latency_p99", "latency_p99_ms", 400.0, ">", 250.0, "warning")


def _calls():
    calls: list[tuple] = []

    def fake(data, **kwargs):
        calls.append((data, kwargs))
        return "retrained"

    return calls, fake


def test_only_configured_alerts_start_a_retrain_and_only_when_asked() -> None:
    from monitoring.actions import retrain_on_alerts

    cfg = parse_config({})
    calls, fake = _calls()
    assert retrain_on_alerts([DRIFT], cfg, "data/today", requested=False, retrain_fn=fake) is None   # not asked
    assert retrain_on_alerts([LATENCY], cfg, "data/today", retrain_fn=fake) is None                  # not a drift alert
    assert calls == []
    assert retrain_on_alerts([LATENCY, DRIFT], cfg, "data/today", retrain_fn=fake) == "retrained"
    (data, kwargs), = calls
    assert data == "data/today" and kwargs["trigger"] == "monitoring"
    assert "item_data_drift: item_drift_share=0.7 >= 0.5" in kwargs["reason"] and "latency" not in kwargs["reason"]


def test_config_names_the_alerts_the_data_and_can_always_retrain() -> None:
    from monitoring.actions import retrain_on_alerts

    cfg = parse_config({"retrain": {"enabled": True, "on_alerts": ["latency_p99"], "data": "data/window",
                                    "window_days": 30}})
    calls, fake = _calls()
    assert retrain_on_alerts([LATENCY], cfg, "data/today", requested=False, retrain_fn=fake) == "retrained"
    assert calls[0][0] == "data/window" and calls[0][1]["window_days"] == 30


def test_unknown_alert_names_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="retrain.on_alerts names \\['no_such_alert'\\], which are not alerts"):
        parse_config({"retrain": {"on_alerts": ["no_such_alert"]}})
    # the default list only names alerts a config keeps: a config without them still loads
    assert parse_config({"alerts": [{"name": "a", "metric": "m", "threshold": 1}]}).retrain.on_alerts
    assert parse_config({"alerts": [], "retrain": {"on_alerts": list(parse_config({}).retrain.on_alerts)}})  # the file's copy


def test_no_data_to_retrain_on_is_a_clear_error() -> None:
    from monitoring.actions import retrain_with_reference

    with pytest.raises(ValueError, match="no data to retrain on: pass --data"):
        retrain_with_reference(None)
