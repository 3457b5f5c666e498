"""Ranking metrics on the validation split after each epoch, for tuning objectives and early stopping."""

from __future__ import annotations

from typing import Any

import numpy as np


# ------------------------------------------------------------- objective
class ValidationRanking:
    """Full-catalog ranking metrics on the time-split validation likes, computed per epoch.

    User vectors come from training history only (as in the training arrays), items each
    user met in training are excluded, relevant items are the user's held-out likes.
    """

    def __init__(self, trainer: Any, metric: str, k: int, batch_users: int = 2048) -> None:
        p, pl = trainer.prepared, trainer.pipeline
        tr, va = p.split.train, p.split.valid
        n_users, n_items = len(p.user_ids), len(p.item_ids)
        likes = va & (p.labels == 1)
        users = np.unique(p.user_rows[likes])
        if len(users) == 0:
            raise ValueError("the validation split holds no likes, so ranking metrics are undefined: "
                             "use objective.metric: val_loss or more data / a larger training.validation_split")
        history = pl.user_matrix(p.profiles, p.item_vectors, p.user_rows[tr], p.item_rows[tr], p.labels[tr], n_users)
        pos = np.full(n_users, -1, dtype=np.int64)
        pos[users] = np.arange(len(users))
        self.user_features = history[users].astype(np.float32)
        self.item_features = p.item_vectors.astype(np.float32)
        self.rel_indptr, self.rel_items = _csr(pos[p.user_rows[likes]], p.item_rows[likes], len(users))
        seen = tr & (pos[p.user_rows] >= 0)
        self.seen_rows, self.seen_cols = pos[p.user_rows[seen]], p.item_rows[seen]
        self.n_items, self.metric, self.k, self.batch_users = n_items, metric, k, batch_users
        self.name = metric.removeprefix("val_").rsplit("_at_", 1)[0]

    def __call__(self, model: Any) -> float:
        from ml.evaluation.metrics import hits_from_csr, ranking_metrics, top_k_from_scores

        ue = _embed(model.user_tower, self.user_features)
        ie = _embed(model.item_tower, self.item_features)
        values = []
        for start in range(0, len(ue), self.batch_users):
            stop = min(start + self.batch_users, len(ue))
            scores = ue[start:stop] @ ie.T
            sel = (self.seen_rows >= start) & (self.seen_rows < stop)
            scores[self.seen_rows[sel] - start, self.seen_cols[sel]] = -np.inf
            top = top_k_from_scores(scores, self.k)
            indptr = self.rel_indptr[start:stop + 1] - self.rel_indptr[start]
            items = self.rel_items[self.rel_indptr[start]:self.rel_indptr[stop]]
            hits = hits_from_csr(top, indptr, items, self.n_items)
            per_user = ranking_metrics(hits, np.diff(indptr), [self.k], [self.name])
            values.append(next(iter(per_user.values())))
        return float(np.nanmean(np.concatenate(values)))


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    keep = np.r_[True, (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])] if len(rows) else np.zeros(0, bool)
    rows, cols = rows[keep], cols[keep]
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n_rows))].astype(np.int64)
    return indptr, cols.astype(np.int64)


def _embed(tower: Any, features: np.ndarray, batch: int = 8192) -> np.ndarray:
    return np.concatenate([np.asarray(tower(features[i:i + batch], training=False)) for i in range(0, len(features), batch)])
