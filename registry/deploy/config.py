"""Deployment settings: bucket, backend, model name, what a version folder holds, and retention."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import Field, field_validator, model_validator

from ml.config import KeyProblem, StrictModel, load_config_file, validate_config
from ml.logs import get_logger
from ml.settings import get_settings, secret_value
from registry.deploy.storage import RetryPolicy

log = get_logger("deployment")

MANIFEST = "manifest.json"
POINTER = "production.json"
MANIFEST_FORMAT = 1
DEFAULT_INCLUDE = ("metadata.json", "config.json", "keras/", "saved_model/", "tfjs/", "preprocessing/",
                   "embeddings/")
REQUIRED = ("metadata.json", "keras/user_tower.keras", "keras/item_tower.keras", "saved_model/user_tower/",
            "saved_model/item_tower/", "preprocessing/", "embeddings/item_embeddings.npy", "embeddings/item_ids.json")
HISTORY_LIMIT = 100
_TABLE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}(\.[A-Za-z_][A-Za-z0-9_]{0,62})?$")
_MODEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


# ------------------------------------------------------------------------ config
class SupabaseSection(StrictModel):
    storage_bucket: str = "model-artifacts"
    model_table: str = "model_versions"
    auto_deployment: bool = True

    @field_validator("storage_bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not re.match(r"^[a-z0-9][a-z0-9._-]{1,62}$", v):
            raise ValueError("is not a valid bucket name (lower-case letters, digits, '.', '_', '-'; e.g. model-artifacts)")
        return v

    @field_validator("model_table")
    @classmethod
    def _table(cls, v: str) -> str:
        if not _TABLE_RE.match(v):
            raise ValueError("is not a table name ([schema.]name, e.g. model_versions)")
        return v


class VersioningSection(StrictModel):
    strategy: str = "semantic"
    rollback_enabled: bool = True
    max_versions: int = 10

    @field_validator("strategy")
    @classmethod
    def _semantic(cls, v: str) -> str:
        if v != "semantic":
            raise ValueError("is not supported: use 'semantic' (folders vMAJOR.MINOR.PATCH)")
        return v

    @model_validator(mode="after")
    def _keep_enough(self) -> "VersioningSection":
        minimum = 2 if self.rollback_enabled else 1
        if self.max_versions < minimum:
            raise KeyProblem(f"={self.max_versions!r} must be an integer >= {minimum} (production"
                             f"{' and the rollback target' if minimum == 2 else ''} are always kept)", "max_versions")
        return self


class RetrySection(StrictModel):
    """Storage retries (registry.deploy.storage.RetryPolicy): transient errors (5xx, timeouts, resets)."""

    attempts: int = 5
    backoff_s: float = Field(0.5, ge=0)
    max_backoff_s: float = Field(20.0, ge=0)

    @field_validator("attempts")
    @classmethod
    def _at_least_one(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1 (tries in all, the first included)")
        return v


class StorageSection(StrictModel):
    backend: str = "auto"  # checked when the deployer opens it (registry.deploy.storage.open_backend)
    local_dir: str = "deployments"
    model_name: str | None = None
    include: tuple[str, ...] = DEFAULT_INCLUDE
    tfjs: bool = True
    workers: int = Field(4, ge=1, le=64)
    verify: Literal["auto", "full"] = Field("auto", json_schema_extra={
        "hint": "auto: download-and-hash small files, size + sha256 metadata for the rest; "
                "full: download and hash every file"})
    verify_download_max_mb: float = Field(8.0, ge=0)
    timeout_s: float = Field(120.0, ge=0)
    multipart_chunk_mb: float = Field(16.0, ge=0)
    retry: RetrySection = Field(default_factory=RetrySection)

    @field_validator("include")
    @classmethod
    def _include(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v or not all(v):
            raise ValueError("must list bundle files/folders to upload, e.g. [metadata.json, keras/, embeddings/]")
        return v

    @field_validator("model_name")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and not _MODEL_RE.match(v):
            raise ValueError("is not a valid model name (letters, digits, _ . -)")
        return v

    @field_validator("retry", mode="before")
    @classmethod
    def _policy(cls, v: Any) -> Any:
        return dataclasses.asdict(v) if dataclasses.is_dataclass(v) and not isinstance(v, type) else v


_FLAT = {name: section for section, model in (("supabase", SupabaseSection), ("versioning", VersioningSection),
                                               ("storage", StorageSection)) for name in model.model_fields}


class DeployConfig(StrictModel):
    """`configs/deployment.yaml` (the seed's format plus a `storage` section).

    The keys read flat (`cfg.storage_bucket`, `cfg.retry`) and may be given flat to the
    constructor (`DeployConfig(workers=2, retry=RetryPolicy(...))`); the file keeps sections.
    """

    supabase: SupabaseSection = Field(default_factory=SupabaseSection)
    versioning: VersioningSection = Field(default_factory=VersioningSection)
    storage: StorageSection = Field(default_factory=StorageSection)

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, raw: Any) -> Any:
        if not isinstance(raw, Mapping) or not set(raw) & set(_FLAT):
            return raw
        out: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in raw.items() if k not in _FLAT}
        for key, value in raw.items():
            if key in _FLAT:
                out.setdefault(_FLAT[key], {})[key] = value
        return out

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any] | None, source: str = "<deployment config>") -> "DeployConfig":
        return validate_config(cls, raw, source)

    def validate(self, source: str = "<deployment config>") -> None:  # type: ignore[override]
        """Validate again (a config built in code, or changed after loading)."""
        validate_config(DeployConfig, self.model_dump(), source)

    storage_bucket = property(lambda self: self.supabase.storage_bucket)
    model_table = property(lambda self: self.supabase.model_table)
    auto_deployment = property(lambda self: self.supabase.auto_deployment)
    strategy = property(lambda self: self.versioning.strategy)
    rollback_enabled = property(lambda self: self.versioning.rollback_enabled)
    max_versions = property(lambda self: self.versioning.max_versions)
    backend = property(lambda self: self.storage.backend)
    local_dir = property(lambda self: self.storage.local_dir)
    model_name = property(lambda self: self.storage.model_name)
    include = property(lambda self: self.storage.include)
    tfjs = property(lambda self: self.storage.tfjs)
    workers = property(lambda self: self.storage.workers)
    verify = property(lambda self: self.storage.verify)
    verify_download_max_mb = property(lambda self: self.storage.verify_download_max_mb)
    timeout_s = property(lambda self: self.storage.timeout_s)
    multipart_chunk_mb = property(lambda self: self.storage.multipart_chunk_mb)

    @property
    def retry(self) -> RetryPolicy:
        r = self.storage.retry
        return RetryPolicy(r.attempts, r.backoff_s, r.max_backoff_s)


def load_deploy_config(path: str | Path | None = None) -> DeployConfig:
    """The deployment config: `path`, else $TOWEROPS_DEPLOY_CONFIG, else the `deployment` section of
    the platform config (towerops.yaml, ml.platform); the defaults (local folder backend) without any.
    A relative `storage.local_dir` from the platform config is relative to towerops.yaml's folder,
    so every process deploys to the same folder whatever its working directory."""
    expected = "a mapping with sections supabase, versioning, storage"
    if path:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"deployment config {p} does not exist; pass an existing file, or omit it to use "
                                    "the deployment section of the platform config (towerops.yaml)")
        return load_config_file(DeployConfig, p, "deployment config", expected)
    from ml.platform import section

    found = section("deployment")
    raw = {k: dict(v) if isinstance(v, Mapping) else v for k, v in found.raw.items()}
    holder = raw["storage"] if isinstance(raw.get("storage"), dict) else raw
    if isinstance(holder.get("local_dir"), str) and not found.is_default:
        holder["local_dir"] = found.path(holder["local_dir"])
    return validate_config(DeployConfig, raw, found.source)


def deploy_dsn(dsn: str | None = None) -> str | None:
    """The database holding `model_versions`: $TOWEROPS_DEPLOY_DSN, else $SUPABASE_DB_URL (any may be env:VAR)."""
    from ml.secrets import resolve_secret_ref

    chosen = dsn or secret_value(get_settings().deploy_dsn) or os.environ.get("SUPABASE_DB_URL") or None
    return resolve_secret_ref(chosen, "deployment database DSN")


def redact_dsn(dsn: str) -> str:
    """A DSN safe to log: the password replaced by *** (the one masking rule, ml.secrets.mask_dsn)."""
    from ml.secrets import mask_dsn

    return mask_dsn(dsn)


def _default_model_name() -> str:
    try:
        from registry.gate import load_registry_config

        return load_registry_config(None).model_name  # the platform config's registry section
    except Exception:  # noqa: BLE001 - no registry config: the seed's default
        return "two_tower"
