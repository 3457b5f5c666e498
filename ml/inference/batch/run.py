"""Batch inference: embeddings and top-K lists for every known user, published atomically.

Scoring: known users' embeddings were computed at export, so top-K for everyone is exact
brute force over the catalog in chunks of users: `faiss.knn` (blocked float32 sgemm with a
heap per user, no users x items matrix to sort) over the engine's scoring matrix, which is
the rank-reduced catalog when the towers allow it (`ml.inference.scoring.RankReduction`, same scores
to 2e-5); seen items are dropped from the top k + max-seen and rows are ordered by the
real-time engine's tie rule (`ml.inference.scoring.top_k_indices`). `backend="numpy"` does the same
with GEMM + row-wise argpartition. With `scoring="ann"` the bundle's faiss index answers
instead (exact scores on the items it visits; recall measured in `ml.inference.ann`).

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

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.logs import get_logger

if TYPE_CHECKING:
    pass
from ml.inference.batch.parquet import _prune_parquet_versions, _recommendation_table, _switch_current, _write_embeddings, new_version
from ml.inference.batch.postgres import TABLES, PostgresPublish, _check_ident, publish_postgres
from ml.inference.batch.scoring import score_users

log = get_logger("inference")



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
    from ml.inference.engine import RealtimeInferenceEngine, parse_top_k
    from ml.secrets import resolve_secret_ref

    top_k = parse_top_k(top_k)
    dsn = resolve_secret_ref(dsn, "--dsn")  # env:VAR: read now, so a missing variable fails before any scoring
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
