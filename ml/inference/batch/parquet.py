"""Parquet outputs of a batch run: versioned folders switched in by an atomic rename of `current`."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    pass
from ml.inference.batch.scoring import ScoredChunk


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
