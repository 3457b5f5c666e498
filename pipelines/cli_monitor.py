"""`towerops monitor ...`: argument parsing only; the work is in `monitoring`."""

from __future__ import annotations

from pathlib import Path

import typer


def _opt(value: str | None) -> str | None:
    """MLproject passes empty strings for unset parameters."""
    return value if value not in (None, "", "None") else None


def register(app: typer.Typer) -> None:
    """Add the `monitor` command group to the towerops CLI."""
    from pipelines.cli import USER_ERRORS, err, fail

    monitor_app = typer.Typer(help="Monitoring: Evidently drift/quality/performance reports and alerts.",
                              no_args_is_help=True)
    app.add_typer(monitor_app, name="monitor")

    @monitor_app.command("run")
    def monitor_run_cmd(
        data: str | None = typer.Option(None, help="current window: data folder or postgresql:// DSN"),
        query: list[str] = typer.Option([], help="with a DSN: TABLE=SELECT ... (repeatable)"),
        prediction_log: str | None = typer.Option(None, help="prediction log (JSON lines file or folder)"),
        run_id: str | None = typer.Option(None, help="training run of the model (default: models:/two_tower@production)"),
        model_uri: str | None = typer.Option(None, help="runs:/... or models:/name@alias of the model"),
        config: Path | None = typer.Option(Path("configs/monitoring.yaml"), help="monitoring config"),
        workspace: str | None = typer.Option("monitoring_workspace", help="Evidently workspace folder ('' = none)"),
        start: str | None = typer.Option(None, help="window start (inclusive, ISO 8601)"),
        end: str | None = typer.Option(None, help="window end (exclusive, ISO 8601)"),
    ) -> None:
        """Compare a window with the production model's reference; exit 1 when an alert fires."""
        from monitoring.run import monitor_run

        try:
            queries = {}
            for q in query:
                if "=" not in q:
                    raise ValueError(f"--query {q!r} must be TABLE=SELECT ... (tables: users, items, interactions)")
                table, sql = q.split("=", 1)
                queries[table.strip()] = sql
            if _opt(run_id) and _opt(model_uri):
                raise ValueError("pass either --run-id or --model-uri, not both")
            result = monitor_run(_opt(data), _opt(model_uri) or _opt(run_id), config, _opt(prediction_log),
                                 _opt(workspace), _opt(start), _opt(end), queries or None)
        except USER_ERRORS as exc:
            fail(exc)
        for name, value in sorted(result.metrics.items()):
            typer.echo(f"{name:36s} {value:.4f}")
        err.print(f"monitor run {result.run_id}: model {result.model_uri}; "
                  f"{len(result.alerts)} alert(s){': ' + ', '.join(a.name for a in result.alerts) if result.alerts else ''}")
        if result.alerts:
            raise typer.Exit(result.exit_code)

    @monitor_app.command("reference")
    def monitor_reference_cmd(
        run_id: str = typer.Option(..., help="training run to attach the reference to"),
        data: str = typer.Option(..., help="the run's training data: folder or postgresql:// DSN"),
        config: Path | None = typer.Option(Path("configs/monitoring.yaml"), help="monitoring config"),
    ) -> None:
        """Build and log `monitoring/reference/` on a training run (backfill)."""
        from ml.data.loaders import load_dataset
        from monitoring.config import load_monitoring_config
        from monitoring.reference import log_reference
        from monitoring.run import download_bundle, resolve_model

        try:
            cfg = load_monitoring_config(config)
            dataset = load_dataset(data)
            train_run_id, uri = resolve_model(run_id)
            log_reference(train_run_id, download_bundle(uri), dataset, cfg.reference)
        except USER_ERRORS as exc:
            fail(exc)
        err.print(f"logged monitoring/reference to run {train_run_id}")

    @monitor_app.command("dashboard")
    def monitor_dashboard_cmd(
        workspace: str = typer.Option("monitoring_workspace", help="Evidently workspace folder"),
        project: str = typer.Option("towerops", help="project name"),
    ) -> None:
        """Create the workspace project and its panels (if missing) and list them."""
        from monitoring.workspace import panel_titles

        for title in panel_titles(workspace, project):
            typer.echo(title)
        err.print(f"view with: evidently ui --workspace {workspace}")
