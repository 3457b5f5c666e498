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
    hook = RegistryDeployHook(config, deploy_config)
    return sync_registry_version(registry.name, holder, registry.version(holder), config, activate=True,
                                 stack=hook._production_stack(registry.name),
                                 precondition=hook._still_production(registry.name, holder))


def open_registry(config_path: str | None = None, name: str | None = None, deploy: bool = True,
                  audit_url: str | None = None) -> ModelRegistry:
    """A registry from `configs/registry.yaml`-style config, with the configured deployment hook."""
    from registry.gate import load_registry_config

    config = load_registry_config(config_path)
    hook = None
    if deploy:
        try:
            from registry.deploy.hook import deploy_hook_from_env
        except ImportError:  # deployment not configured in this build
            deploy_hook_from_env = None
        if deploy_hook_from_env is not None:
            hook = deploy_hook_from_env()
    return ModelRegistry(config=config, name=name, audit=AuditLog(audit_url), deploy_hook=hook)
