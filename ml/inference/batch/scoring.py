"""Top-k for every known user in chunks: faiss exact kNN, numpy GEMM, or the bundle's ANN index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

if TYPE_CHECKING:
    from ml.inference.engine import RealtimeInferenceEngine

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
    from ml.inference.engine import parse_top_k
    from ml.inference.scoring import top_k_indices

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
    from ml.inference.scoring import top_k_indices

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
