"""The Evidently workspace project: dashboard panels built in code, snapshots listed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from monitoring.reports import feature_drift_report, performance_report
from monitoring.workspace import PANEL_TITLES, add_snapshots, open_project, panel_titles


def _frames(seed: int, loc: float) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"price": rng.normal(loc, 1, 200), "genre": rng.choice(["a", "b"], 200)})


def test_dashboard_panels_and_snapshots_in_workspace(tmp_path):
    ws_dir = tmp_path / "ws"
    drift = feature_drift_report("item_drift", _frames(0, 0.0), _frames(1, 2.0), ["price"], ["genre"], {})
    assert drift.metrics["item_drift_share"] >= 0.5  # price moved by 2 sd
    log = pd.DataFrame({"ts": pd.date_range("2026-11-03", periods=50, freq="s"), "latency_ms": np.arange(50.0)})
    perf = performance_report(log, "10s")
    assert perf.metrics["latency_p99_ms"] > perf.metrics["latency_p50_ms"]
    ids = add_snapshots(ws_dir, [drift.snapshot, perf.snapshot])
    assert len(ids) == 2

    titles = panel_titles(ws_dir)
    assert set(PANEL_TITLES) <= set(titles)
    assert len(titles) == len(PANEL_TITLES)  # reopening does not add panels twice
    ws, project = open_project(ws_dir)
    listed = {str(s) for s in ws.list_runs(project.id)}
    assert set(ids) <= listed
    # A panel reads the metric that the drift snapshot carries, filtered by its tag.
    dashboard = ws.get_dashboard(project.id)
    drift_panel = next(p for p in dashboard.panels if p.title == "Drift share over time")
    assert {tuple(v.tags) for v in drift_panel.values} == {("item_drift",), ("user_drift",)}
    assert all(v.metric.endswith("DriftedColumnsCount") for v in drift_panel.values)
    assert "item_drift" in ws.get_run(project.id, ids[0]).tags
