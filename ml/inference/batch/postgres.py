"""Publishing a batch version to PostgreSQL: binary COPY into versioned tables and views switched in one transaction."""

from __future__ import annotations

import io
import json
import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from ml.logs import get_logger

if TYPE_CHECKING:
    pass

log = get_logger("inference")

FLOAT4_OID, TEXT_OID = 700, 25  # PostgreSQL type oids in binary COPY arrays
TABLES = ("user_embeddings", "item_embeddings", "recommendations")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")
COPY_READ_SIZE = 1 << 20  # bytes psycopg2 reads from the COPY stream at a time (its default, 8 KiB, is slow)


# ---------------------------------------------------------------------------- postgres
class _ChunkReader(io.RawIOBase):
    """A read()-able stream over an iterator of bytes (psycopg2's copy_expert reads from it)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""
        self._pos = 0  # read offset into _buf: slicing the rest off on every read would copy a chunk per read

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            data = self._buf[self._pos:] + b"".join(self._it)
            self._buf, self._pos = b"", 0
            return data
        while len(self._buf) - self._pos < size:
            try:
                chunk = next(self._it)
            except StopIteration:
                break
            self._buf, self._pos = self._buf[self._pos:] + chunk, 0  # the rest is < size: linear overall
        data = self._buf[self._pos:self._pos + size]
        self._pos += len(data)
        return data


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)


def _text_field(value: str) -> bytes:
    data = value.encode("utf-8")
    return struct.pack(">i", len(data)) + data


def _float4_array_fields(mat: np.ndarray) -> list[bytes]:
    """Binary COPY fields of float4[] rows (one per matrix row), built with numpy."""
    m, d = mat.shape
    header = struct.pack(">iiiiii", 20 + 8 * d, 1, 0, FLOAT4_OID, d, 1)  # field length, ndim, flags, oid, dim, lbound
    body = np.empty((m, d), dtype=[("len", ">i4"), ("val", ">f4")])
    body["len"] = 4
    body["val"] = mat
    raw = body.tobytes()
    stride = 8 * d
    return [header + raw[i * stride:(i + 1) * stride] for i in range(m)]


def _vector_fields(mat: np.ndarray) -> list[bytes]:
    """Binary COPY fields of pgvector `vector` rows: int16 dim, int16 0, float4 big-endian values."""
    m, d = mat.shape
    header = struct.pack(">ihh", 4 + 4 * d, d, 0)
    raw = np.ascontiguousarray(mat, dtype=">f4").tobytes()
    stride = 4 * d
    return [header + raw[i * stride:(i + 1) * stride] for i in range(m)]


def _text_array_field(values: Sequence[str]) -> bytes:
    parts = [_text_field(v) for v in values]
    body = struct.pack(">iiiii", 1, 0, TEXT_OID, len(values), 1) if values else struct.pack(">iii", 0, 0, TEXT_OID)
    payload = body + b"".join(parts)
    return struct.pack(">i", len(payload)) + payload


def _float4_list_field(values: Sequence[float]) -> bytes:
    if not len(values):
        payload = struct.pack(">iii", 0, 0, FLOAT4_OID)
    else:
        body = np.empty(len(values), dtype=[("len", ">i4"), ("val", ">f4")])
        body["len"] = 4
        body["val"] = values
        payload = struct.pack(">iiiii", 1, 0, FLOAT4_OID, len(values), 1) + body.tobytes()
    return struct.pack(">i", len(payload)) + payload


def _embedding_copy_stream(ids: Sequence[str], emb: np.ndarray, vector: bool, rows_per_chunk: int = 4096) -> Iterator[bytes]:
    yield _COPY_HEADER
    two = struct.pack(">h", 2)
    for lo in range(0, len(ids), rows_per_chunk):
        block = np.asarray(emb[lo:lo + rows_per_chunk], dtype=np.float32)
        fields = _vector_fields(block) if vector else _float4_array_fields(block)
        yield b"".join(two + _text_field(i) + f for i, f in zip(ids[lo:lo + rows_per_chunk], fields))
    yield _COPY_TRAILER


def _recommendation_copy_stream(table: Any, rows_per_chunk: int = 4096) -> Iterator[bytes]:
    yield _COPY_HEADER
    three = struct.pack(">h", 3)
    for batch in table.to_batches(rows_per_chunk):
        users = batch.column("user_id").to_pylist()
        items = batch.column("items").to_pylist()
        scores = batch.column("scores").to_pylist()
        yield b"".join(three + _text_field(u) + _text_array_field(i) + _float4_list_field(s)
                       for u, i, s in zip(users, items, scores))
    yield _COPY_TRAILER


def _check_ident(value: str, what: str) -> str:
    if not _IDENT.match(value) or len(value) > 40:
        raise ValueError(f"{what}={value!r} must be a lowercase SQL identifier (letters, digits, _; at most 40 "
                         "characters), e.g. towerops")
    return value


def _pgvector_available(cur: Any) -> bool:
    """True when type `vector` exists or `CREATE EXTENSION vector` succeeds (inside a savepoint)."""
    cur.execute("SELECT to_regtype('vector') IS NOT NULL")
    if cur.fetchone()[0]:
        return True
    cur.execute("SAVEPOINT towerops_vector")
    try:
        cur.execute("CREATE EXTENSION IF NOT EXISTS vector")
        cur.execute("RELEASE SAVEPOINT towerops_vector")
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means: no pgvector here
        cur.execute("ROLLBACK TO SAVEPOINT towerops_vector")
        log.info("pgvector unavailable (%s); embeddings go to float4[] columns", str(exc).splitlines()[0])
        return False


class PublishLockTimeout(TimeoutError):
    """The views stayed locked by other sessions; nothing was published."""


@dataclass
class PostgresPublish:
    version: str
    schema: str
    prefix: str
    tables: dict[str, str]
    views: dict[str, str]
    vector_type: str
    dropped_versions: list[str] = field(default_factory=list)


@dataclass
class _Target:
    """Names of one publish: schema, prefix, versioned tables, views, registry."""

    schema: str
    prefix: str
    version: str
    tables: dict[str, str]
    views: dict[str, str]
    registry: str

    def ident(self, name: str) -> Any:
        from psycopg2 import sql

        return sql.Identifier(self.schema, name)


def _password(dsn: str) -> str | None:
    from psycopg2.extensions import parse_dsn

    try:
        return parse_dsn(dsn).get("password")
    except Exception:  # noqa: BLE001 - a malformed DSN: psycopg2's own error says why
        return None


def publish_postgres(version_dir: str | Path, dsn: str, prefix: str = "towerops", schema: str = "public",
                     use_pgvector: bool | None = None, keep_versions: int = 2,
                     lock_timeout_s: float = 5.0, switch_retries: int = 3) -> PostgresPublish:
    """Load a Parquet version folder into versioned tables and switch the views to it, in one transaction.

    `dsn` may be `env:VAR` (read from the environment now)."""
    import psycopg2
    from psycopg2 import sql

    from ml.secrets import mask_dsn, resolve_secret_ref

    dsn = resolve_secret_ref(dsn, "--dsn") or ""
    vdir = Path(version_dir)
    manifest = json.loads((vdir / "manifest.json").read_text())
    version = manifest["version"]
    prefix, schema = _check_ident(prefix, "table prefix"), _check_ident(schema, "schema")
    suffix = re.sub(r"[^a-z0-9]", "_", version.lower())
    target = _Target(schema, prefix, version, {t: f"{prefix}_{t}_{suffix}" for t in TABLES},
                     {t: f"{prefix}_{t}" for t in TABLES}, f"{prefix}_batch_versions")
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10, application_name="towerops-batch")
    except psycopg2.OperationalError as exc:
        raise ConnectionError(f"cannot connect to PostgreSQL for publishing, at {mask_dsn(dsn)} "
                              f"({mask_dsn(' '.join(str(exc).split()), _password(dsn))}); "
                              "check the --dsn (postgresql://user@host:5432/db, or env:VAR naming an environment "
                              "variable that holds it)") from None
    t0 = time.perf_counter()
    try:
        try:
            with conn:  # one transaction: commit on success, rollback on any error
                with conn.cursor() as cur:
                    cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
                    vector = _pgvector_available(cur) if use_pgvector is not False else False
                    if use_pgvector and not vector:
                        raise ValueError("use_pgvector=True but the `vector` extension cannot be created in this "
                                         "database; install pgvector or pass use_pgvector=None/False (float4[])")
                    _load_tables(conn, cur, target, vdir, int(manifest["embedding_dim"]), vector)
                    _switch_views(cur, target, manifest, vector, lock_timeout_s, switch_retries)
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConnectionError(f"lost the PostgreSQL connection while publishing batch {version} ({reason}); "
                                  "the transaction rolled back and nothing was published: run the batch again") from exc
        vector_type = "vector" if vector else "float4[]"
        log.info("published batch %s to PostgreSQL %s.%s_* (%s) in %.1fs", version, schema, prefix, vector_type,
                 time.perf_counter() - t0)
        dropped = _drop_old_versions(conn, schema, prefix, target.registry, keep_versions, lock_timeout_s)
    finally:
        conn.close()
    return PostgresPublish(version, schema, prefix, target.tables, target.views, vector_type, dropped)


def _load_tables(conn: Any, cur: Any, target: _Target, vdir: Path, dim: int, vector: bool) -> None:
    """Create the registry (once) and this version's tables; binary COPY from the Parquet files."""
    import pyarrow.parquet as pq
    from psycopg2 import sql

    q = target.ident
    emb_type = sql.SQL(f"vector({dim})") if vector else sql.SQL("float4[]")
    cur.execute(sql.SQL(
        "CREATE TABLE IF NOT EXISTS {} (version text PRIMARY KEY, created_at timestamptz NOT NULL, "
        "published_at timestamptz NOT NULL DEFAULT now(), model text, n_users integer, n_items integer, "
        "top_k integer, embedding_dim integer, vector_type text, is_current boolean NOT NULL DEFAULT false)"
    ).format(q(target.registry)))
    copy = "COPY {} FROM STDIN WITH (FORMAT binary)"
    for t, key in (("user_embeddings", "user_id"), ("item_embeddings", "item_id")):
        table = q(target.tables[t])
        cur.execute(sql.SQL("CREATE TABLE {} ({} text NOT NULL, embedding {} NOT NULL)").format(
            table, sql.Identifier(key), emb_type))
        pf = pq.read_table(vdir / f"{t}.parquet")
        ids = pf.column(key).to_pylist()
        flat = pf.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        emb = np.asarray(flat, dtype=np.float32).reshape(len(ids), dim)
        cur.copy_expert(sql.SQL(copy).format(table).as_string(conn), _ChunkReader(_embedding_copy_stream(ids, emb, vector)),
                        size=COPY_READ_SIZE)
        cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(table, sql.Identifier(key)))
    table = q(target.tables["recommendations"])
    cur.execute(sql.SQL("CREATE TABLE {} (user_id text NOT NULL, items text[] NOT NULL, scores float4[] NOT NULL)")
                .format(table))
    recs = pq.read_table(vdir / "recommendations.parquet")
    cur.copy_expert(sql.SQL(copy).format(table).as_string(conn), _ChunkReader(_recommendation_copy_stream(recs)),
                    size=COPY_READ_SIZE)
    cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (user_id)").format(table))


def _switch_views(cur: Any, target: _Target, manifest: dict, vector: bool, lock_timeout_s: float,
                  switch_retries: int) -> None:
    """Serialise publishers, mark the version current, re-point the views (inside the caller's transaction).

    Re-pointing a view needs an exclusive lock, which waits for readers' open transactions
    (and new readers queue behind it), so each try is bounded by lock_timeout and retried.
    """
    import psycopg2
    from psycopg2 import sql

    q = target.ident
    for attempt in range(switch_retries + 1):
        cur.execute("SAVEPOINT towerops_switch")
        cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{int(lock_timeout_s * 1000)}ms",))
        try:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{target.schema}.{target.prefix}",))
            cur.execute(sql.SQL("UPDATE {} SET is_current = false WHERE is_current").format(q(target.registry)))
            cur.execute(sql.SQL(
                "INSERT INTO {} (version, created_at, model, n_users, n_items, top_k, embedding_dim, vector_type, "
                "is_current) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, true)").format(q(target.registry)),
                (target.version, manifest["created_at"], manifest.get("model"), manifest["n_users"],
                 manifest["n_items"], manifest["top_k"], int(manifest["embedding_dim"]),
                 "vector" if vector else "float4[]"))
            for t in TABLES:
                _point_view(cur, q(target.views[t]), q(target.tables[t]))
            cur.execute("RELEASE SAVEPOINT towerops_switch")
            return
        except psycopg2.errors.LockNotAvailable:
            cur.execute("ROLLBACK TO SAVEPOINT towerops_switch")
            if attempt == switch_retries:
                raise PublishLockTimeout(
                    f"could not switch {target.schema}.{target.prefix}_* views to batch {target.version}: other "
                    f"sessions kept them locked through {switch_retries + 1} tries of {lock_timeout_s:g}s "
                    "(long-running transactions reading the views?). Nothing was published; end those "
                    "transactions (pg_stat_activity) and run the batch again.") from None
            log.warning("views %s.%s_* busy; retrying the switch (%d/%d)", target.schema, target.prefix, attempt + 1,
                        switch_retries)
            time.sleep(min(2.0, 0.2 * (attempt + 1)))


def _point_view(cur: Any, view: Any, table: Any) -> None:
    import psycopg2
    from psycopg2 import sql

    cur.execute("SAVEPOINT towerops_view")
    try:
        cur.execute(sql.SQL("CREATE OR REPLACE VIEW {} AS SELECT * FROM {}").format(view, table))
        cur.execute("RELEASE SAVEPOINT towerops_view")
    except psycopg2.errors.LockNotAvailable:
        raise
    except psycopg2.Error:  # column types changed (float4[] <-> vector): recreate the view
        cur.execute("ROLLBACK TO SAVEPOINT towerops_view")
        cur.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(view))
        cur.execute(sql.SQL("CREATE VIEW {} AS SELECT * FROM {}").format(view, table))


def _drop_old_versions(conn: Any, schema: str, prefix: str, registry: str, keep: int, lock_timeout_s: float) -> list[str]:
    """Drop tables of versions beyond the newest `keep` (best effort; logged, never raised)."""
    from psycopg2 import sql

    dropped: list[str] = []
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT version FROM {} WHERE NOT is_current ORDER BY published_at DESC, version DESC")
                        .format(sql.Identifier(schema, registry)))
            old = [r[0] for r in cur.fetchall()][max(0, keep - 1):]
        for version in old:
            suffix = re.sub(r"[^a-z0-9]", "_", version.lower())
            with conn, conn.cursor() as cur:
                cur.execute("SET LOCAL lock_timeout = %s", (f"{int(lock_timeout_s * 1000)}ms",))
                for t in TABLES:
                    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, f"{prefix}_{t}_{suffix}")))
                cur.execute(sql.SQL("DELETE FROM {} WHERE version = %s").format(sql.Identifier(schema, registry)), (version,))
            dropped.append(version)
    except Exception as exc:  # noqa: BLE001 - old versions stay; the next publish retries
        log.warning("could not drop old batch versions in %s.%s_*: %s", schema, prefix, exc)
    return dropped
