"""The one evaluation protocol: split, user embeddings from train history only, full ranking with seen items excluded, segments."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from ml.evaluation.metrics import (
    ALL_METRICS,
    RANKING_METRICS,
    auc,
    catalog_coverage,
    hits_from_csr,
    item_self_information,
    metric_key,
    novelty,
    ranking_metrics,
    top_k_from_scores,
)
from ml.logs import get_logger

if TYPE_CHECKING:
    from ml.bundle.load import ModelBundle
    from ml.data.schema import Dataset
    from ml.data.synthetic import SyntheticData

log = get_logger("training")

COLD_USER_THRESHOLD = 5
SEGMENTS: tuple[str, ...] = ("all", "cold", "warm", "new_items")
BASELINES: tuple[str, ...] = ("popular", "random")
ScoreFn = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------ split
@dataclass
class EvalSplit:
    """Held-out relevance and train history of the users being evaluated, in catalog rows."""

    item_ids: list[str]
    validation_split: float
    user_ids: np.ndarray            # evaluated users: those with >= 1 held-out interaction
    user_rows: np.ndarray           # their rows in dataset.users
    seen_indptr: np.ndarray         # train-swiped items per evaluated user (CSR, unique)
    seen_items: np.ndarray
    rel_indptr: np.ndarray          # held-out likes not swiped in train (CSR, unique)
    rel_items: np.ndarray
    n_train: np.ndarray             # train interactions per evaluated user
    pair_user: np.ndarray           # held-out interactions: evaluated-user index, item row, label
    pair_item: np.ndarray
    pair_label: np.ndarray
    item_train_users: np.ndarray    # distinct train users per item (novelty)
    item_train_likes: np.ndarray    # train likes per item (popularity baseline)
    n_train_users: int
    user_inputs: np.ndarray | None = None  # user-tower inputs from train history (evaluated users)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_relevant(self) -> np.ndarray:
        return np.diff(self.rel_indptr)

    @property
    def new_item_mask(self) -> np.ndarray:
        return self.item_train_users == 0


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (row, col) pairs as CSR (indptr, cols sorted within a row)."""
    if len(rows) == 0:
        return np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    keys = np.unique(rows.astype(np.int64) * (int(cols.max()) + 1) + cols.astype(np.int64))
    width = int(cols.max()) + 1
    r, c = keys // width, keys % width
    indptr = np.r_[0, np.cumsum(np.bincount(r, minlength=n_rows))].astype(np.int64)
    return indptr, c.astype(np.int64)


def _csr_filter(indptr: np.ndarray, cols: np.ndarray, keep_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    keep = keep_col[cols]
    return np.r_[0, np.cumsum(np.bincount(rows[keep], minlength=len(indptr) - 1))].astype(np.int64), cols[keep]


def prepare_split(bundle: "ModelBundle", dataset: "Dataset", validation_split: float | None = None) -> EvalSplit:
    """Map the data onto the bundle's catalog and split it like training did.

    Raises ValueError when the data holds items the model does not know, or when the
    split leaves nothing held out (nothing to evaluate on).
    """
    from ml.data.split import time_split_per_user

    source = dataset.sources.get("interactions", "the interactions table")
    inter = dataset.interactions
    if validation_split is None:
        validation_split = float(bundle.config.get("training", {}).get("validation_split", 0.2))
    if not 0.0 < validation_split < 1.0:
        raise ValueError(
            f"validation_split={validation_split} leaves no held-out interactions: evaluation needs a share in (0, 1), "
            "e.g. 0.2 (the bundle's training.validation_split is used by default)"
        )
    item_index = pd.Index(bundle.item_ids)
    item_rows = item_index.get_indexer(inter["item_id"].astype(str))
    if (item_rows < 0).any():
        bad = inter.loc[item_rows < 0, "item_id"].astype(str)
        shown = ", ".join(repr(v) for v in bad.unique()[:5])
        first_row = int(np.flatnonzero(item_rows < 0)[0])
        raise ValueError(
            f"{source}: {bad.nunique()} item id(s) in {len(bad)} interaction(s) are not in the model's catalog "
            f"({len(bundle.item_ids)} items), e.g. {shown} (first at row {first_row}, column item_id). Evaluate on the "
            "data the model was trained on (or a superset of its rows with the same item ids), or retrain with these items"
        )
    users = dataset.users["user_id"].astype(str)
    user_index = pd.Index(users)
    user_rows_all = user_index.get_indexer(inter["user_id"].astype(str))
    if (user_rows_all < 0).any():
        raise ValueError(f"{source}: interactions reference users missing from the users table; run validate_dataset first")
    labels = inter["label"].to_numpy().astype(np.int64)
    split = time_split_per_user(inter, validation_split)
    n_valid = int(split.valid.sum())
    if n_valid == 0:
        raise ValueError(
            f"{source}: the time split (validation_split={validation_split}) holds out no interactions: every user has "
            f"fewer than {int(np.ceil(1.0 / validation_split))} interactions. Evaluate on data with longer histories "
            "or pass a larger --validation-split"
        )
    if int(labels[split.valid].sum()) == 0:
        raise ValueError(
            f"{source}: the {n_valid} held-out interactions (validation_split={validation_split}) contain no likes, so "
            "there is nothing relevant to rank; check the decision/rating column or evaluate on more data"
        )
    n_users_all = len(users)
    tr, va = split.train, split.valid
    eval_user_rows = np.unique(user_rows_all[va])
    eval_pos = np.full(n_users_all, -1, dtype=np.int64)
    eval_pos[eval_user_rows] = np.arange(len(eval_user_rows))
    n_eval = len(eval_user_rows)

    tr_users, tr_items = user_rows_all[tr], item_rows[tr]
    in_eval = eval_pos[tr_users] >= 0
    seen_indptr, seen_items = _csr(eval_pos[tr_users[in_eval]], tr_items[in_eval], n_eval)
    # relevant: held-out likes the user had not swiped in train
    va_like = va & (labels == 1)
    rel_u, rel_i = eval_pos[user_rows_all[va_like]], item_rows[va_like]
    n_items = len(bundle.item_ids)
    seen_keys = np.repeat(np.arange(n_eval), np.diff(seen_indptr)) * n_items + seen_items
    fresh = ~np.isin(rel_u * n_items + rel_i, seen_keys)
    rel_indptr, rel_items = _csr(rel_u[fresh], rel_i[fresh], n_eval)

    pair_order = np.argsort(eval_pos[user_rows_all[va]], kind="stable")
    pair_user = eval_pos[user_rows_all[va]][pair_order]
    pair_item = item_rows[va][pair_order]
    pair_label = labels[va][pair_order]

    n_train_all = np.bincount(tr_users, minlength=n_users_all)
    _, distinct = _csr(tr_users, tr_items, n_users_all)
    item_train_users = np.bincount(distinct, minlength=n_items)
    item_train_likes = np.bincount(tr_items[labels[tr] == 1], minlength=n_items)

    pl = bundle.pipeline
    profiles = pl.profile_matrix(dataset.users)
    feats = np.asarray(bundle.item_features, dtype=np.float32)
    user_inputs = pl.user_matrix(profiles, feats, tr_users, tr_items, labels[tr], n_users_all)[eval_user_rows]

    out = EvalSplit(
        item_ids=list(bundle.item_ids), validation_split=float(validation_split),
        user_ids=users.to_numpy()[eval_user_rows], user_rows=eval_user_rows,
        seen_indptr=seen_indptr, seen_items=seen_items, rel_indptr=rel_indptr, rel_items=rel_items,
        n_train=n_train_all[eval_user_rows], pair_user=pair_user, pair_item=pair_item, pair_label=pair_label,
        item_train_users=item_train_users, item_train_likes=item_train_likes,
        n_train_users=int((n_train_all > 0).sum()), user_inputs=user_inputs,
    )
    nrel = out.n_relevant
    out.counts = {
        "interactions": int(len(inter)), "train_interactions": int(tr.sum()), "heldout_interactions": n_valid,
        "heldout_likes": int(labels[va].sum()), "users_with_heldout": n_eval,
        "users_ranked": int((nrel > 0).sum()),
        "cold_users_ranked": int(((nrel > 0) & (out.n_train < COLD_USER_THRESHOLD)).sum()),
        "warm_users_ranked": int(((nrel > 0) & (out.n_train >= COLD_USER_THRESHOLD)).sum()),
        "new_items": int(out.new_item_mask.sum()), "catalog_items": n_items,
    }
    if out.counts["users_ranked"] == 0:
        raise ValueError(
            f"{source}: every held-out like is of an item the user already swiped in the train part; there is nothing "
            "new to rank. Evaluate on data with more held-out likes"
        )
    return out


# ---------------------------------------------------------------- scoring
def model_user_embeddings(bundle: "ModelBundle", split: EvalSplit, batch_size: int = 8192) -> np.ndarray:
    """User-tower embeddings of the evaluated users from their train history."""
    x = np.asarray(split.user_inputs, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, bundle.embedding_dim), dtype=np.float32)
    return np.asarray(bundle.user_tower.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)


def model_scorer(bundle: "ModelBundle", split: EvalSplit) -> ScoreFn:
    user_emb = model_user_embeddings(bundle, split)
    item_emb = np.ascontiguousarray(np.asarray(bundle.item_embeddings, dtype=np.float32).T)
    return lambda rows: user_emb[rows] @ item_emb


def popularity_scorer(split: EvalSplit) -> ScoreFn:
    """Train likes per item, ties broken towards more train swipes, then the lower row."""
    n = split.n_items
    score = (split.item_train_likes.astype(np.float64)
             + 0.5 * split.item_train_users / (split.item_train_users.max() + 1.0)
             + 0.25 * (1.0 - np.arange(n) / max(n, 1))).astype(np.float32)
    return lambda rows: np.broadcast_to(score, (len(rows), n)).copy()


def random_scorer(split: EvalSplit, seed: int = 0) -> ScoreFn:
    """Uniform scores per user, reproducible for a seed and a user (not for batch order)."""
    n = split.n_items

    def score(rows: np.ndarray) -> np.ndarray:
        return np.stack([np.random.default_rng([seed, int(r)]).random(n, dtype=np.float32) for r in rows]) \
            if len(rows) else np.zeros((0, n), np.float32)

    return score


def oracle_scorer(synthetic: "SyntheticData", split: EvalSplit) -> ScoreFn | None:
    """True like probability from the generator; None when users or items do not map onto it."""
    gen_users = pd.Index(synthetic.dataset.users["user_id"].astype(str))
    gen_items = pd.Index(synthetic.dataset.items["item_id"].astype(str))
    u = gen_users.get_indexer(pd.Index(split.user_ids.astype(str)))
    i = gen_items.get_indexer(pd.Index(split.item_ids))
    if (u < 0).any() or (i < 0).any():
        log.warning("oracle skipped: %d users and %d catalog items are not in the generator's data",
                    int((u < 0).sum()), int((i < 0).sum()))
        return None
    return lambda rows: synthetic.like_probability(u[rows])[:, i].astype(np.float32)


# ---------------------------------------------------------------- ranking
@dataclass
class SystemRanking:
    """One system's top-K lists for the evaluated users and its scores of held-out pairs."""

    name: str
    top: np.ndarray
    pair_scores: np.ndarray
    seconds: float = 0.0


def rank_system(name: str, score_fn: ScoreFn, split: EvalSplit, k_max: int, batch_users: int = 1024) -> SystemRanking:
    """Score the catalog for every evaluated user in batches, mask train-seen items, keep the top k_max."""
    t0 = time.time()
    n_eval, n_items = len(split.user_ids), split.n_items
    k_max = min(int(k_max), n_items)
    top = np.full((n_eval, k_max), -1, dtype=np.int64)
    pair_scores = np.zeros(len(split.pair_user), dtype=np.float64)
    pair_bounds = np.searchsorted(split.pair_user, np.arange(n_eval + 1))
    for lo in range(0, n_eval, batch_users):
        hi = min(n_eval, lo + batch_users)
        rows = np.arange(lo, hi)
        scores = np.array(score_fn(rows), dtype=np.float32, copy=True)
        p0, p1 = pair_bounds[lo], pair_bounds[hi]
        pair_scores[p0:p1] = scores[split.pair_user[p0:p1] - lo, split.pair_item[p0:p1]]
        s0, s1 = split.seen_indptr[lo], split.seen_indptr[hi]
        local = np.repeat(np.arange(hi - lo), np.diff(split.seen_indptr[lo:hi + 1]))
        scores[local, split.seen_items[s0:s1]] = -np.inf
        top[lo:hi] = top_k_from_scores(scores, k_max)
    return SystemRanking(name=name, top=top, pair_scores=pair_scores, seconds=time.time() - t0)


# ---------------------------------------------------------------- metrics
@dataclass
class SystemMetrics:
    """Per-user metric values (all users with held-out data; NaN where undefined) for one system."""

    name: str
    per_user: dict[str, np.ndarray]       # relevance = all held-out likes
    per_user_new: dict[str, np.ndarray]   # relevance restricted to new items
    top: np.ndarray
    pair_scores: np.ndarray


def system_metrics(ranking: SystemRanking, split: EvalSplit, ks: Sequence[int], metrics: Sequence[str]) -> SystemMetrics:
    rank_metrics = [m for m in metrics if m in RANKING_METRICS]
    hits = hits_from_csr(ranking.top, split.rel_indptr, split.rel_items, split.n_items)
    per_user = ranking_metrics(hits, split.n_relevant, ks, rank_metrics)
    new_indptr, new_items = _csr_filter(split.rel_indptr, split.rel_items, split.new_item_mask)
    hits_new = hits_from_csr(ranking.top, new_indptr, new_items, split.n_items)
    per_user_new = ranking_metrics(hits_new, np.diff(new_indptr), ks, rank_metrics)
    if "novelty" in metrics:
        info = item_self_information(split.item_train_users, split.n_train_users)
        for k in ks:
            per_user[metric_key("novelty", k)] = novelty(ranking.top, k, info)
    return SystemMetrics(ranking.name, per_user, per_user_new, ranking.top, ranking.pair_scores)


def segment_masks(split: EvalSplit) -> dict[str, np.ndarray]:
    """Evaluated-user masks per segment (new_items: users with a held-out like of a new item)."""
    has_rel = split.n_relevant > 0
    new_indptr, _ = _csr_filter(split.rel_indptr, split.rel_items, split.new_item_mask)
    return {
        "all": has_rel,
        "cold": has_rel & (split.n_train < COLD_USER_THRESHOLD),
        "warm": has_rel & (split.n_train >= COLD_USER_THRESHOLD),
        "new_items": np.diff(new_indptr) > 0,
    }


def summarize(sm: SystemMetrics, split: EvalSplit, ks: Sequence[int], metrics: Sequence[str],
              segment: str = "all", masks: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
    """Mean of each per-user metric over a segment, plus coverage and AUC for it."""
    masks = masks or segment_masks(split)
    mask = masks[segment]
    source = sm.per_user_new if segment == "new_items" else sm.per_user
    out: dict[str, float] = {}
    if not mask.any():
        return out
    for key, values in source.items():
        v = values[mask]
        v = v[np.isfinite(v)]
        out[key] = float(v.mean()) if len(v) else float("nan")
    if segment == "new_items":  # novelty of the same lists, over the same users
        for k in ks:
            key = metric_key("novelty", k)
            if key in sm.per_user:
                v = sm.per_user[key][mask]
                v = v[np.isfinite(v)]
                out[key] = float(v.mean()) if len(v) else float("nan")
    if "coverage" in metrics:
        for k in ks:
            out[metric_key("coverage", k)] = catalog_coverage(sm.top[mask], k, split.n_items)
    if "auc" in metrics:
        if segment == "new_items":
            pairs = split.new_item_mask[split.pair_item]
        elif segment == "all":
            pairs = np.ones(len(split.pair_user), dtype=bool)
        else:
            seg_users = (split.n_train < COLD_USER_THRESHOLD) if segment == "cold" else (split.n_train >= COLD_USER_THRESHOLD)
            pairs = seg_users[split.pair_user]
        out["auc"] = auc(sm.pair_scores[pairs], split.pair_label[pairs])
    return {k: out[k] for k in _ordered_keys(out, ks)}


def _ordered_keys(values: Mapping[str, float], ks: Sequence[int]) -> list[str]:
    order = [metric_key(m, k) for m in ALL_METRICS for k in ks]
    seen = dict.fromkeys(k for k in order if k in values)
    return list(seen) + [k for k in values if k not in seen]
