"""Evidently workspace: one project whose dashboard is built in code, and the monitor
runs' snapshots added to it. View with `evidently ui --workspace <dir>`.

Why in code: the dashboard is part of the product, reviewed and versioned like the
reports; a fresh workspace (CI, a new machine) gets the same panels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from ml.logs import get_logger

log = get_logger("monitoring")

DASHBOARD_TAB = "Monitoring"
PANEL_TITLES = (
    "Drift share over time",
    "Embedding drift score",
    "Like rate",
    "Latency",
    "Share of popular items in top-k",
    "New categories",
)


def _panels() -> list:
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    return [
        line_plot_panel(PANEL_TITLES[0], [
            PanelMetric(legend="item features", metric="DriftedColumnsCount", tags=["item_drift"], metric_labels={"value_type": "share"}),
            PanelMetric(legend="user features", metric="DriftedColumnsCount", tags=["user_drift"], metric_labels={"value_type": "share"}),
        ], description="share of drifted feature columns per monitor window", size="half"),
        line_plot_panel(PANEL_TITLES[1], [
            PanelMetric(legend="item embeddings", metric="EmbeddingsDrift", tags=["embedding_drift"], metric_labels={"embeddings_name": "item"}),
            PanelMetric(legend="user embeddings", metric="EmbeddingsDrift", tags=["embedding_drift"], metric_labels={"embeddings_name": "user"}),
        ], description="ROC AUC of a classifier telling current from reference (0.5 = no drift)", size="half"),
        line_plot_panel(PANEL_TITLES[2], [
            PanelMetric(legend="observed", metric="MeanValue", tags=["online_quality"], metric_labels={"column": "liked"}),
            PanelMetric(legend="expected", metric="MeanValue", tags=["online_quality"], metric_labels={"column": "expected"}),
        ], description="like rate of recommended items vs the model's expectation", size="half"),
        line_plot_panel(PANEL_TITLES[3], [
            PanelMetric(legend="p50", metric="QuantileValue", tags=["performance"], metric_labels={"quantile": "0.5"}),
            PanelMetric(legend="p95", metric="QuantileValue", tags=["performance"], metric_labels={"quantile": "0.95"}),
            PanelMetric(legend="p99", metric="QuantileValue", tags=["performance"], metric_labels={"quantile": "0.99"}),
        ], description="serving latency (ms) from the prediction log", size="half"),
        line_plot_panel(PANEL_TITLES[4], [
            PanelMetric(legend="popular share", metric="MeanValue", tags=["prediction_drift"], metric_labels={"column": "popular"}),
        ], size="half"),
        line_plot_panel(PANEL_TITLES[5], [
            PanelMetric(legend="genre", metric="OutListValueCount", tags=["data_quality"], metric_labels={"column": "genre"}),
            PanelMetric(legend="maker", metric="OutListValueCount", tags=["data_quality"], metric_labels={"column": "maker"}),
        ], description="items whose genre/maker was not in the training vocabulary", size="half"),
    ]


def open_project(workspace_dir: str | Path, project_name: str = "towerops") -> tuple[Any, Any]:
    """(workspace, project), creating both and the dashboard panels when missing.

    Panels are added only to a new project, so edits made in the UI survive.
    """
    from evidently.ui.workspace import Workspace

    path = Path(workspace_dir)
    path.mkdir(parents=True, exist_ok=True)
    ws = Workspace(str(path))
    found = [p for p in ws.search_project(project_name)]
    if found:
        return ws, found[0]
    project = ws.create_project(project_name, description="towerops two-tower recommender: drift, quality, latency")
    for panel in _panels():
        project.dashboard.add_panel(panel, tab=DASHBOARD_TAB)
    project.save()
    log.info("created Evidently project %s (%s) in %s", project_name, project.id, path)
    return ws, project


def add_snapshots(workspace_dir: str | Path, snapshots: Iterable[Any], project_name: str = "towerops") -> list[str]:
    """Add snapshots to the project; returns their ids."""
    ws, project = open_project(workspace_dir, project_name)
    ids = [str(ws.add_run(project.id, snap).id) for snap in snapshots]
    log.info("added %d snapshot(s) to Evidently project %s in %s", len(ids), project_name, workspace_dir)
    return ids


def panel_titles(workspace_dir: str | Path, project_name: str = "towerops") -> list[str]:
    """Titles of the dashboard's panels (what `evidently ui` shows)."""
    ws, project = open_project(workspace_dir, project_name)
    return [p.title for p in ws.get_dashboard(project.id).panels]
