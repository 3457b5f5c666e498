"""`towerops catalog refresh` and `towerops retrain` (thin: the work is in `registry.continuous`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.common import USER_ERRORS, OutputFormat, fail, info, is_json, opt, print_json

catalog_app = typer.Typer(help="Catalog: embed new and changed items with the production item tower.",
                          no_args_is_help=True)

Config = Annotated[str | None, typer.Option("--config", help="registry config (default: the registry section of "
                                                              "towerops.yaml)")]
Name = Annotated[str | None, typer.Option("--name", help="registered model name (default from config: two_tower)")]
Dsn = Annotated[str | None, typer.Option("--dsn", help="PostgreSQL for the embedding tables/views (env:VAR; default "
                                                       "$TOWEROPS_BATCH_DSN; none: storage only)")]
BatchOut = Annotated[Path, typer.Option("--batch-out", help="Parquet versions of the published embeddings")]
Prefix = Annotated[str, typer.Option("--table-prefix", help="prefix of the PostgreSQL tables and views")]
Format = Annotated[OutputFormat, typer.Option("--format", help="text or json")]


def _quiet_stdout(fmt: OutputFormat) -> None:
    """With --format json stdout holds one JSON document: MLflow's "View run at" lines stay off it."""
    import os

    if is_json(fmt):
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def _open(config: str | None, name: str | None) -> Any:
    from registry.service import open_registry

    return open_registry(opt(config), name=name)


def catalog_refresh_cmd(
    items: Annotated[str | None, typer.Option("--items", "--data", help="current items: data folder, postgresql:// "
                                              "DSN or env:VAR (default: data.source of towerops.yaml)")] = None,
    model: Annotated[str | None, typer.Option(help="model to refresh (default: models:/<name>@production)")] = None,
    dsn: Dsn = None, batch_out: BatchOut = Path("outputs/batch"), table_prefix: Prefix = "towerops",
    no_promote: Annotated[bool, typer.Option("--no-promote", help="register only; production untouched")] = False,
    trigger: Annotated[str, typer.Option(hidden=True)] = "catalog_refresh",
    config: Config = None, name: Name = None, fmt: Format = OutputFormat.text,
) -> None:
    """Embed new and changed items with the production item tower and publish a minor version:
    registered, deployed (manifest, upload, verify, pointer) and the PostgreSQL embedding tables
    switched in one transaction. No retraining; old items keep their embeddings bit for bit."""
    from ml.platform import data_source
    from registry.continuous import catalog_refresh
    from registry.stages import GateError, GateFailed

    _quiet_stdout(fmt)
    try:
        source = data_source(opt(items))
        if source is None:
            raise ValueError("no items: pass --items <folder | postgresql://... | env:VAR> or set data.source in "
                             "towerops.yaml")
        result = catalog_refresh(source, _open(config, name), model=opt(model), dsn=opt(dsn), batch_out=batch_out,
                                 table_prefix=table_prefix, promote=not no_promote, trigger=trigger)
    except GateFailed as exc:
        fail(exc, code=3)
    except (GateError, *USER_ERRORS) as exc:
        fail(exc)
    if is_json(fmt):
        print_json(result.summary())
        return
    r = result.refresh
    typer.echo(f"v{result.version} [{result.semver}, {result.bump}]: {r.n_items} items ({r.n_added} added, "
               f"{r.n_changed} changed, {r.n_removed} removed, {r.n_kept} unchanged); "
               f"{r.n_embedded} embedded at {r.items_per_s:,.0f} items/s")
    if result.promotion is not None:
        typer.echo(result.promotion.describe())
    if result.embeddings is not None:
        info(f"PostgreSQL views {', '.join(result.embeddings.views.values())} -> batch {result.embeddings.batch_version}")


def retrain_cmd(
    data: Annotated[str | None, typer.Option(help="data folder, postgresql:// DSN or env:VAR (default: data.source "
                                                 "of towerops.yaml)")] = None,
    training_config: Annotated[str | None, typer.Option("--training-config", help="training config (default: the "
                                                         "training section of towerops.yaml)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="training override, e.g. --set training.epochs=5")]
    = None,
    window_days: Annotated[str | None, typer.Option(help="train on the last N days of interactions "
                                                       "(default: all)")] = None,
    dsn: Dsn = None, batch_out: BatchOut = Path("outputs/batch"), table_prefix: Prefix = "towerops",
    reason: Annotated[str | None, typer.Option(help="why (recorded in the audit trail)")] = None,
    trigger: Annotated[str, typer.Option(hidden=True)] = "retrain",
    config: Config = None, name: Name = None, fmt: Format = OutputFormat.text,
) -> None:
    """Latest data window -> train -> evaluate -> register (a new major) -> gate against the champion on
    the same test set -> production; nested MLflow runs under one `retrain` parent. Exit 3 when the
    gate fails (production unchanged)."""
    from ml.config import parse_overrides
    from ml.platform import data_source
    from monitoring.actions import retrain_with_reference

    _quiet_stdout(fmt)
    try:
        days = _days(window_days)
        result = retrain_with_reference(data_source(opt(data)), _open(config, name), opt(training_config),
                                        parse_overrides(set_ or []), days, opt(dsn), batch_out, table_prefix,
                                        trigger, opt(reason))
    except USER_ERRORS as exc:
        fail(exc)
    if is_json(fmt):
        print_json(result.summary())
    else:
        typer.echo(result.reason)
    if not result.promoted:
        raise typer.Exit(3)


def _days(value: str | None) -> float | None:
    """`--window-days` as a positive number of days ('' = all the data)."""
    if opt(value) is None:
        return None
    try:
        days = float(str(value))
    except ValueError:
        raise ValueError(f"--window-days {value!r} is not a number; pass days, e.g. --window-days 30") from None
    if not days > 0:
        raise ValueError(f"--window-days {value!r} must be positive, e.g. --window-days 30")
    return days


def register(app: typer.Typer) -> None:
    """Add the `catalog` group and `retrain`."""
    app.add_typer(catalog_app, name="catalog")
    catalog_app.command("refresh")(catalog_refresh_cmd)
    app.command("retrain")(retrain_cmd)
