"""Audit trail of stage changes, kept in a SQL database (PostgreSQL for teams; SQLite on
the embedded default). MLflow keeps no alias history, so this table is the history.

Every change is written inside `AuditLog.locked(model)`, a transaction holding a per-model
lock (`pg_advisory_xact_lock` on PostgreSQL, `BEGIN IMMEDIATE` on SQLite), so concurrent
promotions are serialised and no entry is lost.
"""

from __future__ import annotations

import getpass
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa

from ml.secrets import mask_dsn, resolve_secret_ref
from ml.settings import get_settings, secret_value

TABLE = "towerops_stage_audit"
_metadata = sa.MetaData()
audit_table = sa.Table(
    TABLE, _metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("model_name", sa.String(256), nullable=False, index=True),
    sa.Column("version", sa.String(32), nullable=False),
    sa.Column("semver", sa.String(32)),
    sa.Column("action", sa.String(32), nullable=False),       # register | promote | rollback | archive | refused
    sa.Column("from_stage", sa.String(32)),
    sa.Column("to_stage", sa.String(32)),
    sa.Column("previous_version", sa.String(32)),             # who held to_stage before
    sa.Column("actor", sa.String(256)),
    sa.Column("reason", sa.Text),
    sa.Column("trigger", sa.String(32)),                      # cli | mlflow_run | webhook | reconcile | api
    sa.Column("forced", sa.Boolean, default=False),
    sa.Column("gate_passed", sa.Boolean),
    sa.Column("gate_result", sa.Text),                        # JSON
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


def default_actor() -> str:
    try:
        return get_settings().actor or getpass.getuser()
    except Exception:  # noqa: BLE001
        return "unknown"


@dataclass
class AuditEntry:
    model_name: str
    version: str
    action: str
    to_stage: str | None = None
    from_stage: str | None = None
    previous_version: str | None = None
    semver: str | None = None
    actor: str = field(default_factory=default_actor)
    reason: str | None = None
    trigger: str = "api"
    forced: bool = False
    gate_passed: bool | None = None
    gate_result: dict | None = None
    created_at: datetime | None = None
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["created_at"] = self.created_at.isoformat() if self.created_at else None
        return d


class LocalAuditError(PermissionError):
    """A local SQLite audit file behind a remote tracking server: other hosts would keep another history."""


def audit_url(url: str | None = None) -> str:
    """`url`, else $TOWEROPS_AUDIT_DB_URL, else `audit.url` of the platform config (towerops.yaml),
    else the PostgreSQL tracking backend, else SQLite `towerops_audit.db` next to mlflow.db on the
    embedded default. Behind an HTTP tracking server the fallback is a local file in the platform
    config's folder, which `AuditLog.locked` refuses unless allowed (`audit.allow_local`):
    set `audit.url` to the team's PostgreSQL so every host shares one trail."""
    url = resolve_secret_ref(url or secret_value(get_settings().audit_db_url), "audit database URL")  # env:VAR works
    if not url:
        from ml.platform import configured_audit_url

        configured = configured_audit_url()
        url = configured.value if configured is not None else None
    if not url:
        from ml.platform import load_platform

        tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
        if tracking.startswith("postgresql"):
            url = tracking                                  # same PostgreSQL, own table
        elif tracking.startswith("sqlite:///"):             # embedded default: a file next to mlflow.db
            url = "sqlite:///" + str(Path(tracking[len("sqlite:///"):]).with_name("towerops_audit.db"))
        else:
            url = "sqlite:///" + str(load_platform().base_dir.resolve() / "towerops_audit.db")
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def local_audit_problem(url: str, tracking: str | None = None) -> str | None:
    """Why a SQLite audit trail would not be shared (the tracking server is remote), else None."""
    from ml.platform import audit_allow_local, is_remote_tracking

    tracking = tracking if tracking is not None else os.environ.get("MLFLOW_TRACKING_URI", "")
    if not (url.startswith("sqlite") and is_remote_tracking(tracking)):
        return None
    if audit_allow_local().value:
        return None
    from ml.secrets import redact_url

    return (f"the tracking server {redact_url(tracking)} is shared, but the audit trail is the local file "
            f"{url[len('sqlite:///'):]}: other hosts (the webhook receiver, reconcile, other laptops) would keep "
            "another history. Set audit.url in towerops.yaml (e.g. env:TOWEROPS_AUDIT_DB_URL, the team's "
            "PostgreSQL) or $TOWEROPS_AUDIT_DB_URL; to use a local file anyway (one person, one host) set "
            "audit.allow_local: true or pass --allow-local-audit")


class _HeldLock:
    """A held lock; `close()` releases it (once)."""

    def __init__(self, release: Any) -> None:
        self._release = release

    def close(self) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()


class AuditLog:
    """Append-only stage history with a per-model lock for writers."""

    def __init__(self, url: str | None = None) -> None:
        self.url = audit_url(url)
        self.engine = sa.create_engine(self.url, future=True, pool_pre_ping=True)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            @sa.event.listens_for(self.engine, "connect")
            def _no_autobegin(dbapi_conn, _record):  # let us issue BEGIN IMMEDIATE ourselves
                dbapi_conn.isolation_level = None

            @sa.event.listens_for(self.engine, "begin")
            def _begin_immediate(conn):
                conn.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            _metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.OperationalError as exc:
            safe = self.engine.url.render_as_string(hide_password=True)
            raise ConnectionError(f"audit database {safe} is not reachable: {mask_dsn(str(exc.orig))}") from None

    @contextmanager
    def locked(self, model_name: str) -> Iterator[sa.Connection]:
        """A transaction that holds the model's lock until commit."""
        from ml.settings import check_store_writable

        problem = local_audit_problem(self.url)
        if problem:  # checked before every write: no promotion against a trail other hosts do not see
            raise LocalAuditError(problem)
        check_store_writable()  # every registry write comes through here: a read-only mlflow.db is named
        check_store_writable(self.url, "audit database")
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"towerops:{model_name}"})
            yield conn

    def activation_lock(self, model_name: str) -> "_HeldLock":
        """The model's deployment lock (who moves the storage pointer), held until `.close()`.

        Why in the audit database: every process that promotes shares it, so it serialises the
        "still production?" check and the pointer write across hosts even when there is no
        `model_versions` database (whose own lock is the same PostgreSQL advisory key)."""
        key = f"towerops-deploy:{model_name}"
        if self.is_sqlite:
            import fcntl

            db = Path(self.engine.url.database or "towerops_audit.db")
            path = db.with_name(f"{db.name}.deploy-{model_name}.lock")
            handle = open(path, "a+")
            fcntl.flock(handle, fcntl.LOCK_EX)
            return _HeldLock(lambda: (fcntl.flock(handle, fcntl.LOCK_UN), handle.close()))
        conn = self.engine.connect()
        conn.execute(sa.text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": key})
        conn.commit()

        def release() -> None:
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": key})
                conn.commit()
            finally:
                conn.close()

        return _HeldLock(release)

    def record(self, conn: sa.Connection, entry: AuditEntry) -> AuditEntry:
        entry.created_at = entry.created_at or datetime.now(timezone.utc)
        values = {k: v for k, v in asdict(entry).items() if k != "id"}
        values["gate_result"] = json.dumps(entry.gate_result) if entry.gate_result is not None else None
        entry.id = conn.execute(audit_table.insert().values(**values)).inserted_primary_key[0]
        return entry

    def entries(self, model_name: str, limit: int | None = None, conn: sa.Connection | None = None,
                newest_first: bool = True) -> list[AuditEntry]:
        order = audit_table.c.id.desc() if newest_first else audit_table.c.id.asc()
        query = sa.select(audit_table).where(audit_table.c.model_name == model_name).order_by(order)
        if limit:
            query = query.limit(limit)
        if conn is None:
            with self.engine.connect() as c:
                rows = c.execute(query).mappings().all()
        else:
            rows = conn.execute(query).mappings().all()
        out = []
        for row in rows:
            d = dict(row)
            d["gate_result"] = json.loads(d["gate_result"]) if d.get("gate_result") else None
            out.append(AuditEntry(**d))
        return out

    def production_stack(self, model_name: str, conn: sa.Connection | None = None) -> list[str]:
        """Versions that held production, oldest first, with rolled-back ones popped:
        the top is the current holder, the one below it what a rollback returns to."""
        stack: list[str] = []
        for e in self.entries(model_name, conn=conn, newest_first=False):
            if e.to_stage != "production":
                continue
            if e.action == "promote":
                if not stack or stack[-1] != e.version:
                    stack.append(e.version)
            elif e.action == "rollback":
                if stack:
                    stack.pop()
                if not stack or stack[-1] != e.version:
                    stack.append(e.version)
        return stack
