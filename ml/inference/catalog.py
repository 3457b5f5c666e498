"""Catalog refresh: embed new and changed items with a bundle's own item tower, no retraining.

Why: the catalog grows every day; waiting for a retrain leaves new items without an
embedding, and a retrain moves the whole embedding space (a new major version). A refresh
keeps the towers and writes a new bundle where

- items of the old catalog whose content is unchanged keep their embedding, id-table row
  and popularity bit for bit (stored embeddings stay valid: a minor version);
- changed items are re-featurised and re-embedded with their own learned id row;
- new items go through the content path with the learned OOV id row (as serving scores a
  cold item), popularity 0;
- items no longer in the catalog leave it (users' seen rows are renumbered).

The item tower runs as a numpy forward pass read from `keras/item_tower.keras`
(`ml.inference.towers`), so no TensorFlow is imported. Each refreshed bundle stores a
content hash per item (`embeddings/item_content_hash.npy`), so the next refresh featurises
only rows whose content changed.

`towers_fingerprint` and `catalog_hash` identify the embedding space and the catalog of a
bundle; the registry numbers versions with them (`registry.semver`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.logs import get_logger

if TYPE_CHECKING:
    import pandas as pd

log = get_logger("inference")

CONTENT_HASH_FILE = "embeddings/item_content_hash.npy"
CONTENT_COLUMNS = ("title", "description", "tags", "genre", "maker", "price", "duration_s", "released_at")


# ---------------------------------------------------------------------------- identities
def towers_fingerprint(bundle_dir: str | Path) -> str:
    """sha256 (hex, 32 chars) of what fixes the embedding space: both towers' layer weights and
    shapes (input widths carry the vocabulary sizes), the user id table, the item tower's OOV id
    row, the embedding dim and the feature schema hash. A catalog refresh keeps it; any retrain
    changes it."""
    from ml.inference.towers import read_keras_tower

    root = Path(bundle_dir)
    meta = json.loads((root / "metadata.json").read_text())
    h = hashlib.sha256()
    h.update(json.dumps({"embedding_dim": meta.get("embedding_dim"),
                         "feature_schema_hash": meta.get("feature_schema_hash")}, sort_keys=True).encode())
    for tower in ("user_tower", "item_tower"):
        spec = read_keras_tower(root / "keras" / f"{tower}.keras")
        h.update(f"{tower}:{spec.input_dim}".encode())
        for layer in spec.layers:
            h.update(f"{layer.class_name}:{layer.config.get('activation')}".encode())
            for w in layer.weights:
                w = np.ascontiguousarray(w, np.float32)
                h.update(str(w.shape).encode())
                h.update(w.tobytes())
    user_table, item_table = root / "users" / "user_id_table.npy", root / "embeddings" / "item_id_table.npy"
    if user_table.is_file() and item_table.is_file():
        h.update(np.ascontiguousarray(np.load(user_table), np.float32).tobytes())
        h.update(np.ascontiguousarray(np.load(item_table)[-1:], np.float32).tobytes())  # the OOV row
    return h.hexdigest()[:32]


def catalog_hash(bundle_dir: str | Path) -> str:
    """sha256 (hex, 32 chars) of the catalog: item ids in order and their embeddings' bytes."""
    root = Path(bundle_dir)
    h = hashlib.sha256((root / "embeddings" / "item_ids.json").read_bytes())
    h.update(np.ascontiguousarray(np.load(root / "embeddings" / "item_embeddings.npy", mmap_mode="r")).tobytes())
    return h.hexdigest()[:32]


def item_content_hashes(items: "pd.DataFrame") -> np.ndarray:
    """One uint64 per item row over the columns the feature pipeline reads (tags as `a|b`)."""
    import pandas as pd

    frame = pd.DataFrame({c: items[c] if c in items.columns else None for c in CONTENT_COLUMNS})
    frame["tags"] = [("|".join(map(str, t)) if isinstance(t, (list, tuple, np.ndarray)) else str(t))
                     for t in frame["tags"]]
    frame = frame.astype(str)
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(np.uint64)


# ---------------------------------------------------------------------------- the refresh
# threads over chunks (featurising, mostly Python, of one chunk beside the tower's BLAS on another): on 2
# shared cores this measured no better than 1 (bench/catalog.py), so off by default
WORKERS = 1


def _chunked(fn: Any, n: int, width: int, chunk: int) -> np.ndarray:
    """`fn(lo, hi)` over [0, n) in chunks (on WORKERS threads), concatenated in order."""
    from concurrent.futures import ThreadPoolExecutor

    if n == 0:
        return np.zeros((0, width), np.float32)
    bounds = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    if len(bounds) == 1 or WORKERS < 2:
        return np.concatenate([fn(*b) for b in bounds])
    with ThreadPoolExecutor(WORKERS) as pool:
        return np.concatenate(list(pool.map(lambda b: fn(*b), bounds)))


@dataclass
class CatalogRefresh:
    """What a refresh did; `bundle_dir` holds the new bundle."""

    bundle_dir: Path
    base_dir: Path
    n_items: int
    n_kept: int          # old items, embedding unchanged bit for bit
    n_changed: int       # old items whose content changed: re-embedded with their own id row
    n_added: int         # new items: content path + the OOV id row
    n_removed: int       # old items no longer in the catalog
    embedded_s: float    # featurising + item tower for the changed and new items
    towers_fingerprint: str
    catalog_hash: str
    added_ids: list[str]

    @property
    def n_embedded(self) -> int:
        return self.n_changed + self.n_added

    @property
    def items_per_s(self) -> float:
        return self.n_embedded / self.embedded_s if self.embedded_s > 0 else float("inf")

    def summary(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "added_ids"}
        out.update(bundle_dir=str(self.bundle_dir), base_dir=str(self.base_dir), n_embedded=self.n_embedded,
                   items_per_s=round(self.items_per_s, 1), embedded_s=round(self.embedded_s, 4))
        return out


def _check_items(items: "pd.DataFrame", source: str) -> None:
    missing = [c for c in ("item_id", *CONTENT_COLUMNS) if c not in items.columns]
    if missing:
        raise ValueError(f"{source}: the items table has no column(s) {', '.join(missing)}; a catalog refresh needs "
                         f"the items schema (item_id, {', '.join(CONTENT_COLUMNS)}): see README 'Data'")
    ids = items["item_id"].astype(str)
    dupes = ids[ids.duplicated()].unique().tolist()
    if dupes:
        raise ValueError(f"{source}: item_id values repeat ({', '.join(dupes[:5])}); each item once, please")
    if len(items) == 0:
        raise ValueError(f"{source}: the items table is empty; a refresh needs the current catalog")


def refresh_catalog(base_dir: str | Path, items: "pd.DataFrame", out_dir: str | Path, source: str = "items",
                    batch_size: int = 10000) -> CatalogRefresh:
    """Write to `out_dir` a copy of the bundle `base_dir` whose catalog is `items` (the current
    items table); see the module docstring for what happens to each item. `out_dir` must not exist."""
    from ml.bundle.load import load_bundle
    from ml.inference.towers import NumpyTower

    _check_items(items, source)
    base, out = Path(base_dir), Path(out_dir)
    if out.exists():
        raise ValueError(f"{out} exists; a catalog refresh writes a new bundle folder: pass a path that does not exist")
    bundle = load_bundle(base, mmap=True)
    t_start = time.perf_counter()
    items = items.reset_index(drop=True)
    ids = items["item_id"].astype(str).tolist()
    rows = bundle.item_id_rows(ids)                    # old catalog row, -1 for a new item
    known = rows >= 0
    hashes = item_content_hashes(items)
    old_hash_path = base / CONTENT_HASH_FILE
    old_emb = np.asarray(bundle.item_embeddings)
    old_feats = np.asarray(bundle.item_features)

    # order: old items still present (old order), then new items (their order in `items`)
    present = np.zeros(len(bundle.item_ids), bool)
    present[rows[known]] = True
    kept_old_rows = np.flatnonzero(present)            # old rows, ascending
    pos_of_old = np.full(len(bundle.item_ids), -1, np.int64)
    pos_of_old[rows[known]] = np.flatnonzero(known)    # old row -> position in `items`
    new_pos = np.flatnonzero(~known)
    order_pos = np.r_[pos_of_old[kept_old_rows], new_pos].astype(np.int64)   # positions in `items`, new catalog order
    n_old_kept, n_new = len(kept_old_rows), len(new_pos)

    # which kept old items changed: stored content hashes where the bundle has them, else features
    t0 = time.perf_counter()
    tower = NumpyTower.from_keras_file(base / "keras" / "item_tower.keras")
    width = old_feats.shape[1]

    def featurise(positions: np.ndarray) -> np.ndarray:
        return _chunked(lambda lo, hi: np.asarray(bundle.pipeline.item_matrix(
            items.iloc[positions[lo:hi]].reset_index(drop=True)), np.float32), len(positions), width, batch_size)

    def embed(feats: np.ndarray, id_rows: np.ndarray) -> np.ndarray:
        return _chunked(lambda lo, hi: tower(bundle.item_inputs(id_rows[lo:hi], item_features=feats[lo:hi])),
                        len(feats), bundle.embedding_dim, batch_size)

    if old_hash_path.is_file():
        old_hashes = np.load(old_hash_path)
        changed = old_hashes[kept_old_rows] != hashes[pos_of_old[kept_old_rows]]
        feats = featurise(np.r_[pos_of_old[kept_old_rows][changed], new_pos].astype(np.int64))
        changed_feats, new_feats = feats[:int(changed.sum())], feats[int(changed.sum()):]
    else:  # a bundle straight from training: featurise the catalog once and compare with the stored features
        feats = featurise(order_pos)
        old_part = feats[:n_old_kept]
        changed = ~np.isclose(old_part, old_feats[kept_old_rows], rtol=1e-5, atol=1e-5).all(axis=1)
        changed_feats, new_feats = old_part[changed], feats[n_old_kept:]
    changed_rows = kept_old_rows[changed]
    emb_new = embed(np.concatenate([changed_feats, new_feats]),
                    np.r_[changed_rows, np.full(n_new, -1, np.int64)].astype(np.int64))
    embedded_s = time.perf_counter() - t0

    # the new catalog's arrays: kept rows copied as stored, changed rows and new rows replaced/appended
    dim = old_emb.shape[1]
    emb = np.empty((n_old_kept + n_new, dim), old_emb.dtype)
    emb[:n_old_kept] = old_emb[kept_old_rows]
    item_feats = np.empty((n_old_kept + n_new, old_feats.shape[1]), old_feats.dtype)
    item_feats[:n_old_kept] = old_feats[kept_old_rows]
    changed_at = np.flatnonzero(changed)
    emb[changed_at] = emb_new[:len(changed_at)]
    item_feats[changed_at] = changed_feats
    emb[n_old_kept:] = emb_new[len(changed_at):]
    item_feats[n_old_kept:] = new_feats
    tables = bundle.id_tables
    item_table = np.concatenate([tables.item[kept_old_rows], np.repeat(tables.item[-1:], n_new, axis=0),
                                 tables.item[-1:]]).astype(tables.item.dtype)
    popularity = np.r_[np.asarray(bundle.item_popularity)[kept_old_rows], np.zeros(n_new, np.int64)].astype(np.int64)
    new_ids = [ids[p] for p in order_pos]
    # users' seen items renumbered to the new catalog (removed items dropped)
    renumber = np.full(len(bundle.item_ids), -1, np.int64)
    renumber[kept_old_rows] = np.arange(n_old_kept)
    seen = renumber[np.asarray(bundle.seen_items, np.int64)]
    keep = seen >= 0
    n_users = len(bundle.seen_indptr) - 1
    user_of = np.repeat(np.arange(n_users), np.diff(bundle.seen_indptr))
    indptr = np.r_[0, np.cumsum(np.bincount(user_of[keep], minlength=n_users))].astype(np.int64)

    shutil.copytree(base, out, ignore=shutil.ignore_patterns("ann", "tfjs", "checkpoints"))
    try:
        e, u = out / "embeddings", out / "users"
        np.save(e / "item_embeddings.npy", emb)
        np.save(e / "item_features.npy", item_feats)
        np.save(e / "item_id_table.npy", item_table)
        np.save(e / "item_popularity.npy", popularity)
        np.save(out / CONTENT_HASH_FILE, hashes[order_pos])
        (e / "item_ids.json").write_text(json.dumps(new_ids))
        if not bool(keep.all()):
            np.save(u / "seen_indptr.npy", indptr)
            np.save(u / "seen_items.npy", seen[keep].astype(np.int32))
            np.save(u / "seen_labels.npy", np.asarray(bundle.seen_labels)[keep])
        meta = dict(bundle.metadata)
        fingerprint = towers_fingerprint(base)
        n_removed = int(len(bundle.item_ids) - n_old_kept)
        meta.update(n_items=len(new_ids), n_known_items=int((popularity > 0).sum()), towers_fingerprint=fingerprint,
                    catalog={"refreshed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             "base_catalog_hash": bundle.metadata.get("catalog", {}).get("catalog_hash")
                             or catalog_hash(base), "kept": int(n_old_kept - len(changed_at)),
                             "changed": int(len(changed_at)), "added": int(n_new), "removed": n_removed})
        (out / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
        digest = catalog_hash(out)
        meta["catalog"]["catalog_hash"] = digest
        (out / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    result = CatalogRefresh(out, base, len(new_ids), int(n_old_kept - len(changed_at)), int(len(changed_at)),
                            int(n_new), n_removed, embedded_s, fingerprint, digest, [ids[p] for p in new_pos])
    log.info("catalog refresh of %s: %d items (%d kept, %d changed, %d added, %d removed); %d embedded in %.2fs "
             "(%.0f items/s), total %.2fs -> %s", base, result.n_items, result.n_kept, result.n_changed, result.n_added,
             result.n_removed, result.n_embedded, embedded_s, result.items_per_s, time.perf_counter() - t_start, out)
    return result
