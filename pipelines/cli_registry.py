"""`towerops register | promote | rollback | registry ... | webhooks ...` (thin wrappers)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from pipelines.common import USER_ERRORS, OutputFormat, fail, is_json, opt, print_json, print_table

registry_app = typer.Typer(help="Registry: status, history, reconcile.", no_args_is_help=True)
webhooks_app = typer.Typer(help="MLflow webhooks: receive and register.", no_args_is_help=True)

Config = Annotated[str | None, typer.Option("--config", help="registry config (model name, gate; default: the "
                                                              "registry section of towerops.yaml)")]
Name = Annotated[str | None, typer.Option("--name", help="registered model name (default from config: two_tower)")]
Format = Annotated[OutputFormat, typer.Option("--format", help="text (a table) or json")]
AsJson = Annotated[bool, typer.Option("--json", help="same as --format json")]
CONFIG: str | None = None  # the platform config's registry section (towerops.yaml)


def _open(config: str | None, name: str | None, deploy: bool = True) -> Any:
    from registry.service import open_registry

    return open_registry(opt(config), name=name, deploy=deploy)


def register_cmd(run_id: Annotated[str, typer.Option(help="training run id")], config: Config = CONFIG,
                 name: Name = None, description: Annotated[str | None, typer.Option()] = None) -> None:
    """Register a training run's recommender as a new model version (semver + lineage tags)."""
    try:
        mv = _open(config, name, deploy=False).register(run_id, description=description, trigger="cli")
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"registered {mv.name} v{mv.version} as {mv.tags.get('semver')}")


def promote_cmd(
    version: Annotated[str | None, typer.Option(help="model version number")] = None,
    run_id: Annotated[str | None, typer.Option(help="register this training run first, then promote it")] = None,
    stage: Annotated[str, typer.Option(help="staging | production | archived")] = "production",
    force: Annotated[bool, typer.Option(help="override a failed gate (needs --reason)")] = False,
    reason: Annotated[str | None, typer.Option()] = None,
    data: Annotated[str | None, typer.Option(help="evaluation data for the gate "
                                                "(default: the candidate's training data)")] = None,
    force_if: Annotated[str, typer.Option(hidden=True, help="'true' = --force (for MLproject)")] = "",
    trigger: Annotated[str, typer.Option(hidden=True)] = "cli",
    config: Config = CONFIG,
    name: Name = None,
) -> None:
    """Move a version to a stage; production passes the gate first (exit 3 when it fails, 2 when it
    cannot be evaluated: nothing changes then)."""
    from registry.stages import GateError, GateFailed

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
    except (GateError, *USER_ERRORS) as exc:
        fail(exc)
    typer.echo(result.describe())


def rollback_cmd(
    to_version: Annotated[str | None, typer.Option(help="version to return to (default: the one before)")] = None,
    reason: Annotated[str | None, typer.Option()] = None,
    trigger: Annotated[str, typer.Option(hidden=True)] = "cli",
    config: Config = CONFIG,
    name: Name = None,
) -> None:
    """Return production to the version that held it before (twice: two steps back)."""
    try:
        result = _open(config, name).rollback(to_version or None, reason=reason or None, trigger=trigger)
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(result.describe())


def status_cmd(config: Config = CONFIG, name: Name = None, fmt: Format = OutputFormat.text,
               as_json: AsJson = False) -> None:
    """Versions with their semver, stage and aliases."""
    try:
        reg = _open(config, name, deploy=False)
        rows = reg.status()
    except USER_ERRORS as exc:
        fail(exc)
    if is_json(fmt, as_json):
        print_json(rows)
        return
    columns = ("version", "semver", "stage", "aliases", "ndcg_at_10", "run_id", "created")
    print_table(_table(f"registered model {reg.name}", columns,
                       [[str(r.get(c) or "") for c in columns] for r in rows]))


def history_cmd(config: Config = CONFIG, name: Name = None, limit: Annotated[int, typer.Option()] = 50,
                fmt: Format = OutputFormat.text, as_json: AsJson = False) -> None:
    """The audit trail: every stage change, who, when, why, gate result, trigger."""
    try:
        reg = _open(config, name, deploy=False)
        entries = reg.history(limit)
    except USER_ERRORS as exc:
        fail(exc)
    if is_json(fmt, as_json):
        print_json([e.to_dict() for e in entries])
        return
    columns = ("when", "version", "semver", "action", "from", "to", "previous", "who", "trigger", "gate", "reason")
    rows = []
    for e in entries:
        gate = "" if e.gate_passed is None else ("pass" if e.gate_passed else "FAIL")
        rows.append([e.created_at.strftime("%Y-%m-%d %H:%M:%S") if e.created_at else "", e.version, e.semver or "",
                     e.action + (" (forced)" if e.forced else ""), e.from_stage or "", e.to_stage or "",
                     e.previous_version or "", e.actor or "", e.trigger or "", gate, e.reason or ""])
    print_table(_table(f"stage history of {reg.name}", columns, rows))


def _table(title: str, columns: tuple[str, ...], rows: list[list[str]]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


def reconcile_cmd(config: Config = CONFIG, name: Name = None,
                  data: Annotated[str | None, typer.Option()] = None) -> None:
    """Apply the gate/audit/deploy to alias changes whose webhook never arrived; repair stage tags
    and storage (pointer, model_versions) to match the registry's production. Safe to run from cron."""
    try:
        result = _open(config, name).reconcile(data=opt(data))
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(result.describe() if result else "in sync: the production alias matches the audit trail, "
                                                "stage tags and storage match the registry")


def _secret() -> str:
    """The signing secret, from the variable `webhooks.secret` of towerops.yaml names
    (default env:TOWEROPS_WEBHOOK_SECRET)."""
    from ml.platform import webhook_secret

    return webhook_secret()


def webhooks_serve(host: Annotated[str | None, typer.Option(help="interface to bind (default: webhooks.host "
                                                            "of towerops.yaml, 127.0.0.1)")] = None,
                   port: Annotated[int | None, typer.Option(help="port (default: webhooks.port, 8765)")] = None,
                   config: Config = CONFIG, name: Name = None) -> None:
    """Receive MLflow webhooks: gate, audit and deploy production alias changes made in the MLflow UI."""
    from ml.platform import platform_section
    from registry.webhooks import serve

    try:
        section = platform_section("webhooks")
        _open(config, name)  # a bad config, gate or audit set-up fails now, not at the first delivery
        serve(lambda: _open(config, name), _secret(), host or section.host, port or section.port)
    except USER_ERRORS as exc:
        fail(exc)


def webhooks_register(url: Annotated[str | None, typer.Option(help="public URL of `towerops webhooks serve`, "
                                                              ".../webhooks/mlflow (default: webhooks.url of "
                                                              "towerops.yaml)")] = None,
                      config: Config = CONFIG, name: Name = None) -> None:
    """Register (or update) the MLflow webhook pointing at the receiver."""
    from ml.platform import platform_section
    from registry.webhooks import register_webhook

    try:
        section = platform_section("webhooks")
        url = opt(url) or section.url
        if not url:
            raise ValueError("no receiver URL: pass --url https://.../webhooks/mlflow or set webhooks.url in "
                             "towerops.yaml")
        hook = register_webhook(_open(config, name, deploy=False).client, url, _secret(), name=section.name)
    except USER_ERRORS as exc:
        fail(exc)
    typer.echo(f"webhook {hook.webhook_id} ({section.name}) -> {url} for {', '.join(str(e) for e in hook.events)}")


def register(app: typer.Typer) -> None:
    """Add register/promote/rollback and the `registry` and `webhooks` groups."""
    app.command("register")(register_cmd)
    app.command("promote")(promote_cmd)
    app.command("rollback")(rollback_cmd)
    app.add_typer(registry_app, name="registry")
    registry_app.command("status")(status_cmd)
    registry_app.command("history")(history_cmd)
    registry_app.command("reconcile")(reconcile_cmd)
    app.add_typer(webhooks_app, name="webhooks")
    webhooks_app.command("serve")(webhooks_serve)
    webhooks_app.command("register")(webhooks_register)
