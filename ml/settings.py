"""Every TOWEROPS_* environment variable, read in one place (pydantic-settings)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ml.secrets import SecretRef, describe_secret, resolve_secret_ref  # noqa: F401  (the one env:VAR resolver)


def ensure_tracking_uri() -> str:
    """Use $MLFLOW_TRACKING_URI, else the embedded default: SQLite `mlflow.db` + local `mlruns/`."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path('mlflow.db').resolve()}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    return uri


class ReadOnlyStoreError(PermissionError):
    """A SQLite store (tracking database, audit trail) this process cannot write."""


def sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///path` URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def check_store_writable(uri: str | None = None, what: str = "tracking database") -> None:
    """Raise ReadOnlyStoreError naming the file and the fix when a SQLite store cannot be written.

    Why before the first write: MLflow and SQLAlchemy report it as a traceback ending in
    `attempt to write a readonly database`, after part of the work is done. The file is
    opened for writing (nothing is written), and its folder must take SQLite's journal."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    path = sqlite_file(uri)
    if path is None:
        return
    env_hint = "point MLFLOW_TRACKING_URI at a writable copy" if what == "tracking database" else \
        "point TOWEROPS_AUDIT_DB_URL at a writable database"
    fix = (f"make it writable (chmod u+w {path} {path.parent}; chattr -i {path} if it is immutable; remount a "
           f"read-only disk read-write) or {env_hint}")
    if path.exists():
        try:
            with open(path, "r+b"):
                pass
        except OSError as exc:
            raise ReadOnlyStoreError(f"the {what} {path} is read-only ({exc.strerror}): {fix}") from None
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not os.access(folder, os.W_OK):
        raise ReadOnlyStoreError(f"the folder {folder} of the {what} {path} is read-only (SQLite writes its "
                                 f"journal there): {fix}")


def is_read_only_error(exc: BaseException) -> bool:
    """True for SQLite's `attempt to write a readonly database` however MLflow or SQLAlchemy wrapped it."""
    seen = 0
    while exc is not None and seen < 10:
        text = str(exc).lower()
        if "readonly database" in text or "read-only database" in text or "read-only file system" in text:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


# ------------------------------------------------------------------ TOWEROPS_* settings
_TYPE_WORDS = {
    "int": "must be an integer", "float": "must be a number", "bool": "must be true or false",
    "string": "must be a string", "list": "must be a list", "tuple": "must be a list",
    "dict": "must be a mapping", "model": "must be a mapping", "model_attributes": "must be a mapping",
    "path": "must be a path",
}


def explain(err: Mapping[str, Any]) -> str:
    """What is wrong with a value and how to fix it, for one pydantic error (`must be >= 1`).
    Shared by the config files (ml.config) and the environment settings."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in ("literal_error", "enum"):
        return f"is unknown: use {str(ctx.get('expected')).replace(chr(39), '')}"
    if kind == "missing":
        return "is required"
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than_equal": ("<=", "le"),
              "less_than": ("<", "lt")}
    if kind in bounds:
        op, key = bounds[kind]
        return f"must be {op} {ctx[key]}"
    if kind in ("too_short", "too_long"):
        return f"must have at {'least' if kind == 'too_short' else 'most'} " \
               f"{ctx.get('min_length', ctx.get('max_length'))} item(s)"
    if kind == "string_pattern_mismatch":
        return f"does not match the pattern {ctx.get('pattern')}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs >= {ctx.get('min_length')} characters"
    if kind == "string_too_long":
        return f"must have at most {ctx.get('max_length')} characters"
    if kind == "finite_number":
        return "must be a finite number"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    for prefix, words in _TYPE_WORDS.items():
        if kind.startswith(prefix + "_"):
            return words
    return err["msg"][:1].lower() + err["msg"][1:]


ENV_PREFIX = "TOWEROPS_"
SCORING_MODES = ("auto", "exact", "ann")
DEPLOY_BACKENDS = ("auto", "local", "supabase", "s3")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_ON, _OFF = ("auto", "1", "true", "on", "yes"), ("0", "false", "off", "no")


class SettingsError(ValueError):
    """A TOWEROPS_* variable with a bad value: the message names each variable and the fix
    (a secret's value is never shown)."""


class Settings(BaseSettings):
    """Every TOWEROPS_* environment variable towerops reads (README, "Environment variables").

    Empty values count as unset. DSNs, keys and URLs that carry a token are `SecretStr`:
    they print as `**********`; `.get_secret_value()` where one is used. A DSN may also be
    a reference `env:OTHER_VAR` (ml.secrets.resolve_secret_ref).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore",
                                      case_sensitive=False, validate_default=False)

    # the platform config (ml.platform): towerops.yaml of this process
    config: Path | None = Field(None, description="the platform config towerops.yaml (default: towerops.yaml in the "
                                                  "current folder or a parent, else the packaged defaults)")
    # logging (ml.logs reads these two itself: the import layers keep ml.logs beside, not above, ml.settings)
    log_dir: Path = Field(Path("logs"), description="folder of the log files (training.log, inference.log, ...)")
    log_level: str = Field("INFO", description="console log level: DEBUG, INFO, WARNING or ERROR")
    # training
    cluster_wait_s: float = Field(120.0, gt=0, description="seconds multi-worker training waits for every worker")
    # tracking server
    tracking_recovery_s: float = Field(120.0, ge=0, description="seconds a run waits for the tracking server "
                                                                "to come back before it is marked FAILED")
    tracking_dsn: SecretStr | None = Field(None, description="PostgreSQL DSN of the tracking server's backend store")
    auth_dsn: SecretStr | None = Field(None, description="PostgreSQL DSN of MLflow basic-auth's user database")
    webhook_encryption_key: SecretStr | None = Field(None, description="Fernet key MLflow encrypts webhook "
                                                                       "secrets with")
    # serving
    scoring: str = Field("auto", description="exact, ann or auto (ann when the bundle holds an index)")
    lowrank: bool = Field(True, description="auto/on: exact scoring in the embeddings' low-rank space; off: full")
    model_version: str | None = Field(None, description="version the scoring server reports (set by towerops serve)")
    prediction_log: Path | None = Field(None, description="prediction log file (default <log_dir>/predictions.jsonl)")
    prediction_log_sample: float = Field(1.0, description="fraction of request rows written to the prediction log")
    prediction_log_max_bytes: int = Field(50 * 1024 * 1024, ge=0, description="size at which the prediction log "
                                                                              "is rotated (0: never)")
    prediction_log_backups: int = Field(5, ge=1, description="rotated prediction log files kept")
    batch_dsn: SecretStr | None = Field(None, description="PostgreSQL DSN batch scoring publishes to")
    tuning_storage: SecretStr | None = Field(None, description="Optuna storage URL (postgresql://) of a study that "
                                             "several tune workers share; named by the tuning config as env:VAR")
    # registry and deployment
    actor: str | None = Field(None, description="who the audit trail records (default: the OS user)")
    audit_db_url: SecretStr | None = Field(None, description="database of the audit trail")
    audit_allow_local: bool | None = Field(None, description="true: accept a local SQLite audit file behind a remote "
                                                             "(http) tracking server (overrides audit.allow_local)")
    webhook_secret: SecretStr | None = Field(None, description="shared secret MLflow signs webhook deliveries with")
    deploy_config: Path | None = Field(None, description="deployment config (default: the deployment section of towerops.yaml)")
    deploy_backend: str | None = Field(None, description="storage backend, overrides storage.backend")
    deploy_dir: Path | None = Field(None, description="root folder of the local backend, overrides storage.local_dir")
    deploy_dsn: SecretStr | None = Field(None, description="database of the model_versions table (else SUPABASE_DB_URL)")
    s3_endpoint_url: str | None = Field(None, description="S3-protocol endpoint (e.g. Supabase's <storage>/s3)")
    supabase_storage_url: str | None = Field(None, description="a storage server's own base URL (no /storage/v1)")
    # monitoring
    alert_webhook_url: SecretStr | None = Field(None, description="Slack-compatible webhook the alerts go to")

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        name = str(value).strip().upper()
        if name not in LOG_LEVELS:
            raise ValueError(f"is not a log level: use {', '.join(LOG_LEVELS[:-1])} or {LOG_LEVELS[-1]}")
        return name

    @field_validator("scoring", mode="before")
    @classmethod
    def _scoring(cls, value: Any) -> Any:
        mode = str(value).strip().lower()
        if mode not in SCORING_MODES:
            raise ValueError(f"is not one of {', '.join(SCORING_MODES)}")
        return mode

    @field_validator("lowrank", mode="before")
    @classmethod
    def _lowrank(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return value
        raw = str(value).strip().lower()
        if raw in _ON or raw in _OFF:
            return raw in _ON
        raise ValueError("must be auto, on or off")

    @field_validator("prediction_log_sample", mode="before")
    @classmethod
    def _fraction(cls, value: Any) -> Any:
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise ValueError("is not a number; set a fraction between 0 and 1, e.g. 0.1") from None
        if not 0.0 <= rate <= 1.0:
            raise ValueError("is outside [0, 1]; set a fraction between 0 and 1, e.g. 0.1")
        return rate

    @field_validator("deploy_backend", mode="before")
    @classmethod
    def _backend(cls, value: Any) -> Any:
        kind = str(value).strip().lower()
        if kind not in DEPLOY_BACKENDS:
            raise ValueError(f"is unknown: use one of {', '.join(DEPLOY_BACKENDS)}")
        return kind


class _MappingSettings(Settings):
    """Settings from an explicit mapping only (a child process's environment), not os.environ."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, **sources: Any) -> tuple[Any, ...]:
        return (init_settings,)


def _settings_error(exc: ValidationError) -> SettingsError:
    lines = []
    for err in exc.errors(include_url=False):
        name = str(err["loc"][0]) if err["loc"] else ""
        var = ENV_PREFIX + name.upper()
        field = Settings.model_fields.get(name)
        secret = field is not None and "SecretStr" in str(field.annotation)
        shown = "" if secret or "input" not in err else f"={err['input']!r}"
        lines.append(f"{var}{shown} {explain(err)}" + (f" ({field.description})" if field and field.description
                                                        and err["type"] != "value_error" else ""))
    return SettingsError("bad environment variable(s):\n  - " + "\n  - ".join(lines)
                         + "\n  fix the value or unset the variable to use the default")


def get_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The TOWEROPS_* settings, read now (no cache: tests and `towerops serve` change the
    environment); from `environ` alone when given (a child process's environment)."""
    try:
        if environ is None:
            return Settings()
        values = {k[len(ENV_PREFIX):].lower(): v for k, v in environ.items()
                  if k.upper().startswith(ENV_PREFIX) and v != ""}
        return _MappingSettings(**{k: v for k, v in values.items() if k in Settings.model_fields})
    except ValidationError as exc:
        raise _settings_error(exc) from None


def secret_value(secret: SecretStr | None) -> str | None:
    """The plain text of an optional secret (None stays None)."""
    return secret.get_secret_value() if secret is not None else None
