"""`towerops server`: the PostgreSQL-backed MLflow tracking server (see pipelines/server.py)."""

from __future__ import annotations

from pathlib import Path

import typer

DSN_HELP = "PostgreSQL DSN of the backend store (env TOWEROPS_TRACKING_DSN or MLFLOW_BACKEND_STORE_URI)"


def register(app: typer.Typer) -> None:
    """Add `towerops server` (start), `server migrate` and `server mark-failed`."""
    from pipelines.cli import USER_ERRORS, err, fail

    server_app = typer.Typer(help="The team MLflow tracking server on PostgreSQL.")
    app.add_typer(server_app, name="server")

    @server_app.callback(invoke_without_command=True)
    def server(
        ctx: typer.Context,
        dsn: str | None = typer.Option(None, "--dsn", "--backend-store-uri", help=DSN_HELP, show_default=False),
        host: str = typer.Option("127.0.0.1", help="interface to bind (0.0.0.0 for the team network)"),
        port: int = typer.Option(5000, help="TCP port"),
        artifacts_destination: str = typer.Option(
            "mlartifacts", help="local folder or s3://bucket/prefix (S3 endpoint and keys from MLFLOW_S3_ENDPOINT_URL, "
                                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"),
        workers: int | None = typer.Option(None, help="server worker processes (MLflow's default: 4)"),
        auth: bool = typer.Option(False, "--auth", help="MLflow basic-auth (needs MLFLOW_AUTH_ADMIN_PASSWORD)"),
        auth_dsn: str | None = typer.Option(None, help="PostgreSQL DSN of the auth user store "
                                                          "(env TOWEROPS_AUTH_DSN; default: database <db>_auth)"),
        allow_loopback_webhooks: bool = typer.Option(False, "--allow-loopback-webhooks",
                                                     help="let webhooks call http:// receivers on private/loopback IPs"),
        state_dir: Path = typer.Option(Path(".towerops/server"), help="webhook key and generated auth config"),
        check_only: bool = typer.Option(False, "--check-only",
                                        help="run the preflight checks and report the schema state; start nothing"),
    ) -> None:
        """Check PostgreSQL and the artifact store, apply MLflow's migrations, then exec `mlflow server`."""
        if ctx.invoked_subcommand is not None:
            return
        from pipelines.server import ServerSettings, exec_server, prepare

        settings = ServerSettings(dsn=dsn, host=host, port=port, artifacts_destination=artifacts_destination,
                                  workers=workers, auth=auth, auth_dsn=auth_dsn,
                                  allow_loopback_webhooks=allow_loopback_webhooks, state_dir=state_dir)
        try:
            plan = prepare(settings, migrate=not check_only)
        except USER_ERRORS as exc:
            fail(exc)
        if check_only:
            err.print(f"ok: {plan.target.describe()}, schema at {plan.migration.after}; artifacts {plan.artifacts}")
            return
        if plan.migration.changed:
            err.print(f"migrated MLflow schema: {plan.migration.before or 'empty'} -> {plan.migration.after}")
        err.print(f"starting {plan.describe()}")
        exec_server(plan)

    @server_app.command("migrate")
    def migrate(dsn: str | None = typer.Option(None, "--dsn", "--backend-store-uri", help=DSN_HELP,
                                                  show_default=False)) -> None:
        """Apply MLflow's schema migrations (all in one transaction) and exit. Back up first."""
        from pipelines.server import check_postgres, migrate_tracking_db, parse_dsn, resolve_dsn

        try:
            target = parse_dsn(resolve_dsn(dsn))
            check_postgres(target)
            result = migrate_tracking_db(target)
        except USER_ERRORS as exc:
            fail(exc)
        if result.changed:
            err.print(f"migrated {target.describe()}: {result.before or 'empty'} -> {result.after}")
        else:
            err.print(f"up to date: {target.describe()} at {result.after}")

    @server_app.command("mark-failed")
    def mark_failed(run_id: str = typer.Argument(..., help="run left RUNNING by a client that died"),
                    reason: str = typer.Option("client died while the tracking server was down",
                                               help="stored in the tag towerops.failure")) -> None:
        """Mark a run FAILED on the server at MLFLOW_TRACKING_URI."""
        from mlflow.exceptions import MlflowException

        from pipelines.server import mark_run_failed

        try:
            mark_run_failed(run_id, reason)
        except (*USER_ERRORS, MlflowException) as exc:
            fail(exc)
        err.print(f"run {run_id} marked FAILED")
