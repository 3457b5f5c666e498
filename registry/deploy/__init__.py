"""Deployment of model versions to storage (registry.deploy.deployer.SupabaseDeployer).

`from registry.deploy import SupabaseDeployer, DeployResult` works; the names load on first
use, so importing a submodule (e.g. the storage backends) does not import the deployer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DeployResult", "SupabaseDeployer"]


def __getattr__(name: str) -> Any:
    if name == "SupabaseDeployer":
        from registry.deploy.deployer import SupabaseDeployer

        return SupabaseDeployer
    if name == "DeployResult":
        from registry.deploy.result import DeployResult

        return DeployResult
    raise AttributeError(f"module 'registry.deploy' has no attribute {name!r}")
