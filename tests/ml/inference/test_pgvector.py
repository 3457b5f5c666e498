"""The pgvector path of batch publishing, whatever the server.

Embeddings go to PostgreSQL by binary COPY; with pgvector the field is pgvector's own binary
format, written by hand in numpy (`_vector_fields`, fast for millions of rows). That format
is checked here against the `pgvector` Python package's encoder and decoder on every
machine. Where the server has the `vector` extension, a real publish loads and reads back a
`vector(d)` column bit for bit; where it hasn't (the PostgreSQL 15 of these machines has no
pgvector package), the publish falls back to float4[] and `use_pgvector=True` refuses with the
fix. The test output names the path that ran (a warning in the summary and a junit property).
"""

from __future__ import annotations

import json
import struct
import warnings

import numpy as np
import psycopg2
import pytest

from ml.inference.batch.postgres import _embedding_copy_stream, _vector_fields, publish_postgres


def _edge_matrix() -> np.ndarray:
    rng = np.random.default_rng(0)
    mat = rng.standard_normal((7, 33)).astype(np.float32)
    mat[0, :6] = [0.0, -0.0, 1e-45, -3.4e38, 3.4e38, 1.0 / 3.0]   # signed zero, subnormal, extremes, rounding
    mat[1] = 0.0
    return mat


def test_vector_fields_are_pgvectors_binary_format() -> None:
    from pgvector import Vector

    mat = _edge_matrix()
    fields = _vector_fields(mat)
    assert len(fields) == len(mat)
    for row, field in zip(mat, fields):
        (length,) = struct.unpack(">i", field[:4])
        assert length == len(field) - 4 == 4 + 4 * mat.shape[1]
        assert field[4:] == Vector(row).to_binary()              # byte for byte what pgvector sends
        back = Vector.from_binary(field[4:]).to_numpy()
        assert back.tobytes() == row.tobytes()                   # bit-exact round trip, -0.0 included


def test_copy_stream_frames_each_row_with_its_id() -> None:
    from pgvector import Vector

    mat = _edge_matrix()[:3]
    ids = ["u1", "ü2", "u3"]
    stream = b"".join(_embedding_copy_stream(ids, mat, vector=True, rows_per_chunk=2))
    assert stream.startswith(b"PGCOPY\n\xff\r\n\x00") and stream.endswith(struct.pack(">h", -1))
    body = stream[19:-2]
    expected = b"".join(struct.pack(">h", 2) + struct.pack(">i", len(i.encode())) + i.encode()
                        + struct.pack(">i", 4 + 4 * mat.shape[1]) + Vector(r).to_binary() for i, r in zip(ids, mat))
    assert body == expected


def _version_dir(tmp_path, dim: int = 8):
    """A batch version folder as `run_batch` writes it, with hand-made embeddings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ml.inference.batch.parquet import _embedding_table

    rng = np.random.default_rng(1)
    users, items = rng.standard_normal((4, dim)).astype(np.float32), rng.standard_normal((5, dim)).astype(np.float32)
    users[0, 0] = -0.0
    vdir = tmp_path / "v1"
    vdir.mkdir()
    user_ids, item_ids = [f"u{i}" for i in range(4)], [f"i{i}" for i in range(5)]
    pq.write_table(_embedding_table(user_ids, users, "user_id"), vdir / "user_embeddings.parquet")
    pq.write_table(_embedding_table(item_ids, items, "item_id"), vdir / "item_embeddings.parquet")
    pq.write_table(pa.table({"user_id": pa.array(user_ids), "items": pa.array([item_ids[:2]] * 4, pa.list_(pa.string())),
                             "scores": pa.array([[0.5, 0.25]] * 4, pa.list_(pa.float32()))}),
                   vdir / "recommendations.parquet")
    (vdir / "manifest.json").write_text(json.dumps({
        "version": "20260101T000000.000000Z-abcdef", "created_at": "2026-01-01T00:00:00Z", "model": "hand-made",
        "n_users": 4, "n_items": 5, "top_k": 2, "embedding_dim": dim}))
    return vdir, dict(zip(user_ids, users)), dict(zip(item_ids, items))


def _server_has_pgvector(dsn: str) -> bool:
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_available_extensions WHERE name = 'vector'")
            return cur.fetchone()[0] > 0
    finally:
        conn.close()


@pytest.mark.integration
def test_publish_path_for_this_server(pg_dsn, tmp_path, record_property) -> None:
    vdir, users, items = _version_dir(tmp_path)
    if _server_has_pgvector(pg_dsn):
        path = "server: vector(d) columns loaded by binary COPY and read back bit for bit"
        res = publish_postgres(vdir, pg_dsn, use_pgvector=True)
        assert res.vector_type == "vector"
        conn = psycopg2.connect(pg_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                            "WHERE attrelid = %s::regclass AND attname = 'embedding'", (res.tables["item_embeddings"],))
                assert cur.fetchone()[0] == "vector(8)"
                for view, key, want in (("towerops_user_embeddings", "user_id", users),
                                        ("towerops_item_embeddings", "item_id", items)):
                    cur.execute(f"SELECT {key}, embedding::float4[] FROM {view}")
                    got = dict(cur.fetchall())
                    assert set(got) == set(want)
                    for k, v in got.items():
                        assert np.float32(v).tobytes() == want[k].tobytes(), k
        finally:
            conn.close()
    else:
        path = ("encoder only: this server has no `vector` extension; the binary format was checked against the "
                "pgvector package's encoder, and publishing fell back to float4[]")
        with pytest.raises(ValueError, match="use_pgvector=True but the `vector` extension cannot be created"):
            publish_postgres(vdir, pg_dsn, use_pgvector=True)
        res = publish_postgres(vdir, pg_dsn)                     # auto: float4[]
        assert res.vector_type == "float4[]"
        conn = psycopg2.connect(pg_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT item_id, embedding FROM towerops_item_embeddings")
                got = dict(cur.fetchall())
        finally:
            conn.close()
        assert {k: np.float32(v).tobytes() for k, v in got.items()} == {k: v.tobytes() for k, v in items.items()}
    record_property("pgvector_path", path)
    warnings.warn(f"pgvector path tested: {path}", UserWarning, stacklevel=1)
