"""`towerops server`: the PostgreSQL-backed MLflow tracking server (the launcher is `ml.tracking.server`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipelines.common import USER_ERRORS, fail, info

server_app = typer.Typer(help="The team MLflow tracking server on PostgreSQL.")

Dsn = Annotated[str | None, typer.Option("--dsn", "--backend-store-uri", show_default=False,
                                            help="PostgreSQL DSN of the backend store (env TOWEROPS_TRACKING_DSN "
                                                 "or MLFLOW_BACKEND_STORE_URI)")]


def server(
    ctx: typer.Context,
    dsn: Dsn = None,
    host: Annotated[str, typer.Option(help="interface to bind (0.0.0.0 for the team network)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 5000,
    artifacts_destination: Annotated[str, typer.Option(
        help="local folder or s3://bucket/prefix (S3 endpoint and keys from MLFLOW_S3_ENDPOINT_URL, "
             "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)")] = "mlartifacts",
    workers: Annotated[int | None, typer.Option(help="server worker processes (MLflow's default: 4)")] = None,
    auth: Annotated[bool, typer.Option("--auth", help="MLflow basic-auth (needs MLFLOW_AUTH_ADMIN_PASSWORD)")] = False,
    auth_dsn: Annotated[str | None, typer.Option(help="PostgreSQL DSN of the auth user store "
                                                    "(env TOWEROPS_AUTH_DSN; default: database <db>_auth)")] = None,
    allow_loopback_webhooks: Annotated[bool, typer.Option(
        "--allow-loopback-webhooks", help="let webhooks call http:// receivers on private/loopback IPs")] = False,
    state_dir: Annotated[Path, typer.Option(help="webhook key and generated auth config")] = Path(".towerops/server"),
    check_only: Annotated[bool, typer.Option("--check-only", help="run the preflight checks and report the schema "
                                             "state; start nothing")] = False,
) -> None:
    """Check PostgreSQL and the artifact store, apply MLflow's migrations, then exec `mlflow server`."""
    if ctx.invoked_subcommand is not None:
        return
    from ml.tracking.server import ServerSettings, exec_server, prepare

    settings = ServerSettings(dsn=dsn, host=host, port=port, artifacts_destination=artifacts_destination,
                              workers=workers, auth=auth, auth_dsn=auth_dsn,
                              allow_loopback_webhooks=allow_loopback_webhooks, state_dir=state_dir)
    try:
        plan = prepare(settings, migrate=not check_only)
    except USER_ERRORS as exc:
        fail(exc)
    if check_only:
        info(f"ok: {plan.target.describe()}, schema at {plan.migration.after}; artifacts {plan.artifacts}")
        return
    if plan.migration.changed:
        info(f"migrated MLflow schema: {plan.migration.before or 'empty'} -> {plan.migration.after}")
    info(f"starting {plan.describe()}")
    exec_server(plan)


def migrate(dsn: Dsn = None) -> None:
    """Apply MLflow's schema migrations (all in one transaction) and exit. Back up first."""
    from ml.tracking.server import check_postgres, migrate_tracking_db, parse_dsn, resolve_dsn

    try:
        target = parse_dsn(resolve_dsn(dsn))
        check_postgres(target)
        result = migrate_tracking_db(target)
    except USER_ERRORS as exc:
        fail(exc)
    if result.changed:
        info(f"migrated {target.describe()}: {result.before or 'empty'} -> {result.after}")
    else:
        info(f"up to date: {target.describe()} at {result.after}")


def mark_failed(run_id: Annotated[str, typer.Argument(help="run left RUNNING by a client that died")],
                reason: Annotated[str, typer.Option(help="stored in the tag towerops.failure")] =
                "client died while the tracking server was down") -> None:
    """Mark a run FAILED on the server at MLFLOW_TRACKING_URI."""
    from mlflow.exceptions import MlflowException

    from ml.tracking.server import mark_run_failed

    try:
        mark_run_failed(run_id, reason)
    except (*USER_ERRORS, MlflowException) as exc:
        fail(exc)
    info(f"run {run_id} marked FAILED")


def register(app: typer.Typer) -> None:
    """Add `towerops server` (start), `server migrate` and `server mark-failed`."""
    app.add_typer(server_app, name="server")
    server_app.callback(invoke_without_command=True)(server)
    server_app.command("migrate")(migrate)
    server_app.command("mark-failed")(mark_failed)
