"""`towerops sync | deploy | deployments ...`: argument parsing only; the work is in
`registry.service.sync` and `registry.deploy`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.common import USER_ERRORS, OutputFormat, fail, info, is_json, opt, print_json

deployments_app = typer.Typer(help="Deployed versions in storage: list, roll back.", no_args_is_help=True)

DeployConfig = Annotated[str | None, typer.Option("--config", help="deployment config (default: "
                                                     "$TOWEROPS_DEPLOY_CONFIG or configs/deployment.yaml)")]
Format = Annotated[OutputFormat, typer.Option("--format", help="text or json")]
AsJson = Annotated[bool, typer.Option("--json", help="print the result as JSON (same as --format json)")]


def _errors() -> tuple[type[BaseException], ...]:
    from registry.deploy.storage import StorageError

    return (*USER_ERRORS, StorageError)


def _show(result: Any, as_json: bool) -> None:
    if as_json:
        print_json(result.to_dict())
    else:
        info(result.describe())


def sync_cmd(
    version: Annotated[str | None, typer.Option(help="upload this registry version (production unchanged)")] = None,
    production: Annotated[bool, typer.Option("--production", help="make storage's production match the "
                                             "registry's production alias (the default)")] = False,
    config: DeployConfig = None,
    registry_config: Annotated[str | None, typer.Option(help="registry config (default: the registry section of "
                                                             "towerops.yaml)")] = None,
    name: Annotated[str | None, typer.Option(help="registered model name (default from the registry config)")] = None,
    as_json: AsJson = False,
    fmt: Format = OutputFormat.text,
) -> None:
    """Sync the registry to storage: re-runs upload nothing; an interrupted sync resumes."""
    from registry.service import sync

    try:
        if opt(version) and production:
            raise ValueError("pass either --version N or --production, not both")
        result = sync(opt(registry_config), opt(config), version=opt(version), name=opt(name))
    except _errors() as exc:
        fail(exc)
    _show(result, is_json(fmt, as_json))


def deploy_cmd(
    model_dir: Annotated[Path, typer.Option(help="model bundle folder (written by training)")],
    version: Annotated[str, typer.Option(help="semantic version of the folder, e.g. v1.2.0")],
    description: Annotated[str | None, typer.Option(help="stored in the manifest and model_versions")] = None,
    model_name: Annotated[str | None, typer.Option(help="model folder name (default: the registry's model name)")] = None,
    activate: Annotated[bool, typer.Option("--activate/--no-activate", help="make it production (default) or "
                                           "only upload and verify")] = True,
    config: DeployConfig = None,
    as_json: AsJson = False,
    fmt: Format = OutputFormat.text,
) -> None:
    """Deploy a bundle folder directly (no registry): upload, verify, move production."""
    from registry.deploy.deployer import SupabaseDeployer

    try:
        deployer = SupabaseDeployer(opt(config), model_name=opt(model_name))
        result = deployer.deploy_model(model_dir=model_dir, version=version, description=opt(description),
                                       activate=activate)
    except _errors() as exc:
        fail(exc)
    _show(result, is_json(fmt, as_json))


def list_cmd(model_name: Annotated[str | None, typer.Option()] = None, config: DeployConfig = None,
             as_json: AsJson = False, fmt: Format = OutputFormat.text) -> None:
    """Version folders in storage; `*` marks production."""
    from registry.deploy.deployer import SupabaseDeployer

    try:
        deployer = SupabaseDeployer(opt(config), model_name=opt(model_name))
        rows = deployer.versions()
    except _errors() as exc:
        fail(exc)
    if is_json(fmt, as_json):
        print_json(rows)
        return
    info(f"{deployer.model_name} in {deployer.backend.describe()}")
    for r in rows:
        size = f"{(r['total_bytes'] or 0) / 1e6:.1f} MB" if r["complete"] else "incomplete"
        typer.echo(f"{'*' if r['active'] else ' '} {r['version']:<12} {size:>12}  registry v{r['registry_version'] or '-'}"
                   f"  {r['created_at'] or ''}")


def rollback_cmd(to: Annotated[str | None, typer.Option(help="version folder to return to "
                                                           "(default: the one before)")] = None,
                 model_name: Annotated[str | None, typer.Option()] = None, config: DeployConfig = None) -> None:
    """Re-point storage's production without uploading (models outside the registry; for
    registered models use `towerops rollback`, which does this too)."""
    from registry.deploy.deployer import SupabaseDeployer

    try:
        result = SupabaseDeployer(opt(config), model_name=opt(model_name)).rollback(opt(to))
    except _errors() as exc:
        fail(exc)
    info(result.describe())


def register(app: typer.Typer) -> None:
    """Add `sync`, `deploy` and the `deployments` group to the towerops CLI."""
    app.command("sync")(sync_cmd)
    app.command("deploy")(deploy_cmd)
    app.add_typer(deployments_app, name="deployments")
    deployments_app.command("list")(list_cmd)
    deployments_app.command("rollback")(rollback_cmd)
