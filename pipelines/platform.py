"""The effective platform config of this process, every value with where it came from:
what `towerops config show` prints and `towerops doctor` validates first.

Each section is validated by its own model (ml.platform's for tracking, audit, data,
webhooks; `TowerOpsConfig`, `TuningFile`, `RegistryConfig`, `DeployConfig`,
`MonitoringConfig` for the others), read the same way the commands read it, so what is
shown is what runs. Secrets never show: `env:VAR` is printed as written (with whether the
variable is set), DSNs and URLs without their password.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ml.platform import (
    PLATFORM_MODELS,
    SECTIONS,
    PlatformFile,
    Section,
    applied_source,
    load_platform,
    section,
    tracking_uri,
)
from ml.secrets import describe_secret, is_secret_ref, mask_dsn


@dataclass
class EffectiveConfig:
    """The effective values (nested, JSON-safe, secrets masked) and each leaf's source."""

    platform: PlatformFile
    values: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)   # section -> why it does not validate

    def rows(self) -> list[tuple[str, Any, str]]:
        return [(key, _get(self.values, key), source) for key, source in self.sources.items()]

    def to_json(self) -> dict[str, Any]:
        return {"file": str(self.platform.path) if self.platform.path else None, "found": self.platform.origin,
                "config": self.values, "sources": self.sources, "errors": self.errors}


def _get(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def _has(raw: Any, path: list[str]) -> bool:
    node = raw
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _safe(value: Any) -> Any:
    """A value fit to print: env:VAR with whether it is set, strings without passwords."""
    if isinstance(value, str):
        if is_secret_ref(value):
            name = value[len("env:"):]
            return f"{value} ({'set' if os.environ.get(name) else 'NOT SET'})"
        return mask_dsn(value)
    if isinstance(value, dict):
        return {k: _safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe(v) for v in value]
    return value


def _flatten(tree: Any, prefix: str = "") -> list[str]:
    if isinstance(tree, dict) and tree:
        out = []
        for key, value in tree.items():
            out += _flatten(value, f"{prefix}.{key}" if prefix else str(key))
        return out
    return [prefix]


def _loaders() -> dict[str, Callable[[Section], Any]]:
    """Section -> its validated model, read as the commands read it."""
    from ml.config import validate_config

    def platform_model(name: str) -> Callable[[Section], Any]:
        return lambda sec: validate_config(PLATFORM_MODELS[name], sec.raw, sec.source, root=name)

    def training(_: Section) -> Any:
        from ml.platform import load_training_config

        return load_training_config(None)

    def tuning(sec: Section) -> Any:
        from ml.training.tuning import TuningFile

        return validate_config(TuningFile, sec.raw, sec.source)

    def registry(_: Section) -> Any:
        from registry.gate import load_registry_config

        return load_registry_config(None)

    def deployment(_: Section) -> Any:
        from registry.deploy.config import load_deploy_config

        return load_deploy_config(None)

    def monitoring(_: Section) -> Any:
        from monitoring.config import load_monitoring_config

        return load_monitoring_config(None)

    out: dict[str, Callable[[Section], Any]] = {n: platform_model(n) for n in PLATFORM_MODELS}
    out.update(training=training, tuning=tuning, registry=registry, deployment=deployment, monitoring=monitoring)
    return out


# values the environment names one by one (the variable -> the key it sets)
_ENV_KEYS = {"audit.url": "TOWEROPS_AUDIT_DB_URL", "audit.allow_local": "TOWEROPS_AUDIT_ALLOW_LOCAL",
             "deployment.storage.backend": "TOWEROPS_DEPLOY_BACKEND",
             "deployment.storage.local_dir": "TOWEROPS_DEPLOY_DIR"}


def effective_config(platform: PlatformFile | None = None) -> EffectiveConfig:
    """Every section of the platform config, validated, with each value's source."""
    platform = platform or load_platform()
    out = EffectiveConfig(platform)
    loaders = _loaders()
    for name in SECTIONS:
        try:
            sec = section(name, platform)
            model = loaders[name](sec)
        except (ValueError, FileNotFoundError) as exc:
            out.errors[name] = str(exc)
            continue
        dumped = model.model_dump(mode="json")
        out.values[name] = _safe(dumped)
        for key in _flatten(dumped, name):
            path = key.split(".")[1:]
            source = sec.source if not sec.is_default and _has(sec.raw, path) else "default"
            out.sources[key] = source
    _environment_values(out)
    return out


def _environment_values(out: EffectiveConfig) -> None:
    """The values the environment or derivation decides: tracking URI, audit database, storage overrides."""
    from ml.settings import get_settings

    found = tracking_uri(out.platform)
    applied = applied_source("MLFLOW_TRACKING_URI")
    if "tracking" in out.values:
        out.values["tracking"]["uri"] = mask_dsn(found.value)
        out.sources["tracking.uri"] = applied or found.source
    if "audit" in out.values:
        from registry.audit import audit_url

        settings = get_settings()
        try:
            effective = audit_url()
        except ValueError as exc:
            out.errors["audit"] = str(exc)
            effective = ""
        if settings.audit_db_url is not None:
            out.values["audit"]["url"] = mask_dsn(effective)
            out.sources["audit.url"] = "env TOWEROPS_AUDIT_DB_URL"
        elif out.sources.get("audit.url", "default") == "default":
            out.values["audit"]["url"] = describe_secret(effective)
            local_behind_remote = effective.startswith("sqlite") and not found.value.startswith(("sqlite", "postgres"))
            out.sources["audit.url"] = ("derived: a local file, NOT shared with other hosts" if local_behind_remote
                                        else "derived from the tracking URI")
        if settings.audit_allow_local is not None:
            out.values["audit"]["allow_local"] = bool(settings.audit_allow_local)
            out.sources["audit.allow_local"] = "env TOWEROPS_AUDIT_ALLOW_LOCAL"
    for key, var in _ENV_KEYS.items():
        if key.startswith("audit."):
            continue
        value = getattr(get_settings(), var[len("TOWEROPS_"):].lower(), None)
        if value is not None and key in out.sources:
            section_name, *rest = key.split(".")
            node = out.values[section_name]
            for part in rest[:-1]:
                node = node[part]
            node[rest[-1]] = str(value)
            out.sources[key] = f"env {var}"
