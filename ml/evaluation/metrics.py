"""Ranking metrics on top-K matrices, in plain numpy.

Why matrices: evaluating 10,000 users x 5,000 items must take seconds, so every metric
works on a `hits` matrix (users x K, True where the ranked item is relevant) and the
number of relevant items per user, and returns one value per user. Per-user values
let callers average over segments and bootstrap confidence intervals without
recomputing rankings.

Conventions (the usual ones, e.g. in RecBole / Microsoft Recommenders):
- recall@K = hits in top K / number of relevant items
- precision@K = hits in top K / K
- ndcg@K = DCG / ideal DCG with binary gains and log2(rank + 1) discounts; the ideal
  DCG places min(n_relevant, K) hits first
- map@K = sum over hit ranks r <= K of precision@r, divided by min(n_relevant, K)
- hit_rate@K = 1 if any relevant item in the top K
- mrr@K = 1 / rank of the first relevant item within the top K (0 if none)
- coverage@K = share of the catalog recommended to at least one user
- novelty@K = mean of -log2(p(item)) over recommended items, p = share of users who
  interacted with the item in training (add-one smoothed)
- auc = probability that a held-out like scores above a held-out nope (ties count 1/2)
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

RANKING_METRICS: tuple[str, ...] = ("recall", "precision", "ndcg", "map", "hit_rate", "mrr")
"""Metrics with one value per user, averaged over users."""
CATALOG_METRICS: tuple[str, ...] = ("coverage", "novelty")
"""Metrics of the recommended lists as a whole (novelty is per-user too, coverage is not)."""
GLOBAL_METRICS: tuple[str, ...] = ("auc",)
"""Metrics without K."""
ALL_METRICS: tuple[str, ...] = RANKING_METRICS + CATALOG_METRICS + GLOBAL_METRICS
DEFAULT_KS: tuple[int, ...] = (10, 50, 100)


def validation_ranking_metric(name: str) -> tuple[str, int] | None:
    """`val_<ranking metric>_at_<K>` (e.g. `val_ndcg_at_10`) as (metric, K); None for any other name.

    The one reading of such names for early stopping, tuning objectives and the per-epoch
    validation ranking, so all three accept exactly the same ones."""
    import re

    m = re.fullmatch(r"val_(" + "|".join(RANKING_METRICS) + r")_at_([1-9][0-9]*)", name)
    return (m.group(1), int(m.group(2))) if m else None


def metric_key(metric: str, k: int | None = None) -> str:
    """The name logged to MLflow: `ndcg_at_10`, `auc`."""
    return metric if k is None or metric in GLOBAL_METRICS else f"{metric}_at_{k}"


def parse_metrics(metrics: str | Iterable[str] | None) -> tuple[str, ...]:
    """Validate metric names (comma-separated string or list); None or empty means all."""
    if metrics is None:
        return ALL_METRICS
    if isinstance(metrics, str):
        names = [m.strip().lower() for m in metrics.split(",") if m.strip()]
    else:
        names = [str(m).strip().lower() for m in metrics if str(m).strip()]
    if not names:
        return ALL_METRICS
    aliases = {"hitrate": "hit_rate", "hr": "hit_rate", "ap": "map", "catalog_coverage": "coverage"}
    names = [aliases.get(n, n) for n in names]
    unknown = [n for n in names if n not in ALL_METRICS]
    if unknown:
        raise ValueError(
            f"unknown metric name(s) {', '.join(repr(u) for u in unknown)}: choose from {', '.join(ALL_METRICS)} "
            "(comma-separated, e.g. --metrics ndcg,recall,auc; empty for all)"
        )
    return tuple(dict.fromkeys(names))


def parse_ks(ks: str | int | Iterable[int] | None) -> tuple[int, ...]:
    """Validate cut-offs ("10,50,100", 10 or [10, 50]); sorted, unique, positive."""
    if ks is None:
        return DEFAULT_KS
    if isinstance(ks, str):
        parts = [p.strip() for p in ks.replace(";", ",").split(",") if p.strip()]
        if not parts:
            return DEFAULT_KS
        values = []
        for p in parts:
            try:
                f = float(p)
            except ValueError:
                raise ValueError(f"K={p!r} is not a whole number: pass cut-offs like '10,50,100'") from None
            if not f.is_integer():
                raise ValueError(f"K={p!r} is not a whole number: pass cut-offs like '10,50,100'")
            values.append(int(f))
    elif isinstance(ks, (int, np.integer)):
        values = [int(ks)]
    else:
        values = [int(k) for k in ks]
    bad = [k for k in values if k < 1]
    if bad or not values:
        raise ValueError(f"K values must be positive whole numbers, got {values}: pass e.g. '10,50,100'")
    return tuple(sorted(set(values)))


# ---------------------------------------------------------------- hits
def hits_from_csr(top: np.ndarray, rel_indptr: np.ndarray, rel_items: np.ndarray, n_items: int) -> np.ndarray:
    """Boolean (n_users, K) matrix: is `top[u, j]` among user u's relevant items.

    `top` holds item indices (-1 = no item); relevance is a CSR structure over the
    same user rows (`rel_items[rel_indptr[u]:rel_indptr[u+1]]`).
    """
    top = np.asarray(top, dtype=np.int64)
    n_users = top.shape[0]
    counts = np.diff(rel_indptr)
    if len(counts) != n_users:
        raise ValueError(f"relevance has {len(counts)} users but the ranking has {n_users}")
    rel_keys = np.repeat(np.arange(n_users, dtype=np.int64), counts) * n_items + np.asarray(rel_items, np.int64)
    rel_keys = np.unique(rel_keys)
    keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + top
    hits = np.isin(keys, rel_keys, assume_unique=False)
    return hits & (top >= 0)


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))


def ranking_metrics(hits: np.ndarray, n_relevant: np.ndarray, ks: Sequence[int],
                    metrics: Sequence[str] = RANKING_METRICS) -> dict[str, np.ndarray]:
    """Per-user values of the ranking metrics at each K: `{"ndcg_at_10": array(n_users), ...}`.

    Users with no relevant items get NaN (they say nothing about ranking quality);
    callers average with `nanmean` or filter them out first.
    """
    hits = np.asarray(hits, dtype=bool)
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    n_users, width = hits.shape
    out: dict[str, np.ndarray] = {}
    has_rel = n_rel > 0
    h = hits.astype(np.float64)
    cum_hits = np.cumsum(h, axis=1)
    disc = _discounts(width)
    dcg_cum = np.cumsum(h * disc[None, :], axis=1)
    ideal_cum = np.cumsum(disc)
    ranks = np.arange(1, width + 1, dtype=np.float64)
    prec_at_rank = cum_hits / ranks[None, :]
    ap_cum = np.cumsum(prec_at_rank * h, axis=1)
    first_hit = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    for k in ks:
        kk = min(int(k), width)
        if kk == 0:
            zero = np.where(has_rel, 0.0, np.nan)
            for m in metrics:
                if m in RANKING_METRICS:
                    out[metric_key(m, k)] = zero.copy()
            continue
        n_hit = cum_hits[:, kk - 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            for m in metrics:
                if m == "recall":
                    v = n_hit / n_rel
                elif m == "precision":
                    v = n_hit / float(k)
                elif m == "ndcg":
                    ideal_n = np.minimum(n_rel, kk).astype(np.int64)
                    idcg = np.where(ideal_n > 0, ideal_cum[np.maximum(ideal_n - 1, 0)], np.nan)
                    v = dcg_cum[:, kk - 1] / idcg
                elif m == "map":
                    v = ap_cum[:, kk - 1] / np.minimum(n_rel, float(k))
                elif m == "hit_rate":
                    v = (n_hit > 0).astype(np.float64)
                elif m == "mrr":
                    v = np.where((first_hit >= 0) & (first_hit < kk), 1.0 / (first_hit + 1.0), 0.0)
                else:
                    continue
                out[metric_key(m, k)] = np.where(has_rel, v, np.nan)
    return out


def catalog_coverage(top: np.ndarray, k: int, n_items: int) -> float:
    """Share of the catalog that appears in at least one user's top K."""
    sub = np.asarray(top)[:, : int(k)]
    items = np.unique(sub[sub >= 0])
    return float(len(items) / n_items) if n_items else float("nan")


def item_self_information(interaction_users: np.ndarray, n_users: int) -> np.ndarray:
    """-log2 p(item) with p = (users who interacted + 1) / (n_users + 1): rarer is more novel."""
    counts = np.asarray(interaction_users, dtype=np.float64)
    return -np.log2((counts + 1.0) / (float(n_users) + 1.0))


def novelty(top: np.ndarray, k: int, self_information: np.ndarray) -> np.ndarray:
    """Per-user mean self-information of the items in the top K (NaN for an empty list)."""
    sub = np.asarray(top)[:, : int(k)]
    valid = sub >= 0
    info = np.where(valid, self_information[np.where(valid, sub, 0)], 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return info.sum(axis=1) / valid.sum(axis=1)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of scores for labels 1 vs 0 (Mann-Whitney, ties count 1/2); NaN with one class."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def neighbour_agreement(vectors: np.ndarray, labels: np.ndarray, block: int = 2048) -> float:
    """Share of rows whose nearest other row by cosine carries the same label.

    How well a set of item vectors recovers a known grouping (on synthetic data: the hidden
    communities no content reveals, or the topics content does reveal): 1/n_groups for vectors
    that know nothing of it, 1 when every item's closest neighbour is in its own group. Rows of
    norm 0 count as misses.
    """
    x = np.asarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(f"vectors have shape {x.shape} but there are {len(labels)} labels; pass one (n, d) row per "
                         "label")
    if len(x) < 2:
        raise ValueError(f"neighbour agreement needs at least 2 rows, got {len(x)}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    hits = 0
    for lo in range(0, len(x), block):
        sims = x[lo:lo + block] @ x.T
        sims[np.arange(len(sims)), np.arange(lo, lo + len(sims))] = -np.inf
        nearest = sims.argmax(axis=1)
        hits += int(((labels[nearest] == labels[lo:lo + len(sims)]) & (norms[lo:lo + len(sims), 0] > 0)).sum())
    return hits / len(x)


__all__ = [
    "ALL_METRICS", "CATALOG_METRICS", "DEFAULT_KS", "GLOBAL_METRICS", "RANKING_METRICS",
    "auc", "catalog_coverage", "hits_from_csr", "item_self_information", "metric_key", "neighbour_agreement", "novelty",
    "parse_ks", "parse_metrics", "ranking_metrics", "validation_ranking_metric",
]

