"""Rollback: re-point production to a kept, complete version (by default the one before, from
the pointer's history) without uploading anything."""

from __future__ import annotations

from ml.logs import get_logger
from registry.deploy.activation import ActivationSteps
from registry.deploy.result import DeployResult, version_folder

log = get_logger("deployment")


class RollbackSteps(ActivationSteps):
    """Rolling production back."""

    def rollback(self, to_version: str | None = None, model_name: str | None = None) -> DeployResult:
        """Re-point production to a kept version (default: the one before) without uploading."""
        model_name = model_name or self.model_name
        if not self.config.rollback_enabled:
            raise ValueError("rollback is disabled (versioning.rollback_enabled: false in the deployment config)")
        self.preflight()
        current = self.pointer(model_name)
        history = list((current or {}).get("history") or [])
        if to_version is None:
            if len(history) < 2:
                raise ValueError(f"{model_name} has no earlier production version to roll back to (history: "
                                 f"{history or 'empty'}); name one with --to")
            target = history[-2]
        else:
            target = version_folder(to_version)
        if current and current.get("version") == target:
            raise ValueError(f"{target} already holds production; nothing to roll back")
        result = self.activate(target, model_name, action="rollback")
        log.warning("rolled back %s production to %s (was %s)", model_name, target, result.previous)
        return result
