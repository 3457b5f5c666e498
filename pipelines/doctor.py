"""`towerops doctor`: check each part of the set-up the platform config describes, and say
what to fix. Read-only apart from what a first use would create anyway (the audit table, a
local bucket folder); the audit write is a probe row rolled back.

Checks, in order: the config validates; the tracking server answers; its schema is MLflow's
head; the audit database is shared (not a local file behind a remote server) and writable;
the deployment storage answers with the key's role (and the `model_versions` database, when
set); the webhook is registered at the configured URL and the tracking server reaches it.
A check is ok, warn (works, but not as a team set-up should), skip (not configured) or fail.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Callable

from ml.platform import PlatformFile, is_remote_tracking, load_platform, platform_section, tracking_uri
from ml.secrets import redact, redact_url

STATUSES = ("ok", "warn", "skip", "fail")


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _first_line(exc: BaseException) -> str:
    text = redact(str(getattr(exc, "message", None) or exc)).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def check_config(platform: PlatformFile) -> Check:
    from pipelines.platform import effective_config

    cfg = effective_config(platform)
    if cfg.errors:
        lines = "; ".join(f"{name}: {why}" for name, why in cfg.errors.items())
        return Check("config", "fail", f"{platform.describe()}: {lines}", "fix the named keys (towerops config show)")
    if platform.path is None:
        return Check("config", "warn", "no towerops.yaml found: the packaged defaults (embedded SQLite tracking in the "
                     "current folder)", "a team set-up shares one towerops.yaml: pass --config, set $TOWEROPS_CONFIG "
                     "or put it in a parent folder (README, Team set-up)")
    return Check("config", "ok", f"{platform.describe()}: every section valid")


def check_tracking(uri: str) -> Check:
    shown = redact_url(uri) if is_remote_tracking(uri) else redact(uri)
    try:
        if is_remote_tracking(uri):
            import requests

            health = requests.get(uri.rstrip("/") + "/health", timeout=10)
            if health.status_code != 200:
                return Check("tracking server", "fail", f"{shown}/health answered {health.status_code}",
                             "check the server's log; `towerops server` starts it")
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            return Check("tracking server", "ok", f"{shown} answers")
        if uri.startswith("sqlite:///"):
            from ml.settings import check_store_writable, sqlite_file

            path = sqlite_file(uri)
            check_store_writable(uri)
            if path is not None and not path.exists():
                return Check("tracking server", "ok", f"embedded SQLite {path} (created on first use)")
            return Check("tracking server", "ok", f"embedded SQLite {path}")
        import sqlalchemy as sa

        engine = sa.create_engine(uri)
        try:
            with engine.connect():
                pass
        finally:
            engine.dispose()
        return Check("tracking server", "ok", f"database {redact(uri)} answers")
    except Exception as exc:  # noqa: BLE001 - every failure is reported, with the fix
        return Check("tracking server", "fail", f"{shown} does not answer: {_first_line(exc)}",
                     "start it (`towerops server --dsn ...` on the server host) or fix tracking.uri in towerops.yaml "
                     "/ $MLFLOW_TRACKING_URI")


def _revision(uri: str) -> str | None:
    import sqlalchemy as sa

    engine = sa.create_engine(uri)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table("alembic_version"):
                return None
            return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    finally:
        engine.dispose()


def check_schema(uri: str, platform: PlatformFile) -> Check:
    from mlflow.store.db.utils import _get_latest_schema_revision

    try:
        head = _get_latest_schema_revision()
        store = uri
        if is_remote_tracking(uri):
            from ml.secrets import resolve_secret_ref

            dsn = platform_section("tracking", platform).backend_dsn
            if not dsn:
                return _server_version(uri)
            store = resolve_secret_ref(dsn, "tracking.backend_dsn") or ""
        elif uri.startswith("sqlite:///"):
            from ml.settings import sqlite_file

            path = sqlite_file(uri)
            if path is None or not path.exists():
                return Check("schema", "ok", "no database yet: MLflow creates it at its head schema on first use")
        if store.startswith("postgres://"):
            store = "postgresql://" + store[len("postgres://"):]
        current = _revision(store)
        if current == head:
            return Check("schema", "ok", f"MLflow schema at head {head}")
        if current is None:
            return Check("schema", "fail", "the tracking database has no MLflow schema",
                         "start the server once with `towerops server` (it creates the schema) or run "
                         "`towerops server migrate`")
        return Check("schema", "fail", f"MLflow schema at {current}, this MLflow wants {head}",
                     "back up the database, then `towerops server migrate` (or restart `towerops server`)")
    except Exception as exc:  # noqa: BLE001
        return Check("schema", "fail", f"could not read the schema version: {_first_line(exc)}",
                     "check tracking.backend_dsn (env:VAR) and that the database answers")


def _server_version(uri: str) -> Check:
    import mlflow
    import requests

    answer = requests.get(uri.rstrip("/") + "/version", timeout=10)
    server = answer.text.strip() if answer.status_code == 200 else "unknown"
    if server == mlflow.__version__:
        return Check("schema", "ok", f"server runs MLflow {server} like this client (it migrates its schema at start; "
                     "set tracking.backend_dsn to check the database itself)")
    return Check("schema", "warn", f"server runs MLflow {server}, this client {mlflow.__version__}",
                 "run the same MLflow on server and clients (pip install -e . on both); set tracking.backend_dsn "
                 "(env:VAR) to check the schema directly")


def check_audit(uri: str) -> Check:
    from datetime import datetime, timezone

    from registry.audit import AuditLog, audit_table, audit_url, local_audit_problem

    try:
        url = audit_url()
        shown = redact(url)
        if local_audit_problem(url, uri):
            return Check("audit database", "fail", f"{shown} is a local file but the tracking server "
                         f"{redact_url(uri)} is shared: other hosts would keep another history",
                         "set audit.url in towerops.yaml (env:VAR naming the team's PostgreSQL DSN) or "
                         "$TOWEROPS_AUDIT_DB_URL; for one person on one host, audit.allow_local: true")
        log = AuditLog(url)
        if log.is_sqlite:
            from ml.settings import check_store_writable

            check_store_writable(url, "audit database")
        with log.engine.connect() as conn:
            trans = conn.begin()
            conn.execute(audit_table.insert().values(model_name="towerops-doctor", version="0", action="doctor",
                                                     created_at=datetime.now(timezone.utc)))
            trans.rollback()  # a probe: nothing is kept
        log.engine.dispose()
        if url.startswith("sqlite") and is_remote_tracking(uri):
            return Check("audit database", "warn", f"{shown}: a local file, allowed explicitly (audit.allow_local)",
                         "a team shares one audit database: set audit.url to the team's PostgreSQL")
        kind = "local file (shared with the local tracking store)" if url.startswith("sqlite") else "shared database"
        return Check("audit database", "ok", f"{shown}: {kind}, writable")
    except Exception as exc:  # noqa: BLE001
        return Check("audit database", "fail", f"{_first_line(exc)}",
                     "set audit.url in towerops.yaml (env:VAR naming the team's PostgreSQL DSN) and check the user "
                     "may create and write the table towerops_stage_audit")


def _key_role() -> str:
    import base64
    import json

    key = os.environ.get("SUPABASE_SERVICE_ROLE_KEY") or os.environ.get("SUPABASE_KEY") or ""
    parts = key.split(".")
    if len(parts) != 3:
        return "opaque key" if key else "no key"
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return f"role {payload.get('role') or 'none'}"
    except ValueError:
        return "unreadable JWT"


def check_storage() -> Check:
    from registry.deploy.config import deploy_dsn, load_deploy_config
    from registry.deploy.storage import open_backend, resolve_backend_kind

    try:
        cfg = load_deploy_config(None)
        if not cfg.auto_deployment:
            return Check("storage", "skip", "supabase.auto_deployment is false: promotions are not deployed")
        kind = resolve_backend_kind(cfg.backend)
        backend = open_backend(cfg.backend, cfg.storage_bucket, cfg.local_dir, timeout_s=min(cfg.timeout_s, 20.0))
        try:
            backend.check()
            detail = backend.describe() + (f" with the key's {_key_role()}" if kind == "supabase" else "")
        finally:
            backend.close()
        dsn = deploy_dsn()
        if dsn:
            from registry.deploy.table import ModelVersionsTable

            table = ModelVersionsTable(dsn, cfg.model_table)
            table.connect().close()
            detail += f"; {cfg.model_table} database answers"
        else:
            detail += "; no model_versions database (the audit database's lock serialises pointer moves)"
        if kind == "local" and is_remote_tracking(os.environ.get("MLFLOW_TRACKING_URI", "")):
            return Check("storage", "warn", detail, "a team deploys to shared storage: set deployment.storage.backend "
                         "to supabase or s3 (keys from the environment)")
        return Check("storage", "ok", detail)
    except Exception as exc:  # noqa: BLE001
        return Check("storage", "fail", _first_line(exc),
                     "check deployment.storage in towerops.yaml and the keys in the environment (SUPABASE_URL + "
                     "SUPABASE_SERVICE_ROLE_KEY, or TOWEROPS_S3_ENDPOINT_URL + AWS_ACCESS_KEY_ID / "
                     "AWS_SECRET_ACCESS_KEY)")


def check_webhook(uri: str, platform: PlatformFile) -> Check:
    try:
        cfg = platform_section("webhooks", platform)
    except ValueError as exc:
        return Check("webhook", "fail", _first_line(exc), "fix the webhooks section")
    if not is_remote_tracking(uri):
        return Check("webhook", "skip", "the tracking store is local: MLflow fires webhooks only from a tracking "
                     "server (UI promotions are caught by `towerops registry reconcile`)")
    try:
        from mlflow import MlflowClient

        from ml.secrets import resolve_secret_ref

        client = MlflowClient(tracking_uri=uri)
        hooks = [w for w in client.list_webhooks() if w.name == cfg.name]
        if not hooks:
            if not cfg.url:
                return Check("webhook", "skip", f"no webhook {cfg.name!r} registered and webhooks.url unset: UI "
                             "promotions are caught only by `towerops registry reconcile` (cron)",
                             "set webhooks.url and run `towerops webhooks register`")
            return Check("webhook", "fail", f"no webhook {cfg.name!r} registered on {redact_url(uri)}",
                         "run `towerops webhooks register` (it registers webhooks.url)")
        hook = hooks[0]
        status = str(getattr(hook.status, "value", hook.status))
        problems = []
        if cfg.url and hook.url != cfg.url:
            problems.append(f"registered for {redact_url(hook.url)}, webhooks.url is {redact_url(cfg.url)}")
        if "ACTIVE" not in status.upper():
            problems.append(f"status {status}")
        try:
            resolve_secret_ref(cfg.secret, "webhooks.secret")
        except ValueError as exc:
            problems.append(_first_line(exc))
        if problems:
            return Check("webhook", "fail", f"webhook {cfg.name!r}: " + "; ".join(problems),
                         "run `towerops webhooks register` again and export the secret's variable")
        tested = client.test_webhook(hook.webhook_id)
        if not tested.success:
            why = tested.error_message or f"answered {tested.response_status}"
            return Check("webhook", "fail", f"the tracking server cannot reach {redact_url(hook.url)}: {redact(why)}",
                         "start `towerops webhooks serve` there and let the tracking server reach it (firewall, "
                         "--allow-loopback-webhooks for http on a private network)")
        return Check("webhook", "ok", f"{cfg.name!r} -> {redact_url(hook.url)} registered, ACTIVE, reachable "
                     f"(test delivery answered {tested.response_status})")
    except Exception as exc:  # noqa: BLE001
        return Check("webhook", "fail", _first_line(exc), "check the tracking server supports webhooks (SQL backend, "
                     "`towerops server`)")


def run_checks(platform: PlatformFile | None = None) -> list[Check]:
    """Every check, each independent of the others' failures."""
    platform = platform or load_platform()
    checks = [check_config(platform)]
    try:
        uri = tracking_uri(platform).value
    except ValueError as exc:
        return checks + [Check("tracking server", "fail", _first_line(exc), "fix tracking.uri")]
    tracking = check_tracking(uri)
    checks.append(tracking)
    steps: list[Callable[[], Check]] = [
        lambda: check_schema(uri, platform) if tracking.status != "fail" else
        Check("schema", "skip", "the tracking server does not answer"),
        lambda: check_audit(uri),
        check_storage,
        lambda: check_webhook(uri, platform) if tracking.status != "fail" else
        Check("webhook", "skip", "the tracking server does not answer"),
    ]
    for step in steps:
        checks.append(step())
    return checks


def summary(checks: list[Any]) -> str:
    failed = [c.name for c in checks if c.status == "fail"]
    return f"{len(failed)} check(s) failed: {', '.join(failed)}" if failed else "all checks passed"
