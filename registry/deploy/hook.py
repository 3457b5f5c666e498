"""Registry → storage sync: the deploy hook the registry calls after every production change
(CLI, `mlflow run -e promote`, MLflow UI via webhook, reconcile, rollback), and
`towerops sync` for catching up by hand.

The hook resolves the registry version to its bundle (`models:/<name>/<version>`), exports
the towers to TensorFlow.js, and deploys the folder `<model>/v<semver>/`. When that folder is
already complete in storage (a rollback, or a re-sync), it only re-points production: nothing
is downloaded or uploaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ml.logs import get_logger
from registry.deploy.config import DeployConfig, load_deploy_config
from registry.deploy.deployer import SupabaseDeployer
from registry.deploy.result import DeployResult, version_folder
from registry.deploy.staging import staging_dir
from registry.stages import metrics_from_tags

log = get_logger("deployment")

class RegistryDeployHook:
    """`hook(model_name, version, model_version)` for `ModelRegistry.deploy_hook`."""

    def __init__(self, config: DeployConfig, config_path: str | None = None, audit: Any = None) -> None:
        self.config = config
        self.config_path = config_path
        self.audit = audit  # the registry's AuditLog: its activation lock serialises pointer moves across hosts

    def _activation_lock(self) -> Any:
        return self.audit.activation_lock if self.audit is not None else None

    def storage_state(self, model_name: str) -> dict[str, Any]:
        """What storage says holds production: the pointer's and the active `model_versions` row's
        registry version (None where nothing is deployed; `row` absent without a database)."""
        deployer = self.deployer(model_name)
        try:
            deployer.preflight()
            pointer = deployer.pointer(model_name) or {}
            state: dict[str, Any] = {"pointer": pointer.get("registry_version"), "folder": pointer.get("version"),
                                     "backend": deployer.backend.describe()}
            if deployer.table is not None:
                row = deployer.table.active(model_name) or {}
                state["row"] = row.get("registry_version")
            return state
        finally:
            deployer.close()

    def deployer(self, model_name: str) -> SupabaseDeployer:
        return SupabaseDeployer(self.config, model_name=model_name)

    @staticmethod
    def _client() -> Any:
        from mlflow import MlflowClient

        from ml.settings import ensure_tracking_uri

        ensure_tracking_uri()
        return MlflowClient()

    def _production_stack(self, model_name: str) -> list[str] | None:
        """The registry's production history (audit) as version folders, oldest first; None
        when the audit trail cannot be read (the pointer's own history is used then)."""
        try:
            from registry.audit import AuditLog, audit_url

            if self.audit is not None:  # the registry's own trail
                versions = self.audit.production_stack(model_name)
            else:
                url = audit_url()
                if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
                    return None
                versions = AuditLog(url).production_stack(model_name)
            client = self._client()
            return [version_folder(client.get_model_version(model_name, v).tags["semver"]) for v in versions]
        except Exception as exc:  # noqa: BLE001 - history is a refinement, not a requirement
            log.debug("production history from the audit trail unavailable: %s", exc)
            return None

    def _still_production(self, model_name: str, version: str):
        def check() -> bool:
            try:
                holder = self._client().get_model_version_by_alias(model_name, "production").version
            except Exception:  # noqa: BLE001 - alias unreadable: trust the caller
                return True
            return str(holder) == str(version)

        return check

    def prepare(self, model_name: str, version: str, model_version: Any) -> DeployResult | None:
        """Upload and verify the version's folder without moving the pointer. The registry calls
        this before it moves the production alias, so a failed upload changes nothing."""
        if not self.config.auto_deployment:
            return None
        return sync_registry_version(model_name, str(version), model_version, self.config, activate=False)

    def __call__(self, model_name: str, version: str, model_version: Any) -> DeployResult | None:
        """Deploy registry version `version` of `model_name` and make it production."""
        if not self.config.auto_deployment:
            log.info("auto_deployment is off: %s v%s not deployed (run `towerops sync --production`)", model_name,
                     version)
            return None
        return sync_registry_version(model_name, str(version), model_version, self.config, activate=True,
                                     stack=self._production_stack(model_name),
                                     precondition=self._still_production(model_name, str(version)),
                                     activation_lock=self._activation_lock())


def sync_registry_version(model_name: str, version: str, model_version: Any, config: DeployConfig,
                          activate: bool = True, stack: list[str] | None = None, precondition: Any = None,
                          activation_lock: Any = None) -> DeployResult:
    """Upload (if needed) and optionally activate one registry version. `activation_lock(model)`
    (the registry's audit database) serialises activations where there is no `model_versions` database."""
    tags = dict(getattr(model_version, "tags", {}) or {})
    semver = tags.get("semver")
    if not semver:
        raise ValueError(f"{model_name} v{version} has no 'semver' tag; register it with `towerops register` "
                         "(which assigns the semantic version the storage folder is named after)")
    folder = version_folder(semver)
    deployer = SupabaseDeployer(config, model_name=model_name)
    deployer.activation_lock = activation_lock
    try:
        deployer.preflight()
        action = "promote"
        if stack is None:  # no audit trail: returning to the version before is the registry's rollback
            history = (deployer.pointer(model_name) or {}).get("history") or []
            action = "rollback" if len(history) > 1 and history[-2] == folder else "promote"
        existing = deployer.remote_complete(folder, model_name)
        same_source = existing is not None and str(existing.get("registry_version")) == str(version) and \
            existing.get("run_id") == getattr(model_version, "run_id", None)
        if existing is not None and same_source:
            log.info("%s %s (registry v%s) is already complete in storage; %s", model_name, folder, version,
                     "re-pointing production without uploading" if activate else "nothing to upload")
            if not activate:
                return DeployResult(model_name, folder, deployer.backend.describe(), deployer.prefix(folder),
                                    registry_version=version, skipped=len(existing["files"]) + 1,
                                    files=len(existing["files"]) + 1, total_bytes=int(existing.get("total_bytes") or 0),
                                    manifest_path=deployer.prefix(folder) + "manifest.json")
            return deployer.activate(folder, model_name, manifest=existing, stack=stack, precondition=precondition,
                                     action=action)
        from ml.bundle.resolve import resolve_model

        with staging_dir("sync") as tmp:  # named after this process: a killed sync's folder is swept later
            bundle = resolve_model(f"models:/{model_name}/{version}", download_dir=tmp)
            return deployer.deploy_model(
                bundle, folder, description=getattr(model_version, "description", None) or None,
                model_name=model_name, registry_version=str(version), run_id=getattr(model_version, "run_id", None),
                metrics=metrics_from_tags(tags) or None, activate=activate, action=action, stack=stack,
                precondition=precondition, source=f"models:/{model_name}/{version}")
    finally:
        deployer.close()


def deploy_hook_from_env(config_path: str | None = None, audit: Any = None) -> RegistryDeployHook | None:
    """The registry's deploy hook from `configs/deployment.yaml` (or $TOWEROPS_DEPLOY_CONFIG).

    With no config at all it deploys to the local folder `deployments/`, so `main` works on a
    bare machine; `supabase.auto_deployment: false` turns the hook off (returns None).
    """
    config = load_deploy_config(config_path)
    if not config.auto_deployment:
        log.debug("supabase.auto_deployment is false: promotions are not deployed automatically")
        return None
    return RegistryDeployHook(config, config_path, audit=audit)
