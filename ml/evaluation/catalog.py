"""One catalog for every model compared: a bundle seen through the items of an evaluation set.

Why: the gate compares a challenger with the champion on the challenger's test part. A
retrain may add items the champion never saw (and drop some it knew); the protocol ranks
each model over its own catalog, so without this the champion cannot score the new items
and the two would not even rank the same set. `align_catalog` gives a bundle whose catalog
is exactly the evaluation set's items, in its order: known items keep their exported rows;
unknown ("cold") items go through the model's content path, its feature pipeline and item
tower with the learned OOV id row, as serving scores a new item.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

    from ml.bundle.load import ModelBundle


@dataclass(frozen=True)
class CatalogAlignment:
    """How a model's catalog met the evaluation set's items."""

    n_items: int          # items of the evaluation set (the aligned catalog)
    n_cold: int           # of them, unknown to the model: scored through its content path
    n_dropped: int        # items the model knew that the evaluation set does not hold

    def describe(self, who: str = "the model") -> str:
        parts = []
        if self.n_cold:
            parts.append(f"{who} does not know {self.n_cold} of the {self.n_items} items: scored through its content "
                         "path (item features + the OOV id row)")
        if self.n_dropped:
            parts.append(f"{self.n_dropped} items {who} knew are not in the evaluation set and were left out of its "
                         "ranking")
        return "; ".join(parts)


def align_catalog(bundle: "ModelBundle", items: "pd.DataFrame") -> tuple["ModelBundle", CatalogAlignment]:
    """`bundle` with its catalog replaced by `items` (the evaluation set's items table, in order).

    Raises whatever the model's feature pipeline or item tower raise for items it cannot
    featurise (the caller falls back to the items both models know)."""
    from ml.model.inputs import IdTables

    ids = [str(i) for i in items["item_id"].tolist()]
    if ids == [str(i) for i in bundle.item_ids]:
        return bundle, CatalogAlignment(len(ids), 0, 0)
    rows = bundle.item_id_rows(ids)
    known = rows >= 0
    n_cold = int((~known).sum())
    n_old = len(bundle.item_ids)
    feats = np.zeros((len(ids), bundle.item_features.shape[1]), np.float32)
    emb = np.zeros((len(ids), bundle.embedding_dim), np.float32)
    feats[known] = np.asarray(bundle.item_features)[rows[known]]
    emb[known] = np.asarray(bundle.item_embeddings)[rows[known]]
    if n_cold:
        cold_items = items.loc[~known].reset_index(drop=True)
        cold_feats = np.asarray(bundle.pipeline.item_matrix(cold_items), np.float32)
        x = bundle.item_inputs(np.full(n_cold, -1, np.int64), item_features=cold_feats)
        tower = bundle.load_item_tower()
        feats[~known] = cold_feats
        emb[~known] = np.asarray(tower.predict(np.asarray(x, np.float32), batch_size=8192, verbose=0), np.float32)
    tables = bundle.id_tables
    # id rows: a known item keeps its row, a cold one gets the OOV row (row n_old); the OOV row stays last
    item_table = np.concatenate([tables.item[np.where(known, rows, n_old)], tables.item[-1:]])
    popularity = np.where(known, np.asarray(bundle.item_popularity)[np.where(known, rows, 0)], 0).astype(np.int64)
    # known users' training history, renumbered to the new catalog (items not in it dropped)
    new_row = np.full(n_old, -1, np.int64)
    new_row[rows[known]] = np.flatnonzero(known)
    seen_new = new_row[np.asarray(bundle.seen_items, np.int64)]
    keep = seen_new >= 0
    user_of = np.repeat(np.arange(len(bundle.seen_indptr) - 1), np.diff(bundle.seen_indptr))
    indptr = np.r_[0, np.cumsum(np.bincount(user_of[keep], minlength=len(bundle.seen_indptr) - 1))].astype(np.int64)
    aligned = dataclasses.replace(
        bundle, item_ids=ids, item_embeddings=emb, item_features=feats, item_popularity=popularity,
        seen_indptr=indptr, seen_items=seen_new[keep].astype(np.int32), seen_labels=np.asarray(bundle.seen_labels)[keep],
        item_index={iid: n for n, iid in enumerate(ids)}, id_tables=IdTables(item_table.astype(np.float32), tables.user))
    return aligned, CatalogAlignment(len(ids), n_cold, int(n_old - known.sum()))
