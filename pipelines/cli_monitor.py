"""`towerops monitor ...`: argument parsing only; the work is in `monitoring`."""

from __future__ import annotations

from typing import Annotated

import typer

from pipelines.common import USER_ERRORS, OutputFormat, fail, info, is_json, opt, print_json

monitor_app = typer.Typer(help="Monitoring: Evidently drift/quality/performance reports and alerts.",
                          no_args_is_help=True)


def parse_queries(query: list[str]) -> dict[str, str]:
    """`TABLE=SELECT ...` options to {table: sql}."""
    queries = {}
    for q in query:
        if "=" not in q:
            raise ValueError(f"--query {q!r} must be TABLE=SELECT ... (tables: users, items, interactions)")
        table, sql = q.split("=", 1)
        queries[table.strip()] = sql
    return queries


def monitor_run_cmd(
    data: Annotated[str | None, typer.Option(help="current window: data folder or postgresql:// DSN")] = None,
    query: Annotated[list[str] | None, typer.Option(help="with a DSN: TABLE=SELECT ... (repeatable)")] = None,
    prediction_log: Annotated[str | None, typer.Option(help="prediction log (JSON lines file or folder)")] = None,
    run_id: Annotated[str | None, typer.Option(help="training run of the model "
                                                  "(default: models:/two_tower@production)")] = None,
    model_uri: Annotated[str | None, typer.Option(help="runs:/... or models:/name@alias of the model")] = None,
    config: Annotated[str | None, typer.Option(help="monitoring config (default: the monitoring section of "
                                                    "towerops.yaml)")] = None,
    workspace: Annotated[str | None, typer.Option(help="Evidently workspace folder ('' = none)")] = "monitoring_workspace",
    start: Annotated[str | None, typer.Option(help="window start (inclusive, ISO 8601)")] = None,
    end: Annotated[str | None, typer.Option(help="window end (exclusive, ISO 8601)")] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="text or json")] = OutputFormat.text,
    on_alert: Annotated[list[str] | None, typer.Option("--on-alert", help="action when an alert fires: retrain "
                                                       "(the alerts of retrain.on_alerts in the monitoring config "
                                                       "start `towerops retrain`)")] = None,
    dsn: Annotated[str | None, typer.Option("--dsn", help="with --on-alert retrain: PostgreSQL for the embedding "
                                                          "tables (env:VAR; default $TOWEROPS_BATCH_DSN)")] = None,
    registry_config: Annotated[str | None, typer.Option("--registry-config", help="with --on-alert retrain: registry "
                                                        "config (model name, gate; default: the registry section "
                                                        "of towerops.yaml)")] = None,
) -> None:
    """Compare a window with the production model's reference; exit 1 when an alert fires (after a
    retrain it started, whose outcome is printed)."""
    from ml.logs import metric_text
    from monitoring.actions import ACTIONS
    from monitoring.run import monitor_run

    try:
        queries = parse_queries(query or [])
        if opt(run_id) and opt(model_uri):
            raise ValueError("pass either --run-id or --model-uri, not both")
        actions = [a.strip() for a in (on_alert or []) if opt(a)]
        unknown = [a for a in actions if a not in ACTIONS]
        if unknown:
            raise ValueError(f"--on-alert {unknown[0]!r} is not an action: use one of {', '.join(ACTIONS)}")
        result = monitor_run(opt(data), opt(model_uri) or opt(run_id), opt(config), opt(prediction_log),
                             opt(workspace), opt(start), opt(end), queries or None)
    except USER_ERRORS as exc:
        fail(exc)
    if is_json(fmt):
        print_json({"run_id": result.run_id, "model_uri": result.model_uri, "metrics": result.metrics,
                    "alerts": [a.name for a in result.alerts], "exit_code": result.exit_code if result.alerts else 0})
    else:
        for name, value in sorted(result.metrics.items()):
            typer.echo(f"{name:36s} {metric_text(value, why='no data for it in this window')}")
    names = ", ".join(a.name for a in result.alerts)
    info(f"monitor run {result.run_id}: model {result.model_uri}; {len(result.alerts)} alert(s)"
         f"{': ' + names if names else ''}")
    if result.alerts:  # a retrain when asked (--on-alert retrain) or retrain.enabled, for retrain.on_alerts
        from monitoring.actions import retrain_on_alerts
        from monitoring.config import load_monitoring_config
        from registry.service import open_registry

        try:
            cfg = load_monitoring_config(opt(config))
            registry = open_registry(opt(registry_config), name=cfg.rollback.model_name if not opt(registry_config)
                                     else None)
            retrained = retrain_on_alerts(result.alerts, cfg, opt(data), requested="retrain" in actions,
                                          registry=registry, dsn=opt(dsn))
        except USER_ERRORS as exc:
            fail(exc)
        if retrained is not None:
            info(f"retrain (parent run {retrained.parent_run_id}): {retrained.reason}")
    if result.alerts:
        raise typer.Exit(result.exit_code)


def monitor_reference_cmd(
    run_id: Annotated[str, typer.Option(help="training run to attach the reference to")],
    data: Annotated[str, typer.Option(help="the run's training data: folder or postgresql:// DSN")],
    config: Annotated[str | None, typer.Option(help="monitoring config (default: the monitoring section of "
                                                    "towerops.yaml)")] = None,
) -> None:
    """Build and log `monitoring/reference/` on a training run (backfill)."""
    from monitoring.run import backfill_reference

    try:
        train_run_id = backfill_reference(run_id, data, opt(config))
    except USER_ERRORS as exc:
        fail(exc)
    info(f"logged monitoring/reference to run {train_run_id}")


def monitor_dashboard_cmd(
    workspace: Annotated[str, typer.Option(help="Evidently workspace folder")] = "monitoring_workspace",
    project: Annotated[str, typer.Option(help="project name")] = "towerops",
) -> None:
    """Create the workspace project and its panels (if missing) and list them."""
    from monitoring.workspace import panel_titles

    for title in panel_titles(workspace, project):
        typer.echo(title)
    info(f"view with: evidently ui --workspace {workspace}")


def register(app: typer.Typer) -> None:
    """Add the `monitor` command group to the towerops CLI."""
    app.add_typer(monitor_app, name="monitor")
    monitor_app.command("run")(monitor_run_cmd)
    monitor_app.command("reference")(monitor_reference_cmd)
    monitor_app.command("dashboard")(monitor_dashboard_cmd)
