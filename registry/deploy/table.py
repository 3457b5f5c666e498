"""The `model_versions` table: one row per deployed version, the production row switched in one transaction."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from registry.deploy.config import _TABLE_RE, redact_dsn
from registry.deploy.storage.base import (
    StorageError,
)

# ------------------------------------------------------------------------ model_versions table
SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS {table} (
    id               BIGSERIAL PRIMARY KEY,
    model_name       TEXT        NOT NULL,
    version          TEXT        NOT NULL,
    registry_version TEXT,
    run_id           TEXT,
    storage_backend  TEXT,
    storage_bucket   TEXT,
    storage_path     TEXT        NOT NULL,
    manifest         JSONB       NOT NULL,
    metrics          JSONB       NOT NULL DEFAULT '{{}}'::jsonb,
    description      TEXT,
    is_active        BOOLEAN     NOT NULL DEFAULT FALSE,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    activated_at     TIMESTAMPTZ,
    UNIQUE (model_name, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS {index} ON {table} (model_name) WHERE is_active;
"""


class ModelVersionsTable:
    """The `model_versions` table (psycopg2): one row per deployed version, at most one
    active row per model (partial unique index), switched in one transaction."""

    def __init__(self, dsn: str, table: str = "model_versions") -> None:
        if not _TABLE_RE.match(table):
            raise ValueError(f"table name {table!r} is not valid ([schema.]name)")
        self.dsn = dsn
        self.table = table
        self.safe_dsn = redact_dsn(dsn)

    def _ident(self) -> Any:
        from psycopg2 import sql

        return sql.Identifier(*self.table.split("."))

    def connect(self) -> Any:
        import psycopg2

        try:
            return psycopg2.connect(self.dsn, connect_timeout=10, application_name="towerops-deploy")
        except psycopg2.OperationalError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConnectionError(f"the model_versions database {self.safe_dsn} is not reachable ({first}); set "
                                  "SUPABASE_DB_URL or TOWEROPS_DEPLOY_DSN to the Supabase database URL, or unset "
                                  "both to deploy without the table") from None

    def ensure_schema(self) -> None:
        from psycopg2 import sql

        index = sql.Identifier(self.table.split(".")[-1] + "_one_active")
        conn = self.connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"towerops-schema:{self.table}",))
                cur.execute(sql.SQL(SCHEMA_SQL).format(table=self._ident(), index=index))
        finally:
            conn.close()

    def lock(self, model_name: str) -> Any:
        """A connection holding the model's deployment lock (session advisory lock) until closed."""
        conn = self.connect()
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(hashtext(%s))", (f"towerops-deploy:{model_name}",))
        return conn

    _COLUMNS = ("model_name", "version", "registry_version", "run_id", "storage_backend", "storage_bucket",
                "storage_path", "manifest", "metrics", "description")

    def _upsert(self, cur: Any, row: Mapping[str, Any]) -> None:
        from psycopg2 import sql
        from psycopg2.extras import Json

        values = [Json(row[c]) if c in ("manifest", "metrics") else row.get(c) for c in self._COLUMNS]
        updates = sql.SQL(", ").join(sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(c))
                                     for c in self._COLUMNS[2:])
        cur.execute(sql.SQL("INSERT INTO {t} ({cols}) VALUES ({vals}) ON CONFLICT (model_name, version) "
                            "DO UPDATE SET {updates}").format(
            t=self._ident(), cols=sql.SQL(", ").join(map(sql.Identifier, self._COLUMNS)),
            vals=sql.SQL(", ").join(sql.Placeholder() * len(self._COLUMNS)), updates=updates), values)

    def record(self, row: Mapping[str, Any]) -> None:
        """Insert/update a version's row without activating it."""
        conn = self.connect()
        try:
            with conn, conn.cursor() as cur:
                self._upsert(cur, row)
        finally:
            conn.close()

    def activate(self, row: Mapping[str, Any]) -> None:
        """In one transaction: upsert the row, deactivate the model's other rows, activate it."""
        from psycopg2 import sql

        conn = self.connect()
        try:
            with conn, conn.cursor() as cur:
                self._upsert(cur, row)
                cur.execute(sql.SQL("UPDATE {t} SET is_active = FALSE WHERE model_name = %s AND is_active "
                                    "AND version <> %s").format(t=self._ident()), (row["model_name"], row["version"]))
                cur.execute(sql.SQL("UPDATE {t} SET is_active = TRUE, activated_at = now() WHERE model_name = %s "
                                    "AND version = %s").format(t=self._ident()), (row["model_name"], row["version"]))
        finally:
            conn.close()

    def active(self, model_name: str) -> dict | None:
        rows = self.rows(model_name, only_active=True)
        return rows[0] if rows else None

    def rows(self, model_name: str, only_active: bool = False) -> list[dict]:
        from psycopg2 import sql
        from psycopg2.extras import RealDictCursor

        conn = self.connect()
        try:
            with conn, conn.cursor(cursor_factory=RealDictCursor) as cur:
                cur.execute(sql.SQL("SELECT * FROM {t} WHERE model_name = %s {active} ORDER BY id").format(
                    t=self._ident(), active=sql.SQL("AND is_active" if only_active else "")), (model_name,))
                return [dict(r) for r in cur.fetchall()]
        finally:
            conn.close()

    def delete_versions(self, model_name: str, versions: Sequence[str]) -> None:
        from psycopg2 import sql

        if not versions:
            return
        conn = self.connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(sql.SQL("DELETE FROM {t} WHERE model_name = %s AND version = ANY(%s) AND NOT is_active")
                            .format(t=self._ident()), (model_name, list(versions)))
        finally:
            conn.close()


class DeployDatabaseError(StorageError):
    """Writing the model_versions table failed (the pointer was put back)."""
