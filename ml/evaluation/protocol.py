"""The one evaluation protocol: per-user time split, user vectors from the history before the
evaluated part only, full ranking with history items excluded, the one top-k, segments.

Tuning's objective (`ml.evaluation.validation.ValidationRanking`, the `valid` part), offline
evaluation and the promotion gate (`ml.evaluation.evaluate.evaluate_bundle`, the `test` part)
all build an `EvalSplit` here and rank with `rank_system`, so their numbers mean the same thing.

Parts of the three-way split by time (`ml.data.split.time_split_per_user`):
- `test` (offline evaluation, the gate): held out = each user's last `test_split` share;
  history = train + validation (everything before it);
- `valid` (early stopping, tuning): held out = the `validation_split` share before the test
  part; history = train. The test part is never looked at.
In both, the baselines fit on the training part (`EvalSplit.fit_history`), what the model was
trained on, and score users from the history.
"""

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
)
from ml.inference.scoring import top_k_indices
from ml.logs import get_logger

if TYPE_CHECKING:
    from ml.bundle.load import ModelBundle
    from ml.data.schema import Dataset

log = get_logger("training")

COLD_USER_THRESHOLD = 5
SEGMENTS: tuple[str, ...] = ("all", "cold", "warm", "new_items")
PARTS: tuple[str, ...] = ("test", "valid")
ScoreFn = Callable[[np.ndarray], np.ndarray]
"""Scores (len(rows), n_items) for evaluated users `rows` (indices into `EvalSplit.user_ids`)."""


# ------------------------------------------------------------------ split
@dataclass
class History:
    """The interactions before the evaluated part, for ALL users (rows of the users table)."""

    user_rows: np.ndarray
    item_rows: np.ndarray
    labels: np.ndarray
    n_users: int
    n_items: int

    def likes_matrix(self):
        """Users x items CSR with 1.0 where the user liked the item in the history (duplicates once)."""
        from scipy.sparse import csr_matrix

        like = self.labels == 1
        m = csr_matrix((np.ones(int(like.sum()), np.float32), (self.user_rows[like], self.item_rows[like])),
                       shape=(self.n_users, self.n_items))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    def item_likes(self) -> np.ndarray:
        """Likes per item (catalog rows)."""
        return np.bincount(self.item_rows[self.labels == 1], minlength=self.n_items)

    def item_users(self) -> np.ndarray:
        """Distinct users per item (catalog rows)."""
        _, distinct = _csr(self.user_rows, self.item_rows, self.n_users)
        return np.bincount(distinct, minlength=self.n_items)


@dataclass
class EvalSplit:
    """Held-out relevance and history of the users being evaluated, in catalog rows."""

    item_ids: list[str]
    part: str                       # "test" or "valid"
    shares: dict[str, float]        # validation_split, test_split
    user_ids: np.ndarray            # evaluated users: those with >= 1 held-out interaction
    user_rows: np.ndarray           # their rows in the users table (History numbering)
    seen_indptr: np.ndarray         # history items per evaluated user (CSR, unique)
    seen_items: np.ndarray
    rel_indptr: np.ndarray          # held-out likes not in the user's history (CSR, unique)
    rel_items: np.ndarray
    n_train: np.ndarray             # history interactions per evaluated user
    pair_user: np.ndarray           # held-out interactions: evaluated-user index, item row, label
    pair_item: np.ndarray
    pair_label: np.ndarray
    item_train_users: np.ndarray    # distinct history users per item (novelty)
    n_train_users: int
    history: History
    counts: dict[str, int] = field(default_factory=dict)
    fit: History | None = None      # what the baselines fit on: the model's training part (None: the history)

    @property
    def fit_history(self) -> History:
        """The interactions the baselines fit their parameters on: the part the model was trained on.

        When the test part is evaluated the history also holds the validation part, which the model
        never trained on (early stopping only): the baselines fit on the training part as the model
        did, and then, like the model's user tower, score each user from the whole history (fold-in).
        """
        return self.history if self.fit is None else self.fit

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_relevant(self) -> np.ndarray:
        return np.diff(self.rel_indptr)

    @property
    def new_item_mask(self) -> np.ndarray:
        return self.item_train_users == 0

    @property
    def validation_split(self) -> float:
        return float(self.shares.get("validation_split", 0.0))

    @property
    def test_split(self) -> float:
        return float(self.shares.get("test_split", 0.0))

    def describe(self) -> str:
        """`test part (test_split=0.2, validation_split=0.1)`, for messages and reports."""
        return f"{self.part} part (test_split={self.test_split:g}, validation_split={self.validation_split:g})"


def _csr(rows: np.ndarray, cols: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (row, col) pairs as CSR (indptr, cols sorted within a row)."""
    if len(rows) == 0:
        return np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    width = int(cols.max()) + 1
    keys = np.unique(rows.astype(np.int64) * width + cols.astype(np.int64))
    r, c = keys // width, keys % width
    indptr = np.r_[0, np.cumsum(np.bincount(r, minlength=n_rows))].astype(np.int64)
    return indptr, c.astype(np.int64)


def _csr_filter(indptr: np.ndarray, cols: np.ndarray, keep_col: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    keep = keep_col[cols]
    return np.r_[0, np.cumsum(np.bincount(rows[keep], minlength=len(indptr) - 1))].astype(np.int64), cols[keep]


def build_split(user_rows: np.ndarray, item_rows: np.ndarray, labels: np.ndarray, history_mask: np.ndarray,
                heldout_mask: np.ndarray, user_ids: np.ndarray, item_ids: Sequence[str], part: str,
                shares: Mapping[str, float], source: str = "the interactions",
                fit_mask: np.ndarray | None = None) -> EvalSplit:
    """The protocol on plain arrays: interaction rows (user row, item row, 0/1 label) and two masks.

    `fit_mask` (a subset of the history) is what the baselines fit on, the model's training part;
    default: the whole history.

    Raises ValueError (naming `source` and the split) when nothing is held out, the held-out
    part has no likes, or every held-out like is already in the users' histories.
    """
    user_rows, item_rows = np.asarray(user_rows, np.int64), np.asarray(item_rows, np.int64)
    labels = np.asarray(labels, np.int64)
    hist, held = np.asarray(history_mask, bool), np.asarray(heldout_mask, bool)
    n_users_all, n_items = len(user_ids), len(item_ids)
    where = f"the time split's {part} part ({', '.join(f'{k}={v:g}' for k, v in shares.items())})"
    n_held = int(held.sum())
    if n_held == 0:
        raise ValueError(
            f"{source}: {where} holds out no interactions: every user has too few interactions for that share. "
            "Evaluate on data with longer histories or pass a larger share (e.g. --test-split 0.2)")
    if int(labels[held].sum()) == 0:
        raise ValueError(
            f"{source}: the {n_held} held-out interactions of {where} contain no likes, so there is nothing relevant "
            "to rank; check the decision/rating column (and data.like_threshold) or evaluate on more data")
    eval_user_rows = np.unique(user_rows[held])
    eval_pos = np.full(n_users_all, -1, dtype=np.int64)
    eval_pos[eval_user_rows] = np.arange(len(eval_user_rows))
    n_eval = len(eval_user_rows)

    h_users, h_items, h_labels = user_rows[hist], item_rows[hist], labels[hist]
    in_eval = eval_pos[h_users] >= 0
    seen_indptr, seen_items = _csr(eval_pos[h_users[in_eval]], h_items[in_eval], n_eval)
    like = held & (labels == 1)  # relevant: held-out likes the user had not met in the history
    rel_u, rel_i = eval_pos[user_rows[like]], item_rows[like]
    seen_keys = np.repeat(np.arange(n_eval), np.diff(seen_indptr)) * n_items + seen_items
    fresh = ~np.isin(rel_u * n_items + rel_i, seen_keys)
    rel_indptr, rel_items = _csr(rel_u[fresh], rel_i[fresh], n_eval)

    held_pos = eval_pos[user_rows[held]]
    order = np.argsort(held_pos, kind="stable")
    n_hist_all = np.bincount(h_users, minlength=n_users_all)
    history = History(h_users, h_items, h_labels, n_users_all, n_items)
    out = EvalSplit(
        item_ids=list(item_ids), part=part, shares={k: float(v) for k, v in shares.items()},
        user_ids=np.asarray(user_ids)[eval_user_rows], user_rows=eval_user_rows,
        seen_indptr=seen_indptr, seen_items=seen_items, rel_indptr=rel_indptr, rel_items=rel_items,
        n_train=n_hist_all[eval_user_rows], pair_user=held_pos[order], pair_item=item_rows[held][order],
        pair_label=labels[held][order], item_train_users=history.item_users(),
        n_train_users=int((n_hist_all > 0).sum()), history=history,
    )
    if fit_mask is not None:
        fit = np.asarray(fit_mask, bool)
        if (fit & ~hist).any():
            raise ValueError(f"{source}: fit_mask selects {int((fit & ~hist).sum())} interactions outside the history "
                             f"of {where}; the baselines may only fit on what comes before the evaluated part")
        out.fit = History(user_rows[fit], item_rows[fit], labels[fit], n_users_all, n_items)
    nrel = out.n_relevant
    out.counts = {
        "interactions": int(len(user_rows)), "train_interactions": int(hist.sum()), "heldout_interactions": n_held,
        "heldout_likes": int(labels[held].sum()), "users_with_heldout": n_eval,
        "users_ranked": int((nrel > 0).sum()),
        "cold_users_ranked": int(((nrel > 0) & (out.n_train < COLD_USER_THRESHOLD)).sum()),
        "warm_users_ranked": int(((nrel > 0) & (out.n_train >= COLD_USER_THRESHOLD)).sum()),
        "new_items": int(out.new_item_mask.sum()), "catalog_items": n_items,
    }
    if out.counts["users_ranked"] == 0:
        raise ValueError(
            f"{source}: every held-out like of {where} is of an item the user already met in the history; there is "
            "nothing new to rank. Evaluate on data with more held-out likes")
    return out


def split_shares(config: Mapping, validation_split: float | None = None,
                 test_split: float | None = None) -> dict[str, float]:
    """The validation and test shares: given ones, else the (bundle's) training config's."""
    training = dict(config.get("training", {}) or {})
    v = float(training.get("validation_split", 0.2)) if validation_split is None else float(validation_split)
    t = float(training.get("test_split", 0.0) or 0.0) if test_split is None else float(test_split)
    for name, value in (("validation_split", v), ("test_split", t)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{name}={value} must be a share in [0, 1), e.g. 0.2 (default: the bundle's training.{name})")
    if v + t >= 1.0:
        raise ValueError(f"validation_split={v} + test_split={t} leave nothing to train on: keep their sum below 1")
    return {"validation_split": v, "test_split": t}


def heldout_masks(interactions: pd.DataFrame, shares: Mapping[str, float], part: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(history mask, held-out mask, part) of the three-way time split for the part asked for (`split_masks`)."""
    _, history, heldout, part = split_masks(interactions, shares, part)
    return history, heldout, part


def split_masks(interactions: pd.DataFrame, shares: Mapping[str, float],
                part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(training-part mask, history mask, held-out mask, part) of the three-way time split for the part asked for.

    Data split without a test share (test_split=0, e.g. a bundle trained before the three-way
    split) can only be evaluated on its validation part; that is logged, never silent.
    """
    from ml.data.split import time_split_per_user

    if part not in PARTS:
        raise ValueError(f"part={part!r} is unknown: evaluate the 'test' part (offline evaluation, the gate) or "
                         "'valid' (early stopping, tuning)")
    v, t = shares["validation_split"], shares["test_split"]
    if part == "test" and t <= 0:
        log.warning("test_split=0: no test part to evaluate on; using the validation part (validation_split=%g). "
                    "Train with training.test_split > 0 so evaluation never sees what early stopping saw", v)
        part = "valid"
    if part == "valid" and v <= 0:
        raise ValueError("validation_split=0 and test_split=0 leave nothing held out: evaluation needs a share in "
                         "(0, 1), e.g. --test-split 0.2 (the bundle's training.test_split is used by default)")
    split = time_split_per_user(interactions, v, t)
    if part == "test":
        return split.train, split.train | split.valid, split.test, part
    return split.train, split.train, split.valid, part


def _catalog_rows(bundle: "ModelBundle", dataset: "Dataset", source: str) -> tuple[np.ndarray, np.ndarray]:
    """Users-table rows and catalog rows of every interaction; ValueError naming unknown items."""
    inter = dataset.interactions
    item_rows = pd.Index(bundle.item_ids).get_indexer(inter["item_id"].astype(str))
    if (item_rows < 0).any():
        bad = inter.loc[item_rows < 0, "item_id"].astype(str)
        shown = ", ".join(repr(v) for v in bad.unique()[:5])
        first_row = int(np.flatnonzero(item_rows < 0)[0])
        raise ValueError(
            f"{source}: {bad.nunique()} item id(s) in {len(bad)} interaction(s) are not in the model's catalog "
            f"({len(bundle.item_ids)} items), e.g. {shown} (first at row {first_row}, column item_id). Evaluate on the "
            "data the model was trained on (or a superset of its rows with the same item ids), or retrain with these items"
        )
    user_rows = pd.Index(dataset.users["user_id"].astype(str)).get_indexer(inter["user_id"].astype(str))
    if (user_rows < 0).any():
        raise ValueError(f"{source}: interactions reference users missing from the users table; run validate_dataset first")
    return user_rows.astype(np.int64), item_rows.astype(np.int64)


def prepare_split(bundle: "ModelBundle", dataset: "Dataset", validation_split: float | None = None,
                  test_split: float | None = None, part: str = "test") -> EvalSplit:
    """Map the data onto the bundle's catalog and split it as training did (shares and the rating scale
    from the bundle's config).

    Raises ValueError when the data holds items the model does not know, or when the split
    leaves nothing to evaluate on.
    """
    from ml.data.ratings import apply_rating_config

    source = dataset.sources.get("interactions", "the interactions table")
    data_cfg = dict(bundle.config.get("data", {}) or {})
    dataset = apply_rating_config(dataset, data_cfg.get("rating_scale", "auto"), data_cfg.get("like_threshold"))
    shares = split_shares(bundle.config, validation_split, test_split)
    train, history, heldout, part = split_masks(dataset.interactions, shares, part)
    user_rows, item_rows = _catalog_rows(bundle, dataset, source)
    labels = dataset.interactions["label"].to_numpy().astype(np.int64)
    users = dataset.users["user_id"].astype(str).to_numpy()
    return build_split(user_rows, item_rows, labels, history, heldout, users, bundle.item_ids, part, shares, source,
                       fit_mask=train)


# ---------------------------------------------------------------- scoring
def history_of(split: EvalSplit) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The evaluated users' history as (evaluated-user index, catalog row, label), for the user tower."""
    h = split.history
    pos = np.full(h.n_users, -1, dtype=np.int64)
    pos[split.user_rows] = np.arange(len(split.user_rows))
    keep = pos[h.user_rows] >= 0
    return pos[h.user_rows[keep]], h.item_rows[keep], h.labels[keep]


def model_user_embeddings(bundle: "ModelBundle", dataset: "Dataset", split: EvalSplit,
                          batch_size: int = 8192) -> np.ndarray:
    """User-tower embeddings of the evaluated users from their history only (never the held-out part);
    their user-id vectors from the bundle's table (the OOV row for users it does not know)."""
    if len(split.user_rows) == 0:
        return np.zeros((0, bundle.embedding_dim), dtype=np.float32)
    profiles = bundle.pipeline.profile_matrix(dataset.users)[split.user_rows]
    x = bundle.user_inputs(profiles, *history_of(split), id_rows=bundle.user_id_rows(split.user_ids))
    return np.asarray(bundle.user_tower.predict(np.asarray(x, np.float32), batch_size=batch_size, verbose=0),
                      dtype=np.float32)


def embedding_scorer(user_emb: np.ndarray, item_emb: np.ndarray) -> ScoreFn:
    """Dot products of evaluated users' embeddings with the catalog's."""
    item_t = np.ascontiguousarray(np.asarray(item_emb, dtype=np.float32).T)
    user_emb = np.asarray(user_emb, dtype=np.float32)
    return lambda rows: user_emb[rows] @ item_t


def model_scorer(bundle: "ModelBundle", dataset: "Dataset", split: EvalSplit) -> ScoreFn:
    return embedding_scorer(model_user_embeddings(bundle, dataset, split), bundle.item_embeddings)


# ---------------------------------------------------------------- ranking
@dataclass
class SystemRanking:
    """One system's top-K lists for the evaluated users (-1 = no item) and its scores of held-out pairs."""

    name: str
    top: np.ndarray
    pair_scores: np.ndarray
    seconds: float = 0.0


def rank_system(name: str, score_fn: ScoreFn, split: EvalSplit, k_max: int, batch_users: int = 1024) -> SystemRanking:
    """Score the catalog for every evaluated user in batches, mask history items, keep the top k_max.

    The one top-k (`ml.inference.scoring.top_k_indices`, ties to the lower item row); slots
    past the last finite score (a user whose history covers nearly the catalog) hold -1.
    """
    t0 = time.time()
    n_eval, n_items = len(split.user_ids), split.n_items
    k_max = min(int(k_max), n_items)
    top = np.full((n_eval, k_max), -1, dtype=np.int64)
    pair_scores = np.zeros(len(split.pair_user), dtype=np.float64)
    pair_bounds = np.searchsorted(split.pair_user, np.arange(n_eval + 1))
    for lo in range(0, n_eval, batch_users):
        hi = min(n_eval, lo + batch_users)
        scores = np.array(score_fn(np.arange(lo, hi)), dtype=np.float32, copy=True)
        p0, p1 = pair_bounds[lo], pair_bounds[hi]
        pair_scores[p0:p1] = scores[split.pair_user[p0:p1] - lo, split.pair_item[p0:p1]]
        s0, s1 = split.seen_indptr[lo], split.seen_indptr[hi]
        local = np.repeat(np.arange(hi - lo), np.diff(split.seen_indptr[lo:hi + 1]))
        scores[local, split.seen_items[s0:s1]] = -np.inf
        best = top_k_indices(scores, k_max)
        best[~np.isfinite(np.take_along_axis(scores, best, axis=1))] = -1
        top[lo:hi] = best
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


def _mean(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    return float(v.mean()) if len(v) else float("nan")


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
        out[key] = _mean(values[mask])
    if segment == "new_items":  # novelty of the same lists, over the same users
        for k in ks:
            key = metric_key("novelty", k)
            if key in sm.per_user:
                out[key] = _mean(sm.per_user[key][mask])
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
