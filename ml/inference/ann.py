"""Optional approximate nearest-neighbour index (faiss) for catalogs too large to scan per request.

Exact scoring reads the whole float32 catalog for every request (100,000 x 768 is 307 MB,
memory-bandwidth bound: tens of milliseconds on a small machine). An inverted-file index
(`IVF<nlist>,Flat`, inner product) scans only the `nprobe` closest of `nlist` clusters and
returns exact inner products for the items it visits, so scores are the exact ones and only
recall can suffer. Recall@k against exact brute force is measured on the bundle's own user
embeddings (the real query distribution) when the index is built, and stored beside it:

    <bundle>/ann/items.faiss   the faiss index (rows = catalog rows)
    <bundle>/ann/ann.json      factory, nprobe, n_items, dim, rank, catalog fingerprint, recall@k
    <bundle>/ann/basis.npy     when the catalog is rank-reduced (`ml.inference.scoring.RankReduction`):
                               the basis the index vectors and the queries are expressed in

`faiss-cpu` is a dependency of towerops but imported only here, only when an index is used.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.logs import get_logger

log = get_logger("inference")

ANN_DIR = "ann"
INDEX_FILE = "items.faiss"
META_FILE = "ann.json"
BASIS_FILE = "basis.npy"


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss-cpu is a declared dependency
        raise RuntimeError("approximate scoring needs faiss: pip install faiss-cpu (or use scoring='exact')") from exc
    return faiss


def default_factory(n_items: int) -> str:
    """`Flat` (exact) below 4,096 items, else `IVF<nlist>,Flat` with nlist ~ 4*sqrt(n), a power of two."""
    if n_items < 4096:
        return "Flat"
    nlist = 2 ** int(round(math.log2(4 * math.sqrt(n_items))))
    nlist = max(16, min(nlist, n_items // 39))  # faiss wants >= 39 training points per centroid
    return f"IVF{nlist},Flat"


def default_nprobe(nlist: int) -> int:
    """Clusters probed per query: a quarter of the lists, at least 8.

    Measured on the 100,000-item bench catalog (IVF1024): nprobe 64 -> recall@10 0.92,
    128 -> 0.975, 256 -> 0.9997 at under 1 ms per query on the rank-reduced catalog; so
    the default buys recall, and `--nprobe` trades it back for speed.
    """
    return max(1, min(nlist, max(8, nlist // 4)))


def catalog_fingerprint(embeddings: np.ndarray) -> str:
    """Cheap identity of a catalog (shape + a strided sample of rows) to detect a stale index."""
    h = hashlib.sha256(f"{embeddings.shape}".encode())
    step = max(1, len(embeddings) // 256)
    h.update(np.ascontiguousarray(embeddings[::step], dtype=np.float32).tobytes())
    return h.hexdigest()[:32]


@dataclass
class AnnIndex:
    """A faiss index over catalog rows; `search` returns (rows, inner products), best first."""

    index: Any
    factory: str
    nprobe: int
    n_items: int
    dim: int

    def set_nprobe(self, nprobe: int) -> None:
        faiss = _faiss()
        try:
            ivf = faiss.extract_index_ivf(self.index)
        except RuntimeError:  # not an IVF index (Flat, HNSW): nothing to probe
            ivf = None
        if ivf is not None:
            nprobe = max(1, min(int(nprobe), ivf.nlist))
            ivf.nprobe = nprobe
        self.nprobe = int(nprobe)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k catalog rows per query (-1 where fewer were found) and their scores."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        scores, rows = self.index.search(q, int(k))
        return rows, scores


def build_index(embeddings: np.ndarray, factory: str | None = None, nprobe: int | None = None,
                seed: int = 0, max_train: int = 65536) -> AnnIndex:
    """Build (train + add) an inner-product index over the catalog rows."""
    faiss = _faiss()
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    n, d = x.shape
    factory = factory or default_factory(n)
    try:
        index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"faiss factory {factory!r} is not valid ({str(exc).splitlines()[0]}); "
                         "use e.g. 'IVF1024,Flat', 'HNSW32,Flat' or 'Flat'") from exc
    t0 = time.perf_counter()
    if not index.is_trained:
        nlist = getattr(faiss.extract_index_ivf(index), "nlist", 1) if factory.startswith("IVF") else 1
        if n < nlist:
            raise ValueError(f"faiss factory {factory!r} needs at least {nlist} items to train; the catalog has {n}")
        rng = np.random.default_rng(seed)
        sample = x if n <= max_train else x[np.sort(rng.choice(n, max_train, replace=False))]
        index.train(sample)
    index.add(x)
    ann = AnnIndex(index=index, factory=factory, nprobe=1, n_items=n, dim=d)
    nlist = getattr(_ivf_or_none(index), "nlist", 0)
    ann.set_nprobe(nprobe or (default_nprobe(nlist) if nlist else 1))
    log.info("built faiss %s over %d x %d items in %.1fs (nprobe %d)", factory, n, d, time.perf_counter() - t0, ann.nprobe)
    return ann


def _ivf_or_none(index: Any) -> Any:
    try:
        return _faiss().extract_index_ivf(index)
    except RuntimeError:
        return None


def exact_search(embeddings: np.ndarray, queries: np.ndarray, k: int, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-k (float32 BLAS) in chunks of queries: the reference for recall."""
    from ml.inference.scoring import top_k_indices

    q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
    rows = np.zeros((len(q), min(k, len(embeddings))), dtype=np.int64)
    scores = np.zeros(rows.shape, dtype=np.float32)
    for lo in range(0, len(q), chunk):
        s = q[lo:lo + chunk] @ embeddings.T
        top = top_k_indices(s, k)
        rows[lo:lo + chunk] = top
        scores[lo:lo + chunk] = np.take_along_axis(s, top, axis=1)
    return rows, scores


def recall_at_k(ann: AnnIndex, embeddings: np.ndarray, queries: np.ndarray, k: int = 10,
                reduction: Any = None) -> float:
    """Mean fraction of the exact (full-width brute force) top-k found by the index's top-k."""
    exact, _ = exact_search(embeddings, queries, k)
    approx, _ = ann.search(queries if reduction is None else reduction.project(queries), k)
    hits = [len(set(a[a >= 0].tolist()) & set(e.tolist())) for a, e in zip(approx, exact)]
    return float(np.sum(hits) / max(1, exact.size))


def has_index(bundle_dir: str | Path) -> bool:
    """Whether the bundle holds a built index."""
    root = Path(bundle_dir) / ANN_DIR
    return (root / INDEX_FILE).exists() and (root / META_FILE).exists()


def save_index(ann: AnnIndex, bundle_dir: str | Path, meta: dict[str, Any], basis: np.ndarray | None = None) -> Path:
    """Write the index (and basis) and its metadata into `<bundle>/ann/` (metadata last)."""
    faiss = _faiss()
    root = Path(bundle_dir) / ANN_DIR
    root.mkdir(parents=True, exist_ok=True)
    if basis is not None:
        np.save(root / BASIS_FILE, np.asarray(basis, dtype=np.float32))
    elif (root / BASIS_FILE).exists():
        (root / BASIS_FILE).unlink()
    tmp = root / (INDEX_FILE + ".tmp")
    faiss.write_index(ann.index, str(tmp))
    tmp.replace(root / INDEX_FILE)
    (root / META_FILE).write_text(json.dumps(meta, indent=2))
    return root


def load_index(bundle_dir: str | Path, embeddings: np.ndarray | None = None, nprobe: int | None = None) -> AnnIndex:
    """Read `<bundle>/ann/`; with `embeddings`, refuse an index built for another catalog."""
    faiss = _faiss()
    root = Path(bundle_dir) / ANN_DIR
    meta = json.loads((root / META_FILE).read_text())
    if embeddings is not None:
        fp = catalog_fingerprint(embeddings)
        if meta.get("catalog_fingerprint") != fp or meta.get("n_items") != len(embeddings):
            raise ValueError(f"{root} was built for another catalog ({meta.get('n_items')} items, fingerprint "
                             f"{meta.get('catalog_fingerprint')}; this bundle: {len(embeddings)} items, {fp}); "
                             f"rebuild it with `towerops build-index --model-dir {bundle_dir}`")
    index = faiss.read_index(str(root / INDEX_FILE))
    ann = AnnIndex(index=index, factory=meta["factory"], nprobe=int(meta.get("nprobe", 1)),
                   n_items=int(meta["n_items"]), dim=int(meta["dim"]))
    ann.set_nprobe(nprobe or ann.nprobe)
    return ann


def load_or_build_index(bundle_dir: str | Path, embeddings: np.ndarray, nprobe: int | None = None,
                        lowrank: bool = True) -> tuple[AnnIndex, Any]:
    """(index, rank reduction or None): the bundle's, or built in memory now (logged: slow for large catalogs)."""
    from ml.inference.scoring import LOWRANK_TOL, RankReduction, reduce_rank

    root = Path(bundle_dir) / ANN_DIR
    if has_index(bundle_dir):
        ann = load_index(bundle_dir, embeddings, nprobe)
        reduction = None
        if (root / BASIS_FILE).exists():
            reduction = RankReduction.from_basis(embeddings, np.load(root / BASIS_FILE))
            if reduction.max_residual > LOWRANK_TOL:
                raise ValueError(f"{root / BASIS_FILE} does not span this catalog (residual "
                                 f"{reduction.max_residual:.1e}); rebuild with `towerops build-index --model-dir "
                                 f"{bundle_dir}`")
        expected = reduction.rank if reduction is not None else embeddings.shape[1]
        if ann.dim != expected:
            raise ValueError(f"{root} holds {ann.dim}-d vectors but this catalog scores in {expected}-d; rebuild "
                             f"with `towerops build-index --model-dir {bundle_dir}`")
        return ann, reduction
    log.warning("%s has no ANN index; building one in memory (run `towerops build-index` to store it)", bundle_dir)
    reduction = reduce_rank(embeddings) if lowrank else None
    return build_index(embeddings if reduction is None else reduction.items, nprobe=nprobe), reduction


def build_bundle_index(bundle_dir: str | Path, factory: str | None = None, nprobe: int | None = None,
                       k: int = 10, n_queries: int = 1000, seed: int = 0, lowrank: bool = True) -> dict[str, Any]:
    """Build the bundle's index, measure recall@k vs exact on its users, store both; returns the metadata.

    With `lowrank` (default) the index holds the rank-reduced catalog when it has one (fewer
    bytes per probed item, same inner products); recall is always against full-width brute force.
    """
    from ml.bundle.load import load_bundle
    from ml.inference.scoring import reduce_rank

    b = load_bundle(bundle_dir, mmap=True)
    emb = np.ascontiguousarray(b.item_embeddings, dtype=np.float32)
    if k <= 0 or n_queries <= 0:
        raise ValueError(f"k={k} and n_queries={n_queries} must be positive")
    t0 = time.perf_counter()
    reduction = reduce_rank(emb) if lowrank else None
    ann = build_index(emb if reduction is None else reduction.items, factory=factory, nprobe=nprobe, seed=seed)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    pool = b.user_embeddings if len(b.user_embeddings) else emb
    pick = np.sort(rng.choice(len(pool), min(n_queries, len(pool)), replace=False))
    queries = np.asarray(pool[pick], dtype=np.float32)
    recall = recall_at_k(ann, emb, queries, k, reduction)
    meta = {
        "factory": ann.factory, "nprobe": ann.nprobe, "n_items": int(emb.shape[0]), "dim": int(ann.dim),
        "embedding_dim": int(emb.shape[1]), "rank": None if reduction is None else reduction.rank,
        "catalog_fingerprint": catalog_fingerprint(emb), f"recall_at_{k}": recall, "recall_k": k,
        "recall_queries": int(len(queries)), "build_s": round(build_s, 3),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_index(ann, bundle_dir, meta, basis=None if reduction is None else reduction.basis)
    log.info("ANN index for %s: %s nprobe=%d recall@%d=%.4f vs exact (%d user queries)", bundle_dir, ann.factory,
             ann.nprobe, k, recall, len(queries))
    return meta
