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
        return os.environ.get("TOWEROPS_ACTOR") or getpass.getuser()
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


def audit_url(url: str | None = None) -> str:
    """$TOWEROPS_AUDIT_DB_URL, else the PostgreSQL tracking backend, else SQLite `towerops_audit.db`
    (next to mlflow.db on the embedded default). Behind an HTTP tracking server, set
    TOWEROPS_AUDIT_DB_URL to the team's PostgreSQL so the trail is shared."""
    url = url or os.environ.get("TOWEROPS_AUDIT_DB_URL")
    if not url:
        tracking = os.environ.get("MLFLOW_TRACKING_URI", "")
        if tracking.startswith("postgresql"):
            url = tracking                                  # same PostgreSQL, own table
        elif tracking.startswith("sqlite:///"):             # embedded default: a file next to mlflow.db
            url = "sqlite:///" + str(Path(tracking[len("sqlite:///"):]).with_name("towerops_audit.db"))
        else:
            url = "sqlite:///towerops_audit.db"
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


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
            raise ConnectionError(f"audit database {safe} is not reachable: {exc.orig}") from None

    @contextmanager
    def locked(self, model_name: str) -> Iterator[sa.Connection]:
        """A transaction that holds the model's lock until commit."""
        with self.engine.begin() as conn:
            if not self.is_sqlite:
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"towerops:{model_name}"})
            yield conn

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
