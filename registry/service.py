"""Wiring: a registry whose promotions deploy, and `sync` that brings storage in line with the registry."""

from __future__ import annotations

from registry.audit import AuditLog
from registry.deploy.config import load_deploy_config
from registry.deploy.hook import RegistryDeployHook, sync_registry_version
from registry.deploy.result import DeployResult
from registry.stages import ModelRegistry


def sync(registry_config: str | None = None, deploy_config: str | None = None, version: str | None = None,
         name: str | None = None) -> DeployResult:
    """`towerops sync`: with `version`, upload that registry version (production untouched);
    without, make storage's production match the registry's production alias."""
    from registry.service import open_registry

    config = load_deploy_config(deploy_config)
    registry = open_registry(registry_config, name=name, deploy=False)
    if version is not None:
        mv = registry.version(version)
        return sync_registry_version(registry.name, str(mv.version), mv, config, activate=False)
    holder = registry.alias_version("production")
    if holder is None:
        raise ValueError(f"{registry.name} has no production version in the registry; promote one first "
                         "(towerops promote --version N)")
    hook = RegistryDeployHook(config, deploy_config, audit=registry.audit)
    return sync_registry_version(registry.name, holder, registry.version(holder), config, activate=True,
                                 stack=hook._production_stack(registry.name),
                                 precondition=hook._still_production(registry.name, holder),
                                 activation_lock=hook._activation_lock())


def open_registry(config_path: str | None = None, name: str | None = None, deploy: bool = True,
                  audit_url: str | None = None) -> ModelRegistry:
    """The registry as configured: `config_path` (a registry YAML) or the `registry` section of the
    platform config (towerops.yaml: model name, gate, cut-offs), its audit trail (`audit.url`), and
    the deployment hook of the `deployment` section. Every process (CLI, webhook receiver,
    reconcile, monitoring's rollback) opens it here, so all of them gate and deploy alike."""
    from registry.deploy.hook import deploy_hook_from_env
    from registry.gate import load_registry_config

    config = load_registry_config(config_path)
    audit = AuditLog(audit_url)
    hook = deploy_hook_from_env(audit=audit) if deploy else None
    return ModelRegistry(config=config, name=name, audit=audit, deploy_hook=hook)
