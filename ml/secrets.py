"""Secrets: `env:VAR` references, and text made safe to log, record or show.

Why one module at the bottom of `ml`: every layer that takes a DSN or URL (data loaders,
batch publishing, monitoring, the registry's audit database, the tracking server, the
deployer) resolves `env:VAR` the same way and masks the same way, so a password given
once never reaches params, tags, logs, artifacts or command lines.

- `resolve_secret_ref("env:TOWEROPS_DATA_DSN")` reads the value from the environment at
  use time (a missing variable is an error naming it and the fix); any other value is
  returned as given. The resolved value is remembered so `redact` scrubs it from logs.
- `describe_secret(value)` is what may be recorded: `env:VAR` stays `env:VAR`, a literal
  DSN loses its password.
- `mask_dsn(text)` replaces passwords in URLs (`scheme://user:***@host`) and in libpq
  `password=...` pairs; `redact_url(url)` keeps only scheme, host and port (webhook URLs
  carry their token in the path or query); `redact(text)` does both, plus every secret
  seen in this process and the values of well-known secret environment variables.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from typing import Iterable
from urllib.parse import quote, unquote, urlsplit

ENV_PREFIX = "env:"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MIN_SECRET_LEN = 6  # shorter values ("1", "true") would scrub ordinary words from logs

# Environment variables whose values are secrets wherever they are read (storage keys,
# webhook signing secret, alert URL, database URLs): scrubbed from every log line.
SECRET_ENV_VARS: tuple[str, ...] = (
    "SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_KEY", "SUPABASE_ANON_KEY", "SUPABASE_DB_URL",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "TOWEROPS_WEBHOOK_SECRET", "TOWEROPS_WEBHOOK_ENCRYPTION_KEY", "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY",
    "TOWEROPS_ALERT_WEBHOOK_URL", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "TOWEROPS_BATCH_DSN", "TOWEROPS_DEPLOY_DSN", "TOWEROPS_AUDIT_DB_URL", "TOWEROPS_TRACKING_DSN",
    "TOWEROPS_AUTH_DSN", "MLFLOW_BACKEND_STORE_URI", "PGPASSWORD", "TOWEROPS_TUNING_STORAGE",
)

_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*:)(?P<pw>[^@\s'\"]+)(?P<at>@)")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s'\"]+)", re.IGNORECASE)
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")

_known: set[str] = set()
_known_lock = threading.Lock()


class SecretRefError(ValueError):
    """An `env:VAR` reference that cannot be resolved (the message names the variable, never a value)."""


def is_secret_ref(value: object) -> bool:
    """True for an `env:VAR` reference."""
    return isinstance(value, str) and value.startswith(ENV_PREFIX)


def remember_secret(value: str | None) -> None:
    """Scrub `value` (and its URL-encoded / decoded forms, and a URL's password) from every later log line."""
    if not value or len(value) < _MIN_SECRET_LEN:
        return
    forms = {value, quote(value, safe=""), unquote(value)}
    try:
        parts = urlsplit(value)
        if parts.password:
            forms |= {parts.password, unquote(parts.password)}
        if parts.scheme in ("http", "https") and (parts.path.strip("/") or parts.query):
            forms.add(parts.path + (f"?{parts.query}" if parts.query else ""))
    except ValueError:
        pass
    with _known_lock:
        _known.update(f for f in forms if f and len(f) >= _MIN_SECRET_LEN)


def resolve_secret_ref(value: str | None, what: str = "value") -> str | None:
    """`env:VAR` -> the value of $VAR (read now); anything else is returned unchanged.

    Why: parameters and options are logged (MLflow params, `mlflow run`'s command line,
    shell history); a reference is safe there, the secret it names is not.
    """
    if not is_secret_ref(value):
        return value
    name = value[len(ENV_PREFIX):].strip()
    if not _ENV_NAME.match(name):
        raise SecretRefError(f"{what} {value!r} is not a valid reference: write env:NAME with NAME an environment "
                             "variable name (letters, digits, _), e.g. env:TOWEROPS_DATA_DSN")
    resolved = os.environ.get(name)
    if not resolved:
        raise SecretRefError(f"{what} env:{name} names the environment variable {name}, which is "
                             f"{'empty' if resolved == '' else 'not set'}: export {name}=... (the DSN or URL) "
                             "in the environment of this command, or pass the value itself")
    if is_secret_ref(resolved):
        raise SecretRefError(f"{what} env:{name}: ${name} holds another reference ({resolved[:40]!r}); "
                             "put the DSN or URL itself in the variable")
    remember_secret(resolved)
    return resolved


class SecretRef(str):
    """A string option that may be `env:VAR`: shows as given (safe), `.reveal()` resolves it."""

    def reveal(self, what: str = "value") -> str:
        return resolve_secret_ref(str(self), what) or ""

    def describe(self) -> str:
        return describe_secret(str(self))


def mask_dsn(text: str, password: str | None = None) -> str:
    """Replace any password in a DSN (URL or key=value form) or a message holding one with '***'."""
    if not text:
        return text
    masked = _URL_PASSWORD.sub(lambda m: m.group("head") + "***" + m.group("at"), str(text))
    masked = _KV_PASSWORD.sub(lambda m: m.group("head") + "***", masked)
    if password:
        masked = masked.replace(password, "***")
    return masked


def describe_secret(value: str | None) -> str:
    """What may be recorded for a DSN-or-path value: `env:VAR` as written, else the value without password."""
    if value is None:
        return ""
    text = str(value)
    return text if is_secret_ref(text) else mask_dsn(text)


def redact_url(url: str) -> str:
    """scheme://host[:port]/*** : no user, password, path, query or fragment (tokens live there)."""
    try:
        parts = urlsplit(str(url))
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<url>"
    if not parts.scheme:
        return "<url>"
    tail = "/***" if (parts.path.strip("/") or parts.query or parts.fragment) else ""
    return f"{parts.scheme}://{host}{port}{tail}"


def redact_urls(text: str, urls: Iterable[str] = ()) -> str:
    """`text` with the given URLs (and their bare path + query, as `requests` prints them) and
    every other http(s) URL reduced to scheme://host:port."""
    out = str(text)
    for url in urls:
        if not url:
            continue
        out = out.replace(url, redact_url(url))
        try:
            parts = urlsplit(url)
        except ValueError:
            continue
        tail = parts.path + (f"?{parts.query}" if parts.query else "")
        if len(tail) > 1:
            out = out.replace(tail, "/***")
    return _URL.sub(lambda m: redact_url(m.group(0)) if m.group(0).lower().startswith(("http://", "https://"))
                    else mask_dsn(m.group(0)), out)


def _environment_secrets() -> list[str]:
    values = []
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= _MIN_SECRET_LEN and not is_secret_ref(value):
            values.append(value)
            try:
                parts = urlsplit(value)
                if parts.password and len(parts.password) >= _MIN_SECRET_LEN:
                    values.append(parts.password)
                if parts.scheme in ("http", "https") and len(parts.path) > 1:
                    values.append(parts.path)
            except ValueError:
                pass
    return values


def redact(text: str) -> str:
    """`text` safe to log or print: DSN passwords masked, known secrets replaced by ***."""
    out = mask_dsn(str(text))
    with _known_lock:
        known = sorted(_known, key=len, reverse=True)
    for secret in known + sorted(_environment_secrets(), key=len, reverse=True):
        if secret in out:
            out = out.replace(secret, "***")
    return out


class RedactingFilter(logging.Filter):
    """A logging filter that runs every record (message, arguments, traceback) through `redact`."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: log it as it is
            return True
        safe = redact(message)
        if safe != message:
            record.msg, record.args = safe, None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


__all__ = ["ENV_PREFIX", "SECRET_ENV_VARS", "RedactingFilter", "SecretRef", "SecretRefError", "describe_secret",
           "is_secret_ref", "mask_dsn", "redact", "redact_url", "redact_urls", "remember_secret", "resolve_secret_ref"]
