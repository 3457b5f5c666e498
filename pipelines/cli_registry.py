"""`towerops register | promote | rollback | registry ... | webhooks ...` (thin wrappers)."""

from __future__ import annotations

import json
import os

import typer
from rich.console import Console
from rich.table import Table

registry_app = typer.Typer(help="Registry: status, history, reconcile.", no_args_is_help=True)
webhooks_app = typer.Typer(help="MLflow webhooks: receive and register.", no_args_is_help=True)
out = Console()

CONFIG = typer.Option("configs/registry.yaml", "--config", help="registry config (model name, gate)")
NAME = typer.Option(None, "--name", help="registered model name (default from config: two_tower)")


def _open(config: str, name: str | None, deploy: bool = True):
    from registry.service import open_registry

    return open_registry(config, name=name, deploy=deploy)


def _errors():
    from pipelines.cli import USER_ERRORS

    return USER_ERRORS


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
    app.add_typer(webhooks_app, name="webhooks")

    @app.command("register")
    def register_cmd(run_id: str = typer.Option(..., help="training run id"), config: str = CONFIG,
                     name: str | None = NAME, description: str | None = typer.Option(None)) -> None:
        """Register a training run's recommender as a new model version (semver + lineage tags)."""
        from pipelines.cli import fail

        try:
            mv = _open(config, name, deploy=False).register(run_id, description=description, trigger="cli")
        except _errors() as exc:
            fail(exc)
        out.print(f"registered {mv.name} v{mv.version} as {mv.tags.get('semver')}")

    @app.command("promote")
    def promote_cmd(version: str | None = typer.Option(None, help="model version number"),
                    run_id: str | None = typer.Option(None, help="register this training run first, then promote it"),
                    stage: str = typer.Option("production", help="staging | production | archived"),
                    force: bool = typer.Option(False, help="override a failed gate (needs --reason)"),
                    reason: str | None = typer.Option(None), data: str | None = typer.Option(
                        None, help="evaluation data for the gate (default: the candidate's training data)"),
                    force_if: str = typer.Option("", hidden=True, help="'true' = --force (for MLproject)"),
                    trigger: str = typer.Option("cli", hidden=True), config: str = CONFIG,
                    name: str | None = NAME) -> None:
        """Move a version to a stage; production passes the gate first."""
        from pipelines.cli import fail
        from registry.stages import GateFailed

        force = force or force_if.strip().lower() in {"1", "true", "yes"}
        try:
            if bool(version) == bool(run_id):
                raise ValueError("pass exactly one of --version (a registered version) or --run-id (a training run)")
            reg = _open(config, name)
            if run_id:
                version = str(reg.register(run_id, trigger=trigger).version)
            result = reg.promote(version, stage, force=force, reason=reason or None, trigger=trigger, data=data or None)
        except GateFailed as exc:
            fail(exc, code=3)
        except _errors() as exc:
            fail(exc)
        out.print(result.describe())

    @app.command("rollback")
    def rollback_cmd(to_version: str | None = typer.Option(None, help="version to return to (default: the one before)"),
                     reason: str | None = typer.Option(None), trigger: str = typer.Option("cli", hidden=True),
                     config: str = CONFIG, name: str | None = NAME) -> None:
        """Return production to the version that held it before (twice: two steps back)."""
        from pipelines.cli import fail

        try:
            result = _open(config, name).rollback(to_version or None, reason=reason or None, trigger=trigger)
        except _errors() as exc:
            fail(exc)
        out.print(result.describe())


@registry_app.command("status")
def status_cmd(config: str = CONFIG, name: str | None = NAME, as_json: bool = typer.Option(False, "--json")) -> None:
    """Versions with their semver, stage and aliases."""
    from pipelines.cli import fail

    try:
        reg = _open(config, name, deploy=False)
        rows = reg.status()
    except _errors() as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"registered model {reg.name}")
    for col in ("version", "semver", "stage", "aliases", "ndcg_at_10", "run_id", "created"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r.get(c) or "") for c in ("version", "semver", "stage", "aliases", "ndcg_at_10",
                                                       "run_id", "created")))
    out.print(table)


@registry_app.command("history")
def history_cmd(config: str = CONFIG, name: str | None = NAME, limit: int = typer.Option(50),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """The audit trail: every stage change, who, when, why, gate result, trigger."""
    from pipelines.cli import fail

    try:
        reg = _open(config, name, deploy=False)
        entries = reg.history(limit)
    except _errors() as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps([e.to_dict() for e in entries], indent=2, default=str))
        return
    table = Table(title=f"stage history of {reg.name}")
    for col in ("when", "version", "semver", "action", "from", "to", "previous", "who", "trigger", "gate", "reason"):
        table.add_column(col)
    for e in entries:
        gate = "" if e.gate_passed is None else ("pass" if e.gate_passed else "FAIL")
        table.add_row(e.created_at.strftime("%Y-%m-%d %H:%M:%S") if e.created_at else "", e.version, e.semver or "",
                      e.action + (" (forced)" if e.forced else ""), e.from_stage or "", e.to_stage or "",
                      e.previous_version or "", e.actor or "", e.trigger or "", gate, e.reason or "")
    out.print(table)


@registry_app.command("reconcile")
def reconcile_cmd(config: str = CONFIG, name: str | None = NAME,
                  data: str | None = typer.Option(None)) -> None:
    """Apply the gate/audit/deploy to alias changes whose webhook never arrived."""
    from pipelines.cli import fail

    try:
        result = _open(config, name).reconcile(data=data)
    except _errors() as exc:
        fail(exc)
    out.print(result.describe() if result else "in sync: the production alias matches the audit trail")


def _secret() -> str:
    secret = os.environ.get("TOWEROPS_WEBHOOK_SECRET", "")
    if not secret:
        raise ValueError("set TOWEROPS_WEBHOOK_SECRET to the shared secret MLflow signs deliveries with")
    return secret


@webhooks_app.command("serve")
def webhooks_serve(host: str = typer.Option("127.0.0.1"), port: int = typer.Option(8765),
                   config: str = CONFIG, name: str | None = NAME) -> None:
    """Receive MLflow webhooks (secret from $TOWEROPS_WEBHOOK_SECRET)."""
    from pipelines.cli import fail
    from registry.webhooks import serve

    try:
        serve(lambda: _open(config, name), _secret(), host, port)
    except _errors() as exc:
        fail(exc)


@webhooks_app.command("register")
def webhooks_register(url: str = typer.Option(..., help="public URL of `towerops webhooks serve`, .../webhooks/mlflow"),
                      config: str = CONFIG, name: str | None = NAME) -> None:
    """Register (or update) the MLflow webhook pointing at the receiver."""
    from pipelines.cli import fail
    from registry.webhooks import register_webhook

    try:
        hook = register_webhook(_open(config, name, deploy=False).client, url, _secret())
    except _errors() as exc:
        fail(exc)
    out.print(f"webhook {hook.webhook_id} -> {url} for {', '.join(str(e) for e in hook.events)}")
