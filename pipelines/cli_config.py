"""`towerops config show` and `towerops doctor` (thin: the work is in pipelines.platform and
pipelines.doctor)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from pipelines.common import USER_ERRORS, OutputFormat, fail, info, is_json, print_json, print_table

config_app = typer.Typer(help="The platform config (towerops.yaml): where it is, what it says.", no_args_is_help=True)

Format = Annotated[OutputFormat, typer.Option("--format", help="text (a table) or json")]


def config_show(fmt: Format = OutputFormat.text) -> None:
    """The effective configuration: every value and where it came from (file, environment, default);
    secrets masked (env:VAR as written, DSNs without password)."""
    from rich.table import Table

    from pipelines.platform import effective_config

    try:
        cfg = effective_config()
    except USER_ERRORS as exc:
        fail(exc)
    if is_json(fmt):
        print_json(cfg.to_json())
    else:
        table = Table(title=f"platform config: {cfg.platform.describe()}")
        for col in ("key", "value", "source"):
            table.add_column(col)
        for key, value, source in cfg.rows():
            text = value if isinstance(value, str) else json.dumps(value)
            table.add_row(key, text, source)
        print_table(table)
    if cfg.errors:
        fail("invalid platform config:\n" + "\n".join(f"[{name}] {why}" for name, why in cfg.errors.items()))


def doctor(fmt: Format = OutputFormat.text) -> None:
    """Check the set-up: tracking server reachable, schema current, audit database shared and writable,
    storage reachable with the key's role, webhook registered and reachable. Exit 1 when a check fails."""
    from rich.table import Table

    from pipelines.doctor import run_checks, summary

    try:
        checks = run_checks()
    except USER_ERRORS as exc:
        fail(exc)
    failed = any(c.status == "fail" for c in checks)
    if is_json(fmt):
        print_json({"ok": not failed, "checks": [c.to_dict() for c in checks]})
    else:
        table = Table(title="towerops doctor")
        for col in ("check", "status", "detail", "fix"):
            table.add_column(col)
        for c in checks:
            table.add_row(c.name, c.status.upper() if c.status == "fail" else c.status, c.detail, c.fix)
        print_table(table)
        info(summary(checks))
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add `config show` and `doctor`."""
    app.add_typer(config_app, name="config")
    config_app.command("show")(config_show)
    app.command("doctor")(doctor)
