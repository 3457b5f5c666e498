"""`towerops sync | deploy | deployments ...`: argument parsing only; the work is in
`registry.sync` and `registry.deploy`."""

from __future__ import annotations

import json
from pathlib import Path

import typer

DEPLOY_CONFIG = typer.Option(None, "--config", help="deployment config (default: $TOWEROPS_DEPLOY_CONFIG or "
                             "configs/deployment.yaml)")


def _opt(value: str | None) -> str | None:
    """MLproject passes empty strings for unset parameters."""
    return value if value not in (None, "", "None") else None


def _errors() -> tuple[type[BaseException], ...]:
    from pipelines.cli import USER_ERRORS
    from registry.deploy.storage import StorageError

    return (*USER_ERRORS, StorageError)


def _show(result, as_json: bool) -> None:
    from pipelines.cli import err

    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        err.print(result.describe(), highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add `sync`, `deploy` and the `deployments` group to the towerops CLI."""
    from pipelines.cli import err, fail

    deployments_app = typer.Typer(help="Deployed versions in storage: list, roll back.", no_args_is_help=True)
    app.add_typer(deployments_app, name="deployments")

    @app.command("sync")
    def sync_cmd(
        version: str | None = typer.Option(None, help="upload this registry version (production unchanged)"),
        production: bool = typer.Option(False, "--production", help="make storage's production match the "
                                        "registry's production alias (the default)"),
        config: str | None = DEPLOY_CONFIG,
        registry_config: str | None = typer.Option("configs/registry.yaml", help="registry config"),
        name: str | None = typer.Option(None, help="registered model name (default from the registry config)"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        """Sync the registry to storage: re-runs upload nothing; an interrupted sync resumes."""
        from registry.service import sync

        try:
            if _opt(version) and production:
                raise ValueError("pass either --version N or --production, not both")
            result = sync(_opt(registry_config), _opt(config), version=_opt(version), name=_opt(name))
        except _errors() as exc:
            fail(exc)
        _show(result, as_json)

    @app.command("deploy")
    def deploy_cmd(
        model_dir: Path = typer.Option(..., help="model bundle folder (written by training)"),
        version: str = typer.Option(..., help="semantic version of the folder, e.g. v1.2.0"),
        description: str | None = typer.Option(None, help="stored in the manifest and model_versions"),
        model_name: str | None = typer.Option(None, help="model folder name (default: the registry's model name)"),
        activate: bool = typer.Option(True, "--activate/--no-activate", help="make it production (default) or "
                                      "only upload and verify"),
        config: str | None = DEPLOY_CONFIG,
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Deploy a bundle folder directly (no registry): upload, verify, move production."""
        from registry.deploy.deployer import SupabaseDeployer

        try:
            deployer = SupabaseDeployer(_opt(config), model_name=_opt(model_name))
            result = deployer.deploy_model(model_dir=model_dir, version=version, description=_opt(description),
                                           activate=activate)
        except _errors() as exc:
            fail(exc)
        _show(result, as_json)

    @deployments_app.command("list")
    def list_cmd(model_name: str | None = typer.Option(None), config: str | None = DEPLOY_CONFIG,
                 as_json: bool = typer.Option(False, "--json")) -> None:
        """Version folders in storage; `*` marks production."""
        from registry.deploy.deployer import SupabaseDeployer

        try:
            deployer = SupabaseDeployer(_opt(config), model_name=_opt(model_name))
            rows = deployer.versions()
        except _errors() as exc:
            fail(exc)
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        err.print(f"{deployer.model_name} in {deployer.backend.describe()}")
        for r in rows:
            size = f"{(r['total_bytes'] or 0) / 1e6:.1f} MB" if r["complete"] else "incomplete"
            typer.echo(f"{'*' if r['active'] else ' '} {r['version']:<12} {size:>12}  registry v{r['registry_version'] or '-'}"
                       f"  {r['created_at'] or ''}")

    @deployments_app.command("rollback")
    def rollback_cmd(to: str | None = typer.Option(None, help="version folder to return to (default: the one "
                                                      "before)"),
                     model_name: str | None = typer.Option(None), config: str | None = DEPLOY_CONFIG) -> None:
        """Re-point storage's production without uploading (models outside the registry; for
        registered models use `towerops rollback`, which does this too)."""
        from registry.deploy.deployer import SupabaseDeployer

        try:
            result = SupabaseDeployer(_opt(config), model_name=_opt(model_name)).rollback(_opt(to))
        except _errors() as exc:
            fail(exc)
        err.print(result.describe())
