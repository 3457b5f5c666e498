"""Batch inference: embeddings and top-K lists for every known user, published atomically.

Scoring: known users' embeddings were computed at export, so top-K for everyone is exact
brute force over the catalog in chunks of users: `faiss.knn` (blocked float32 sgemm with a
heap per user, no users x items matrix to sort) over the engine's scoring matrix, which is
the rank-reduced catalog when the towers allow it (`ml.inference.RankReduction`, same scores
to 2e-5); seen items are dropped from the top k + max-seen and rows are ordered by the
real-time engine's tie rule (`ml.inference.top_k_indices`). `backend="numpy"` does the same
with GEMM + row-wise argpartition. With `scoring="ann"` the bundle's faiss index answers
instead (exact scores on the items it visits; recall measured in `ml.ann`).

Outputs of one run form a *version* (e.g. `20261124T053000.123456Z-1a2b3c`):

    Parquet  <out>/versions/<version>/{user_embeddings, item_embeddings, recommendations}.parquet
             + manifest.json; written in a staging folder, renamed into versions/, then the
             `<out>/current` symlink and `<out>/CURRENT` file are switched with an atomic rename.
    Postgres tables <prefix>_{user_embeddings, item_embeddings, recommendations}_<version>
             (embedding float4[], or pgvector `vector(d)` where `CREATE EXTENSION vector` works;
             recommendations: user_id, items text[], scores float4[]), loaded with binary COPY
             and switched in the SAME transaction: views <prefix>_{user_embeddings,
             item_embeddings, recommendations} are re-pointed and <prefix>_batch_versions marks
             the version current. Readers of the views see the old version or the new one,
             never a mix; a failure anywhere rolls everything back. Versions beyond
             `keep_versions` are dropped afterwards (best effort, never blocking readers long).
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from ml.logs import get_logger

if TYPE_CHECKING:
    from ml.inference import RealtimeInferenceEngine

log = get_logger("inference")

TABLES = ("user_embeddings", "item_embeddings", "recommendations")
_IDENT = re.compile(r"^[a-z_][a-z0-9_]*$")


# ---------------------------------------------------------------------------- scoring
@dataclass
class ScoredChunk:
    """Top-K of a run of users: catalog rows and scores, best first (-1 / -inf pad short rows)."""

    user_rows: np.ndarray
    item_rows: np.ndarray
    scores: np.ndarray


BACKENDS = ("auto", "faiss", "numpy")


def _faiss_or_none() -> Any:
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss-cpu is a declared dependency
        return None
    return faiss


def score_users(engine: "RealtimeInferenceEngine", top_k: int = 10, chunk_size: int = 1024,
                exclude_seen: bool = True, user_rows: Sequence[int] | None = None,
                backend: str = "auto") -> Iterator[ScoredChunk]:
    """Top-K for known users (all by default), chunk by chunk; the engine's scoring mode decides exact/ann.

    Exact scoring runs on `backend`: "faiss" (`faiss.knn`: blocked sgemm with per-query
    heaps, so no users x items score matrix is sorted; seen items are filtered from the
    top k + max-seen-in-chunk), "numpy" (GEMM, -inf mask, row-wise argpartition) or "auto"
    (faiss when installed). Both are exact brute force over the same scoring matrix.
    """
    from ml.inference import parse_top_k, top_k_indices

    top_k = parse_top_k(top_k)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size={chunk_size} must be a positive number of users, e.g. 1024")
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not one of {', '.join(BACKENDS)}")
    faiss = _faiss_or_none() if backend in ("auto", "faiss") else None
    if backend == "faiss" and faiss is None:
        raise RuntimeError("backend='faiss' needs faiss-cpu (pip install faiss-cpu)")
    b = engine.bundle
    items = engine.scoring_matrix  # rank-reduced when the catalog allows it (same scores)
    n_items = len(items)
    k = min(top_k, n_items)
    rows_all = np.arange(len(b.user_ids)) if user_rows is None else np.asarray(user_rows, dtype=np.int64)
    for lo in range(0, len(rows_all), chunk_size):
        urows = rows_all[lo:lo + chunk_size]
        u = np.ascontiguousarray(b.user_embeddings[urows], dtype=np.float32)
        seen_r, seen_c = _seen_pairs(b, urows) if exclude_seen else (np.zeros(0, np.int64), np.zeros(0, np.int64))
        if engine.ann is not None:
            out_rows, out_scores = _ann_chunk(engine, u, k, seen_r, seen_c)
        elif faiss is not None:
            out_rows, out_scores = _faiss_exact_chunk(faiss, engine, u, k, seen_r, seen_c)
        else:
            s = engine.query(u) @ items.T
            if len(seen_r):
                s[seen_r, seen_c] = -np.inf
            top = top_k_indices(s, k)
            out_scores = np.take_along_axis(s, top, axis=1)
            out_rows = np.where(np.isfinite(out_scores), top, -1)
        yield ScoredChunk(urows, out_rows.astype(np.int64), out_scores.astype(np.float32))


def _seen_pairs(bundle: Any, urows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(chunk-local user index, item row) of every swipe of these users (CSR history)."""
    lo, hi = bundle.seen_indptr[urows], bundle.seen_indptr[urows + 1]
    counts = hi - lo
    if counts.sum() == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    local = np.repeat(np.arange(len(urows)), counts)
    idx = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi)]) if len(urows) else np.zeros(0, np.int64)
    return local, bundle.seen_items[idx].astype(np.int64)


def _faiss_exact_chunk(faiss: Any, engine: "RealtimeInferenceEngine", u: np.ndarray, k: int, seen_r: np.ndarray,
                      seen_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of a chunk with faiss.knn (blocked sgemm + heaps), seen items dropped."""
    items = np.ascontiguousarray(engine.scoring_matrix, dtype=np.float32)

    def search(q: np.ndarray, want: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = faiss.knn(q, items, want, metric=faiss.METRIC_INNER_PRODUCT)
        return rows, scores

    return _searched_top_k(engine, u, k, seen_r, seen_c, search)


def _ann_chunk(engine: "RealtimeInferenceEngine", u: np.ndarray, k: int, seen_r: np.ndarray,
               seen_c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k of a chunk from the ANN index (exact scores of the items it visits), seen items dropped."""
    return _searched_top_k(engine, u, k, seen_r, seen_c, engine.ann.search)


def _searched_top_k(engine: "RealtimeInferenceEngine", u: np.ndarray, k: int, seen_r: np.ndarray, seen_c: np.ndarray,
                    search: Any) -> tuple[np.ndarray, np.ndarray]:
    """Ask `search` for k + (most items any user of the chunk has seen), drop seen items, keep k.

    Rows are ordered like the real-time engine (score descending, then catalog row); a user
    for whom too few unseen items came back is answered by an exact scan instead.
    """
    from ml.inference import top_k_indices

    n_items = len(engine.item_matrix)
    n_seen = np.bincount(seen_r, minlength=len(u)) if len(seen_r) else np.zeros(len(u), np.int64)
    want = int(min(n_items, k + (n_seen.max() if len(n_seen) else 0)))
    rows, scores = search(np.ascontiguousarray(engine.query(u), dtype=np.float32), want)
    rows = rows.astype(np.int64)
    drop = rows < 0
    if len(seen_r):
        seen_code = np.unique(seen_r.astype(np.int64) * n_items + seen_c)
        drop |= np.isin(np.arange(len(u), dtype=np.int64)[:, None] * n_items + rows, seen_code)
    scores = np.where(drop, np.float32(-np.inf), scores.astype(np.float32))
    order = np.lexsort((np.where(drop, np.iinfo(np.int64).max, rows), -scores), axis=-1)[:, :k]
    out_rows = np.take_along_axis(rows, order, axis=1)
    out_scores = np.take_along_axis(scores, order, axis=1)
    if out_rows.shape[1] < k:  # fewer than k items in the catalog
        pad = k - out_rows.shape[1]
        out_rows = np.pad(out_rows, ((0, 0), (0, pad)), constant_values=-1)
        out_scores = np.pad(out_scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    unique_seen = np.array([len(np.unique(seen_c[a:b])) for a, b in
                            zip(*np.searchsorted(seen_r, [np.arange(len(u)), np.arange(len(u)) + 1]))]) \
        if len(seen_r) else np.zeros(len(u), np.int64)
    expected = np.minimum(k, n_items - unique_seen)
    found = np.isfinite(out_scores).sum(axis=1)
    for i in np.nonzero(found < expected)[0]:  # the search returned too few unseen items: exact scan
        full = engine.score(u[i])
        lo, hi = np.searchsorted(seen_r, [i, i + 1]) if len(seen_r) else (0, 0)
        full[seen_c[lo:hi]] = -np.inf
        top = top_k_indices(full, k)
        out_rows[i, :len(top)], out_scores[i, :len(top)] = top, full[top]
    return np.where(np.isfinite(out_scores), out_rows, -1), out_scores


# ---------------------------------------------------------------------------- parquet
def new_version() -> str:
    """A sortable, unique version label: UTC timestamp to the microsecond + 6 hex chars."""
    now = time.time_ns()
    return (time.strftime("%Y%m%dT%H%M%S", time.gmtime(now / 1e9)) + f".{now // 1000 % 1_000_000:06d}Z-"
            + uuid.uuid4().hex[:6])


def _embedding_table(ids: Sequence[str], emb: np.ndarray, id_name: str):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(emb, dtype=np.float32).reshape(-1), type=pa.float32())
    vectors = pa.FixedSizeListArray.from_arrays(flat, emb.shape[1])
    return pa.table({id_name: pa.array(list(ids), type=pa.string()), "embedding": vectors})


def _write_embeddings(path: Path, ids: Sequence[str], emb: np.ndarray, id_name: str, rows_per_group: int = 65536) -> None:
    import pyarrow.parquet as pq

    writer = None
    try:
        for lo in range(0, max(len(ids), 1), rows_per_group):
            table = _embedding_table(ids[lo:lo + rows_per_group], np.asarray(emb[lo:lo + rows_per_group]), id_name)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def _recommendation_table(user_ids: Sequence[str], item_ids: Sequence[str], chunk: ScoredChunk):
    import pyarrow as pa

    ids = np.asarray(item_ids, dtype=object)
    items, scores = [], []
    for r, s in zip(chunk.item_rows, chunk.scores):
        valid = r >= 0
        items.append(ids[r[valid]].tolist())
        scores.append(s[valid].tolist())
    return pa.table({
        "user_id": pa.array([user_ids[u] for u in chunk.user_rows.tolist()], type=pa.string()),
        "items": pa.array(items, type=pa.list_(pa.string())),
        "scores": pa.array(scores, type=pa.list_(pa.float32())),
    })


def _switch_current(out: Path, version: str) -> None:
    """Point <out>/current (symlink) and <out>/CURRENT (file) at versions/<version>, each by atomic rename."""
    tmp_link = out / f".current-{uuid.uuid4().hex[:8]}"
    os.symlink(Path("versions") / version, tmp_link)
    os.replace(tmp_link, out / "current")
    tmp_file = out / f".CURRENT-{uuid.uuid4().hex[:8]}"
    tmp_file.write_text(version + "\n")
    os.replace(tmp_file, out / "CURRENT")


def current_version(out_dir: str | Path) -> str | None:
    """The published Parquet version of an output folder, or None."""
    path = Path(out_dir) / "CURRENT"
    return path.read_text().strip() if path.exists() else None


# ---------------------------------------------------------------------------- postgres
class _ChunkReader(io.RawIOBase):
    """A read()-able stream over an iterator of bytes (psycopg2's copy_expert reads from it)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it = iter(chunks)
        self._buf = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buf) < size:
            try:
                self._buf += next(self._it)
            except StopIteration:
                break
        if size < 0:
            data, self._buf = self._buf, b""
        else:
            data, self._buf = self._buf[:size], self._buf[size:]
        return data


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
FLOAT4_OID, TEXT_OID = 700, 25


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


def publish_postgres(version_dir: str | Path, dsn: str, prefix: str = "towerops", schema: str = "public",
                     use_pgvector: bool | None = None, keep_versions: int = 2,
                     lock_timeout_s: float = 5.0, switch_retries: int = 3) -> PostgresPublish:
    """Load a Parquet version folder into versioned tables and switch the views to it, in one transaction."""
    import psycopg2
    from psycopg2 import sql

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
        raise ConnectionError(f"cannot connect to PostgreSQL for publishing ({str(exc).strip()}); "
                              "check the --dsn (postgresql://user:pass@host:5432/db)") from exc
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
        cur.copy_expert(sql.SQL(copy).format(table).as_string(conn), _ChunkReader(_embedding_copy_stream(ids, emb, vector)))
        cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(table, sql.Identifier(key)))
    table = q(target.tables["recommendations"])
    cur.execute(sql.SQL("CREATE TABLE {} (user_id text NOT NULL, items text[] NOT NULL, scores float4[] NOT NULL)")
                .format(table))
    recs = pq.read_table(vdir / "recommendations.parquet")
    cur.copy_expert(sql.SQL(copy).format(table).as_string(conn), _ChunkReader(_recommendation_copy_stream(recs)))
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


# ---------------------------------------------------------------------------- the job
@dataclass
class BatchResult:
    version: str
    out_dir: Path
    version_dir: Path
    n_users: int
    n_items: int
    top_k: int
    scoring: str
    scoring_s: float
    total_s: float
    users_per_min: float
    postgres: PostgresPublish | None = None

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, "version_dir": str(self.version_dir), "n_users": self.n_users,
                "n_items": self.n_items, "top_k": self.top_k, "scoring": self.scoring,
                "scoring_s": round(self.scoring_s, 3), "total_s": round(self.total_s, 3),
                "users_per_min": round(self.users_per_min, 1),
                "postgres": None if self.postgres is None else {"vector_type": self.postgres.vector_type,
                                                                "views": self.postgres.views,
                                                                "tables": self.postgres.tables}}


def run_batch(model_dir: str | Path, out_dir: str | Path, top_k: int = 10, chunk_size: int = 1024,
              exclude_seen: bool = True, scoring: str = "exact", dsn: str | None = None, table_prefix: str = "towerops",
              schema: str = "public", use_pgvector: bool | None = None, keep_versions: int = 2,
              model_label: str | None = None, version: str | None = None, lock_timeout_s: float = 5.0,
              switch_retries: int = 3) -> BatchResult:
    """Score every known user, write a Parquet version, switch `current`, then publish to PostgreSQL if asked."""
    from ml.inference import RealtimeInferenceEngine, parse_top_k

    top_k = parse_top_k(top_k)
    if keep_versions < 1:
        raise ValueError(f"keep_versions={keep_versions} must be at least 1 (the current version)")
    if dsn:
        _check_ident(table_prefix, "table prefix")
        _check_ident(schema, "schema")
    t_start = time.perf_counter()
    engine = RealtimeInferenceEngine(model_dir, mmap=True, scoring=scoring)
    b = engine.bundle
    version = version or new_version()
    out = Path(out_dir)
    (out / "versions").mkdir(parents=True, exist_ok=True)
    staging = out / f".staging-{version}"
    if staging.exists() or (out / "versions" / version).exists():
        raise ValueError(f"batch version {version} already exists in {out}; pick another version label")
    staging.mkdir()
    try:
        import pyarrow.parquet as pq

        t0 = time.perf_counter()
        writer = None
        n_scored = 0
        try:
            for chunk in score_users(engine, top_k, chunk_size, exclude_seen):
                table = _recommendation_table(b.user_ids, b.item_ids, chunk)
                if writer is None:
                    writer = pq.ParquetWriter(staging / "recommendations.parquet", table.schema, compression="zstd")
                writer.write_table(table)
                n_scored += len(chunk.user_rows)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:  # no users at all: still an empty, well-formed file
            import pyarrow as pa

            pq.write_table(pa.table({"user_id": pa.array([], pa.string()), "items": pa.array([], pa.list_(pa.string())),
                                     "scores": pa.array([], pa.list_(pa.float32()))}), staging / "recommendations.parquet")
        scoring_s = time.perf_counter() - t0
        _write_embeddings(staging / "user_embeddings.parquet", b.user_ids, b.user_embeddings, "user_id")
        _write_embeddings(staging / "item_embeddings.parquet", b.item_ids, engine.item_matrix, "item_id")
        manifest = {
            "version": version, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "created_at_ns": time.time_ns(),
            "model": model_label or str(Path(model_dir).resolve()), "n_users": n_scored, "n_items": len(b.item_ids),
            "embedding_dim": b.embedding_dim, "top_k": top_k, "exclude_seen": exclude_seen, "scoring": engine.scoring,
            "feature_schema_hash": b.metadata.get("feature_schema_hash"), "scoring_s": round(scoring_s, 3),
            "files": {t: f"{t}.parquet" for t in TABLES},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        version_dir = out / "versions" / version
        os.replace(staging, version_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish = None
    if dsn:
        try:
            publish = publish_postgres(version_dir, dsn, prefix=table_prefix, schema=schema, use_pgvector=use_pgvector,
                                       keep_versions=keep_versions, lock_timeout_s=lock_timeout_s,
                                       switch_retries=switch_retries)
        except BaseException:  # not published anywhere: do not leave the version behind either
            shutil.rmtree(version_dir, ignore_errors=True)
            raise
    _switch_current(out, version)
    _prune_parquet_versions(out, keep_versions)
    total = time.perf_counter() - t_start
    upm = n_scored / scoring_s * 60 if scoring_s > 0 else float("inf")
    log.info("batch %s: %d users x %d items, top-%d (%s) scored in %.1fs (%.0f users/min), total %.1fs -> %s",
             version, n_scored, len(b.item_ids), top_k, engine.scoring, scoring_s, upm, total, version_dir)
    return BatchResult(version, out, version_dir, n_scored, len(b.item_ids), top_k, engine.scoring, scoring_s, total,
                       upm, publish)


def _created_ns(version_dir: Path) -> int:
    try:
        return int(json.loads((version_dir / "manifest.json").read_text())["created_at_ns"])
    except (OSError, ValueError, KeyError):
        return version_dir.stat().st_mtime_ns


def _prune_parquet_versions(out: Path, keep: int) -> None:
    current = current_version(out)
    versions = sorted((p for p in (out / "versions").iterdir() if p.is_dir()), key=_created_ns, reverse=True)
    kept = 0
    for p in versions:
        if p.name == current or kept < keep - 1:
            kept += p.name != current
            continue
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------- spark
def score_with_spark(spark: Any, model_uri: str, users: Any, top_k: int = 10, env_manager: str = "local") -> Any:
    """The same batch scoring on Spark: `mlflow.pyfunc.spark_udf` over the logged recommender.

    `users` is a Spark DataFrame with a `user_id` column (optionally top_k, exclude_seen);
    returns it with `recommendations: struct<items: array<string>, scores: array<double>>`.
    """
    import mlflow.pyfunc
    from pyspark.sql.functions import col, struct

    from ml.inference import parse_top_k

    top_k = parse_top_k(top_k)
    if "user_id" not in users.columns:
        raise ValueError(f"users DataFrame needs a user_id column; it has {users.columns}")
    udf = mlflow.pyfunc.spark_udf(spark, model_uri, result_type="items array<string>, scores array<double>",
                                  env_manager=env_manager, params={"top_k": top_k, "output": "lists"})
    inputs = [c for c in ("user_id", "top_k", "exclude_seen") if c in users.columns]
    return users.withColumn("recommendations", udf(struct(*[col(c) for c in inputs])))


def run_batch_tracked(model_dir: str | Path, out_dir: str | Path, model_uri: str | None = None,
                      **kwargs: Any) -> BatchResult:
    """`run_batch` inside an MLflow run (joins the one `mlflow run` made): params, throughput, manifest."""
    import mlflow

    from ml.tracking import start_run

    with start_run(run_name="batch_infer", tags={"towerops.step": "batch_infer"}):
        result = run_batch(model_dir, out_dir, model_label=model_uri, **kwargs)
        mlflow.log_params({"model": model_uri or str(model_dir), "top_k": result.top_k, "scoring": result.scoring,
                           "chunk_size": kwargs.get("chunk_size", 1024), "out_dir": str(out_dir),
                           "postgres": bool(result.postgres)})
        mlflow.log_metrics({"n_users": result.n_users, "n_items": result.n_items, "scoring_s": result.scoring_s,
                            "total_s": result.total_s, "users_per_min": result.users_per_min})
        mlflow.set_tag("towerops.batch_version", result.version)
        mlflow.log_artifact(str(result.version_dir / "manifest.json"), "batch")
    return result
