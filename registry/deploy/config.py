"""Deployment settings: bucket, backend, model name, what a version folder holds, and retention."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ml.logs import get_logger
from registry.deploy.storage import RetryPolicy

log = get_logger("deployment")

MANIFEST = "manifest.json"
POINTER = "production.json"
MANIFEST_FORMAT = 1
DEFAULT_CONFIG = "configs/deployment.yaml"
DEFAULT_INCLUDE = ("metadata.json", "config.json", "keras/", "saved_model/", "tfjs/", "preprocessing/",
                   "embeddings/")
REQUIRED = ("metadata.json", "keras/user_tower.keras", "keras/item_tower.keras", "saved_model/user_tower/",
            "saved_model/item_tower/", "preprocessing/", "embeddings/item_embeddings.npy", "embeddings/item_ids.json")
HISTORY_LIMIT = 100
_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# ------------------------------------------------------------------------ config
@dataclass
class DeployConfig:
    """`configs/deployment.yaml` (the seed's format plus a `storage` section)."""

    storage_bucket: str = "model-artifacts"
    model_table: str = "model_versions"
    auto_deployment: bool = True
    strategy: str = "semantic"
    rollback_enabled: bool = True
    max_versions: int = 10
    backend: str = "auto"
    local_dir: str = "deployments"
    model_name: str | None = None
    include: tuple[str, ...] = DEFAULT_INCLUDE
    tfjs: bool = True
    workers: int = 4
    verify: str = "auto"
    verify_download_max_mb: float = 8.0
    timeout_s: float = 120.0
    multipart_chunk_mb: float = 16.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    _SECTIONS = {
        "supabase": {"storage_bucket", "model_table", "auto_deployment"},
        "versioning": {"strategy", "rollback_enabled", "max_versions"},
        "storage": {"backend", "local_dir", "model_name", "include", "tfjs", "workers", "verify",
                    "verify_download_max_mb", "timeout_s", "multipart_chunk_mb", "retry"},
    }

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None, source: str = "<deployment config>") -> "DeployConfig":
        raw = dict(raw or {})
        unknown = set(raw) - set(cls._SECTIONS)
        if unknown:
            raise ValueError(f"{source}: unknown sections {sorted(unknown)}; use {sorted(cls._SECTIONS)}")
        values: dict[str, Any] = {}
        for section, keys in cls._SECTIONS.items():
            body = raw.get(section) or {}
            if not isinstance(body, Mapping):
                raise ValueError(f"{source}: '{section}' must be a mapping, got {type(body).__name__}")
            bad = set(body) - keys
            if bad:
                raise ValueError(f"{source}: unknown keys {sorted(bad)} in '{section}'; allowed: {sorted(keys)}")
            values.update(body)
        retry = values.pop("retry", None) or {}
        if not isinstance(retry, Mapping) or set(retry) - {"attempts", "backoff_s", "max_backoff_s"}:
            raise ValueError(f"{source}: storage.retry must hold attempts, backoff_s, max_backoff_s; got {retry!r}")
        if "include" in values:
            values["include"] = tuple(values["include"] or ())
        cfg = cls(**values, retry=RetryPolicy(**retry))
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "<deployment config>") -> None:
        def bad(key: str, value: Any, fix: str) -> ValueError:
            return ValueError(f"{source}: {key}={value!r} {fix}")

        if not isinstance(self.storage_bucket, str) or not re.match(r"^[a-z0-9][a-z0-9._-]{1,62}$", self.storage_bucket):
            raise bad("supabase.storage_bucket", self.storage_bucket, "is not a valid bucket name "
                      "(lower-case letters, digits, '.', '_', '-'; e.g. model-artifacts)")
        if not isinstance(self.model_table, str) or not _TABLE_RE.match(self.model_table):
            raise bad("supabase.model_table", self.model_table, "is not a table name ([schema.]name, e.g. model_versions)")
        for key in ("auto_deployment", "rollback_enabled", "tfjs"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, getattr(self, key), "must be true or false")
        if self.strategy != "semantic":
            raise bad("versioning.strategy", self.strategy, "is not supported: use 'semantic' (folders vMAJOR.MINOR.PATCH)")
        minimum = 2 if self.rollback_enabled else 1
        if isinstance(self.max_versions, bool) or not isinstance(self.max_versions, int) or self.max_versions < minimum:
            raise bad("versioning.max_versions", self.max_versions,
                      f"must be an integer >= {minimum} (production{' and the rollback target' if minimum == 2 else ''} "
                      "are always kept)")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or not 1 <= self.workers <= 64:
            raise bad("storage.workers", self.workers, "must be an integer in [1, 64]")
        if self.verify not in ("auto", "full"):
            raise bad("storage.verify", self.verify, "must be 'auto' (download-and-hash small files, size + sha256 "
                      "metadata for the rest) or 'full' (download and hash every file)")
        for key in ("verify_download_max_mb", "timeout_s", "multipart_chunk_mb"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise bad(f"storage.{key}", v, "must be a non-negative number")
        if not self.include or not all(isinstance(i, str) and i for i in self.include):
            raise bad("storage.include", list(self.include), "must list bundle files/folders to upload")
        if self.model_name is not None and not _MODEL_RE.match(str(self.model_name)):
            raise bad("storage.model_name", self.model_name, "is not a valid model name (letters, digits, _ . -)")


def load_deploy_config(path: str | Path | None = None) -> DeployConfig:
    """The deployment config: `path`, else $TOWEROPS_DEPLOY_CONFIG, else configs/deployment.yaml;
    defaults (local folder backend) when the default file does not exist."""
    import yaml

    explicit = path or os.environ.get("TOWEROPS_DEPLOY_CONFIG")
    p = Path(explicit or DEFAULT_CONFIG)
    if not p.exists():
        if explicit:
            raise FileNotFoundError(f"deployment config {p} does not exist; pass an existing file or unset "
                                    "TOWEROPS_DEPLOY_CONFIG to use configs/deployment.yaml")
        return DeployConfig()
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{p} is not valid YAML: {exc}") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{p} must hold a mapping with sections supabase, versioning, storage")
    return DeployConfig.from_mapping(raw, str(p))


def deploy_dsn(dsn: str | None = None) -> str | None:
    """The database holding `model_versions`: $TOWEROPS_DEPLOY_DSN, else $SUPABASE_DB_URL."""
    return dsn or os.environ.get("TOWEROPS_DEPLOY_DSN") or os.environ.get("SUPABASE_DB_URL") or None


def redact_dsn(dsn: str) -> str:
    """A DSN safe to log: the password replaced by ***."""
    out = re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", out, flags=re.I)


def _default_model_name() -> str:
    try:
        from registry.gate import load_registry_config

        default = Path("configs/registry.yaml")
        return load_registry_config(default if default.is_file() else None).model_name
    except Exception:  # noqa: BLE001 - no registry config: the seed's default
        return "two_tower"
