"""The one platform config, `towerops.yaml`: where the tracking server, the audit trail, the
data, the webhook receiver, the gate, the deployment and monitoring live, for every process.

Why one file found one way: a team runs the webhook receiver on one host, reconcile from cron
on another and promotions from laptops; each must end a promotion the same way, so each must
read the same settings whatever its working directory. The file is found, in order:

1. `towerops --config PATH ...` (exported as $TOWEROPS_CONFIG to child processes);
2. $TOWEROPS_CONFIG;
3. `towerops.yaml` in the current folder or the nearest parent folder holding one;
4. none: the packaged defaults (the pydantic defaults of each section's model, which the
   files under `configs/` spell out), so `towerops train` works from any folder after
   `pip install`.

Sections: `tracking`, `audit`, `data`, `webhooks` (their models are here), and `training`,
`tuning`, `registry`, `deployment`, `monitoring` (validated by their own models in their own
layer). A section is a mapping, or the path of a JSON/YAML file holding it. Relative paths
(section files, folders, `sqlite:///` files) are relative to the folder of `towerops.yaml`,
so every process resolves them to the same place. Secrets never appear in the file: a DSN
or URL with a password, a token or a key is written `env:VAR` and read from the environment
when used (`ml.secrets.resolve_secret_ref`).

Environment variables that name one value win over the file (MLFLOW_TRACKING_URI over
`tracking.uri`, TOWEROPS_AUDIT_DB_URL over `audit.url`, ...); `towerops config show`
prints each effective value with where it came from.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from pydantic import Field, field_validator

from ml.config import KeyProblem, StrictModel, read_config_file, validate_config
from ml.secrets import describe_secret, is_secret_ref, mask_dsn, resolve_secret_ref
from ml.settings import get_settings

CONFIG_NAME = "towerops.yaml"
PLATFORM_SECTIONS: tuple[str, ...] = ("tracking", "audit", "data", "webhooks")
LAYER_SECTIONS: tuple[str, ...] = ("training", "tuning", "registry", "deployment", "monitoring")
SECTIONS: tuple[str, ...] = PLATFORM_SECTIONS + LAYER_SECTIONS
DEFAULT_WEBHOOK_SECRET = "env:TOWEROPS_WEBHOOK_SECRET"

# One value each, set in the environment: wins over the file (the key path -> the variable).
ENV_OVERRIDES: dict[str, str] = {
    "tracking.uri": "MLFLOW_TRACKING_URI",
    "audit.url": "TOWEROPS_AUDIT_DB_URL",
    "audit.allow_local": "TOWEROPS_AUDIT_ALLOW_LOCAL",
    "deployment.storage.backend": "TOWEROPS_DEPLOY_BACKEND",
    "deployment.storage.local_dir": "TOWEROPS_DEPLOY_DIR",
}
# A whole section from its own file, named in the environment (older set-ups).
ENV_SECTION_FILES: dict[str, str] = {"deployment": "TOWEROPS_DEPLOY_CONFIG"}


class PlatformConfigError(ValueError):
    """The platform config cannot be found or read; the message names the file and the fix."""


def _has_password(value: str) -> bool:
    return mask_dsn(value) != value


def _no_literal_secret(value: str | None, what: str) -> str | None:
    if value is None or is_secret_ref(value):
        return value
    if _has_password(value):  # a KeyProblem: the message never repeats the value
        raise KeyProblem(f"holds a password: never write secrets in towerops.yaml; put the {what} in an environment "
                         "variable and write env:VAR here (e.g. env:TOWEROPS_AUDIT_DB_URL)")
    return value


# ------------------------------------------------------------------ the platform's own sections
class TrackingSection(StrictModel):
    """Where every process tracks runs and reads the registry."""

    uri: str | None = Field(None, json_schema_extra={"hint": "http(s)://host:port of the team's tracking server, "
                                                             "or sqlite:///mlflow.db / postgresql://... (env:VAR for "
                                                             "one with a password)"})
    backend_dsn: str | None = Field(None, json_schema_extra={
        "hint": "env:VAR naming the server's PostgreSQL DSN; lets `towerops doctor` check the schema"})

    @field_validator("uri", "backend_dsn")
    @classmethod
    def _secret_free(cls, value: str | None) -> str | None:
        return _no_literal_secret(value, "DSN")


class AuditSection(StrictModel):
    """The audit trail of stage changes: one database every process shares."""

    url: str | None = Field(None, json_schema_extra={
        "hint": "the team's PostgreSQL as env:VAR (or a DSN without password); default: the tracking database"})
    allow_local: bool = Field(False, json_schema_extra={
        "hint": "true: accept a local SQLite audit file behind a remote (http) tracking server (one user only)"})

    @field_validator("url")
    @classmethod
    def _secret_free(cls, value: str | None) -> str | None:
        return _no_literal_secret(value, "audit database DSN")


class DataSection(StrictModel):
    """Data sources: `source` is the default `--data`; `sources` are named ones (`--data @name`)."""

    source: str | None = Field(None, json_schema_extra={"hint": "a data folder, or env:VAR naming a postgresql:// DSN"})
    sources: dict[str, str] = Field(default_factory=dict)

    @field_validator("source")
    @classmethod
    def _secret_free(cls, value: str | None) -> str | None:
        return _no_literal_secret(value, "data DSN")

    @field_validator("sources")
    @classmethod
    def _all_secret_free(cls, value: dict[str, str]) -> dict[str, str]:
        for name, source in value.items():
            try:
                _no_literal_secret(source, "data DSN")
            except ValueError as exc:
                raise KeyProblem(str(exc), name) from None
        return value


class WebhooksSection(StrictModel):
    """The MLflow webhook receiver: what `webhooks serve` binds, `webhooks register` registers
    and `doctor` checks."""

    url: str | None = Field(None, json_schema_extra={"hint": "public URL of the receiver, e.g. "
                                                             "https://hooks.example.com/webhooks/mlflow"})
    secret: str = Field(DEFAULT_WEBHOOK_SECRET, json_schema_extra={"hint": "env:VAR naming the shared secret"})
    name: str = Field("towerops-registry", min_length=1)
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)

    @field_validator("secret")
    @classmethod
    def _by_name(cls, value: str) -> str:
        if not is_secret_ref(value):
            raise ValueError("must be env:VAR, the environment variable holding the shared secret (never the "
                             "secret itself), e.g. env:TOWEROPS_WEBHOOK_SECRET")
        return value


PLATFORM_MODELS: dict[str, type[StrictModel]] = {"tracking": TrackingSection, "audit": AuditSection,
                                                 "data": DataSection, "webhooks": WebhooksSection}


# ------------------------------------------------------------------ finding and reading the file
@dataclass(frozen=True)
class PlatformFile:
    """The platform config as read: its path (None: packaged defaults), how it was found, its mapping."""

    path: Path | None
    origin: str
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def base_dir(self) -> Path:
        """Relative paths in the config are relative to this folder."""
        return self.path.parent if self.path is not None else Path.cwd()

    def describe(self) -> str:
        return f"{self.path} ({self.origin})" if self.path is not None else "packaged defaults (no towerops.yaml found)"


@dataclass(frozen=True)
class Section:
    """One section's raw mapping and where it came from (`default` when absent)."""

    name: str
    raw: dict[str, Any]
    source: str
    file: Path | None            # the file holding the mapping (towerops.yaml or the section's own file)
    base_dir: Path               # relative paths inside are relative to this folder

    @property
    def is_default(self) -> bool:
        return self.file is None

    def path(self, value: str | Path | None) -> str | None:
        """`value` as an absolute path (relative to the platform file's folder); None stays None."""
        if value is None or value == "":
            return None
        p = Path(str(value)).expanduser()
        return str(p if p.is_absolute() else (self.base_dir / p).resolve())


_cache: dict[tuple[str, int], dict[str, Any]] = {}


def find_config_file(explicit: str | Path | None = None, cwd: str | Path | None = None) -> tuple[Path | None, str]:
    """(path, how it was found) in the documented order; (None, 'packaged defaults') when none exists."""
    if explicit:
        p = Path(explicit).expanduser()
        if not p.is_file():
            raise PlatformConfigError(f"platform config {p} (--config) does not exist; pass an existing towerops.yaml")
        return p.resolve(), "--config"
    from_env = get_settings().config
    if from_env:
        p = Path(from_env).expanduser()
        if not p.is_file():
            raise PlatformConfigError(f"platform config {p} ($TOWEROPS_CONFIG) does not exist; point TOWEROPS_CONFIG at "
                                      "the team's towerops.yaml or unset it")
        return p.resolve(), "--config" if str(p.resolve()) == _given.get("path") else "$TOWEROPS_CONFIG"
    here = Path(cwd or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate, f"found from {here}"
    return None, "packaged defaults"


def _read(path: Path) -> dict[str, Any]:
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _cache:
        raw = read_config_file(path, "platform config", "a mapping of sections: " + ", ".join(SECTIONS))
        unknown = [k for k in raw if k not in SECTIONS]
        if unknown:
            import difflib

            hints = []
            for k in unknown:
                guess = difflib.get_close_matches(str(k), SECTIONS, n=1)
                hints.append(f"{k!r}" + (f" (did you mean {guess[0]!r}?)" if guess else ""))
            raise PlatformConfigError(f"platform config {path}: unknown section(s) {', '.join(hints)}; allowed "
                                      f"sections: {', '.join(SECTIONS)}")
        _cache.clear()
        _cache[key] = raw
    return dict(_cache[key])


def load_platform(explicit: str | Path | None = None) -> PlatformFile:
    """The platform config file of this process (read now; re-read when the file changes)."""
    path, origin = find_config_file(explicit)
    if path is None:
        return PlatformFile(None, origin, {})
    return PlatformFile(path, origin, _read(path))


def use_config(path: str | Path | None) -> None:
    """`towerops --config PATH`: this process and its children read PATH (exported as $TOWEROPS_CONFIG)."""
    if path:
        found, _ = find_config_file(path)
        _given["path"] = str(found)
        os.environ.update(TOWEROPS_CONFIG=str(found))


_given: dict[str, str] = {}  # the path `use_config` exported (so its origin still reads --config)


def section(name: str, platform: PlatformFile | None = None) -> Section:
    """One section of the platform config: an inline mapping, or the file it names."""
    if name not in SECTIONS:
        raise ValueError(f"unknown platform config section {name!r}: use one of {', '.join(SECTIONS)}")
    platform = platform or load_platform()
    env_file = ENV_SECTION_FILES.get(name)
    if env_file:
        from_env = getattr(get_settings(), env_file[len("TOWEROPS_"):].lower(), None)
        if from_env:
            p = Path(from_env).expanduser()
            if not p.is_file():
                raise FileNotFoundError(f"{name} config {p} (${env_file}) does not exist; pass an existing file or unset "
                                        f"{env_file} to use the {name} section of {platform.describe()}")
            return Section(name, read_config_file(p, f"{name} config"), f"{p} (${env_file})", p.resolve(),
                           Path.cwd())
    value = platform.raw.get(name)
    if value is None:
        return Section(name, {}, "default", None, platform.base_dir)
    if isinstance(value, str):
        p = Path(value).expanduser()
        p = p if p.is_absolute() else (platform.base_dir / p)
        if not p.is_file():
            raise FileNotFoundError(f"platform config {platform.path}: section {name} names the file {value}, which "
                                    f"does not exist ({p}); fix the path (relative paths are relative to "
                                    f"{platform.base_dir}) or write the section inline")
        return Section(name, read_config_file(p, f"{name} config"), f"{p.resolve()} (via {platform.path})",
                       p.resolve(), platform.base_dir)
    if not isinstance(value, Mapping):
        raise PlatformConfigError(f"platform config {platform.path}: section {name} must be a mapping or the path of "
                                  f"a JSON/YAML file, not a {type(value).__name__}")
    return Section(name, dict(value), str(platform.path), platform.path, platform.base_dir)


def platform_section(name: str, platform: PlatformFile | None = None) -> Any:
    """A validated section of the platform's own (tracking, audit, data, webhooks)."""
    sec = section(name, platform)
    return validate_config(PLATFORM_MODELS[name], sec.raw, sec.source, root=name)


# ------------------------------------------------------------------ effective values
def _sqlite_absolute(uri: str, base: Path) -> str:
    prefix = "sqlite:///"
    if uri.startswith(prefix):
        rest = uri[len(prefix):]
        if rest and rest != ":memory:" and not rest.startswith("/"):
            return prefix + str((base / rest).resolve())
    return uri


@dataclass(frozen=True)
class Value:
    """An effective value and where it came from (`env VAR`, a file, `default`, `derived`)."""

    value: Any
    source: str


def tracking_uri(platform: PlatformFile | None = None) -> Value:
    """$MLFLOW_TRACKING_URI, else `tracking.uri`, else the embedded default (SQLite `mlflow.db` here)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return Value(env, "env MLFLOW_TRACKING_URI")
    platform = platform or load_platform()
    sec = section("tracking", platform)
    cfg = validate_config(TrackingSection, sec.raw, sec.source, root="tracking")
    if cfg.uri:
        uri = resolve_secret_ref(cfg.uri, "tracking.uri") or ""
        return Value(_sqlite_absolute(uri, sec.base_dir), sec.source)
    return Value(f"sqlite:///{Path('mlflow.db').resolve()}", "default (mlflow.db in the current folder)")


def apply_environment(platform: PlatformFile | None = None) -> str:
    """Point MLflow at the configured tracking URI (this process and its children); returns it.

    Called by every `towerops` command before it runs, so library code that reads
    MLFLOW_TRACKING_URI (mlflow itself, `ml.settings.ensure_tracking_uri`) sees the platform's."""
    found = tracking_uri(platform)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = found.value
        _applied["MLFLOW_TRACKING_URI"] = found.source
    return found.value


_applied: dict[str, str] = {}


def applied_source(var: str) -> str | None:
    """Where a variable `apply_environment` set came from (None: it was in the environment already)."""
    return _applied.get(var) if os.environ.get(var) else None


def is_remote_tracking(uri: str | None) -> bool:
    """True for a tracking server reached over HTTP (the team set-up), False for a local store."""
    return bool(uri) and str(uri).lower().startswith(("http://", "https://", "databricks"))


def audit_allow_local(platform: PlatformFile | None = None) -> Value:
    """Whether a local audit file behind a remote tracking server was allowed explicitly."""
    settings = get_settings()
    if settings.audit_allow_local is not None:
        return Value(bool(settings.audit_allow_local), "env TOWEROPS_AUDIT_ALLOW_LOCAL")
    sec = section("audit", platform)
    cfg = validate_config(AuditSection, sec.raw, sec.source, root="audit")
    return Value(cfg.allow_local, sec.source if "allow_local" in sec.raw else "default")


def configured_audit_url(platform: PlatformFile | None = None) -> Value | None:
    """`audit.url` of the platform config (env:VAR resolved, sqlite paths absolute), or None."""
    sec = section("audit", platform)
    cfg = validate_config(AuditSection, sec.raw, sec.source, root="audit")
    if not cfg.url:
        return None
    url = resolve_secret_ref(cfg.url, "audit.url") or ""
    return Value(_sqlite_absolute(url, sec.base_dir), sec.source)


def data_source(value: str | None = None, platform: PlatformFile | None = None) -> str:
    """The `--data` to use: `value` (a folder, DSN, env:VAR, or `@name` of `data.sources`), else `data.source`.

    Folders are made absolute (relative to the current folder when given on the command line,
    to the config's folder when they come from the config)."""
    if value and not str(value).startswith("@"):
        return _absolute_source(str(value), Path.cwd())
    sec = section("data", platform)
    cfg = validate_config(DataSection, sec.raw, sec.source, root="data")
    if value:
        name = str(value)[1:]
        if name not in cfg.sources:
            raise ValueError(f"--data {value}: no data source named {name!r} in {sec.source} (data.sources has "
                             f"{', '.join(sorted(cfg.sources)) or 'none'})")
        return _absolute_source(cfg.sources[name], sec.base_dir)
    if not cfg.source:
        raise ValueError("no data given: pass --data (a data folder, or env:VAR naming a postgresql:// DSN), or set "
                         f"data.source in the platform config ({load_platform().describe()})")
    return _absolute_source(cfg.source, sec.base_dir)


def _absolute_source(value: str, base: Path) -> str:
    if is_secret_ref(value) or "://" in value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def webhook_secret(platform: PlatformFile | None = None) -> str:
    """The webhook signing secret, read from the variable `webhooks.secret` names."""
    cfg = platform_section("webhooks", platform)
    secret = resolve_secret_ref(cfg.secret, "webhooks.secret")
    if not secret:
        raise ValueError(f"webhooks.secret {cfg.secret}: set that variable to the secret MLflow signs deliveries with")
    return secret


def load_training_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> Any:
    """The training config (`ml.config.TowerOpsConfig`): `path`, else the platform config's `training`
    section (configs/training.json spells out its defaults); dotted `overrides` on top."""
    from ml.config import apply_overrides, config_from_dict, load_config

    if path:
        return load_config(path, overrides)
    found = section("training")
    source = found.source
    given = [k for k, v in (overrides or {}).items() if v not in (None, "")]
    if given:
        source += " with overrides " + ", ".join(given)
    return config_from_dict(apply_overrides(found.raw, overrides), source)


def shown(value: Any) -> Any:
    """A value safe to print: env:VAR as written, DSNs without their password."""
    if isinstance(value, str):
        return describe_secret(value)
    return value


__all__ = ["CONFIG_NAME", "ENV_OVERRIDES", "LAYER_SECTIONS", "PLATFORM_MODELS", "PLATFORM_SECTIONS", "SECTIONS",
           "AuditSection", "DataSection", "PlatformConfigError", "PlatformFile", "Section", "TrackingSection", "Value",
           "WebhooksSection", "apply_environment", "applied_source", "audit_allow_local", "configured_audit_url",
           "data_source", "find_config_file", "is_remote_tracking", "load_platform", "load_training_config", "platform_section", "section",
           "shown", "tracking_uri", "use_config", "webhook_secret"]
