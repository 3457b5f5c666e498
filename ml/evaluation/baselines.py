"""Baselines scored by the same protocol, on the same split, in the same run as the model.

- popular: training-part likes per item (ties: more training-part users, then the lower row);
- random: uniform scores, reproducible per (seed, user);
- als: implicit ALS (the `implicit` package, CPU, fixed seed) on the training-part likes;
- ease: EASE (Steck 2019), closed form B = I - P / diag(P), P = (X'X + l2 I)^-1, on the
  training-part likes; skipped, with the reason, when the catalog is too large for an items x items matrix;
- oracle (synthetic data only): the generator's P(shown) x P(liked) (`SyntheticData.relevance`).

Same data as the model: the baselines fit their parameters (counts, item factors, item-item
weights) on `EvalSplit.fit_history`, the part the model was trained on, and score each user from
the whole history before the evaluated part, as the model's user tower does: EASE multiplies the
history likes by B, ALS solves each user's factors from the history likes with the item factors
fixed (fold-in, `recalculate_user`). When the test part is evaluated the history also holds the
validation part, which the model only early-stopped on; fitting the baselines on it gave them
~30% more training data than the model. Users with no history likes get the popularity ranking.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ml.evaluation.protocol import EvalSplit, ScoreFn
from ml.logs import get_logger

if TYPE_CHECKING:
    from ml.data.synthetic import SyntheticData

log = get_logger("training")

BASELINES: tuple[str, ...] = ("popular", "random", "als", "ease")
COLLABORATIVE: tuple[str, ...] = ("als", "ease")


@dataclass(frozen=True)
class AlsParams:
    """implicit ALS settings, fixed, never tuned on an evaluated part: chosen once on the VALIDATION part
    of bench/quality.py's synthetic data (2,000 x 2,000 x 100,000; low regularisation overfits there)."""

    factors: int = 64
    regularization: float = 30.0
    alpha: float = 5.0
    iterations: int = 15


@dataclass(frozen=True)
class EaseParams:
    """EASE's L2 (chosen like AlsParams) and the size guard: the items x items float64 matrix must fit."""

    l2: float = 1000.0
    max_items: int = 10_000


class BaselineSkipped(RuntimeError):
    """A baseline that cannot run on this data; the message says why."""


def popularity_scores(split: EvalSplit) -> np.ndarray:
    n = split.n_items
    fit = split.fit_history
    likes, users = fit.item_likes().astype(np.float64), fit.item_users().astype(np.float64)
    return (likes + 0.5 * users / (users.max(initial=0) + 1.0)
            + 0.25 * (1.0 - np.arange(n) / max(n, 1))).astype(np.float32)


def popularity_scorer(split: EvalSplit) -> ScoreFn:
    """Training-part likes per item, ties broken towards more training-part users, then the lower row."""
    score = popularity_scores(split)
    return lambda rows: np.broadcast_to(score, (len(rows), split.n_items)).copy()


def random_scorer(split: EvalSplit, seed: int = 0) -> ScoreFn:
    """Uniform scores per user, reproducible for a seed and a user (not for batch order)."""
    n = split.n_items

    def score(rows: np.ndarray) -> np.ndarray:
        return np.stack([np.random.default_rng([seed, int(r)]).random(n, dtype=np.float32) for r in rows]) \
            if len(rows) else np.zeros((0, n), np.float32)

    return score


def _with_popular_fallback(split: EvalSplit, user_scores: ScoreFn, likes_per_user: np.ndarray) -> ScoreFn:
    """Users without history likes (nothing for a collaborative model to use) get the popularity ranking."""
    pop = popularity_scores(split)
    empty = likes_per_user[split.user_rows] == 0

    def score(rows: np.ndarray) -> np.ndarray:
        out = np.asarray(user_scores(rows), dtype=np.float32)
        cold = empty[rows]
        if cold.any():
            out[cold] = pop
        return out

    return score


def _fit_and_history_likes(split: EvalSplit) -> tuple:
    """(training-part likes, history likes) as CSR; the same matrix twice when the split fits on its history."""
    likes = split.history.likes_matrix()
    return (likes if split.fit is None else split.fit.likes_matrix()), likes


def als_factors(split: EvalSplit, seed: int = 0, params: AlsParams = AlsParams()) -> tuple[np.ndarray, np.ndarray]:
    """implicit ALS fitted on the training-part likes (one BLAS thread: deterministic, no warning):
    (user factors of every user solved from the whole history's likes, item factors in catalog rows)."""
    return _fit_als(*_fit_and_history_likes(split), seed, params)


def _fit_als(fit_likes, history_likes, seed: int, params: AlsParams) -> tuple[np.ndarray, np.ndarray]:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    if fit_likes.nnz == 0:
        raise BaselineSkipped("the training part holds no likes to factorise")
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=params.factors, regularization=params.regularization,
                                        alpha=params.alpha, iterations=params.iterations, random_state=seed)
        model.fit(fit_likes, show_progress=False)
        users = model.user_factors if history_likes is fit_likes else \
            model.recalculate_user(np.arange(history_likes.shape[0]), history_likes)
    return np.asarray(users, np.float32), np.asarray(model.item_factors, np.float32)


def als_scorer(split: EvalSplit, seed: int = 0, params: AlsParams = AlsParams()) -> ScoreFn:
    """Scores of `als_factors`; users without a history like get the popularity order."""
    fit, likes = _fit_and_history_likes(split)
    user_factors, item_factors = _fit_als(fit, likes, seed, params)
    users = user_factors[split.user_rows]
    items_t = np.ascontiguousarray(item_factors.T)
    return _with_popular_fallback(split, lambda rows: users[rows] @ items_t, np.diff(likes.indptr))


def ease_scorer(split: EvalSplit, params: EaseParams = EaseParams()) -> ScoreFn:
    """EASE's B from the training-part likes, applied to each user's history likes; BaselineSkipped when the
    catalog exceeds `params.max_items`."""
    n = split.n_items
    if n > params.max_items:
        gib = n * n * 8 / 2**30
        raise BaselineSkipped(f"the catalog has {n:,} items: EASE needs a dense {n:,} x {n:,} matrix ({gib:.1f} GiB "
                              f"in float64, inverted in O(n^3)), over its limit of {params.max_items:,} items")
    fit, likes = _fit_and_history_likes(split)
    if fit.nnz == 0:
        raise BaselineSkipped("the training part holds no likes to learn item-item weights from")
    gram = np.asarray((fit.T @ fit).todense(), dtype=np.float64)
    gram[np.diag_indices(n)] += params.l2
    p = np.linalg.inv(gram)
    b = (-p / np.diag(p)[None, :]).astype(np.float32)
    b[np.diag_indices(n)] = 0.0
    user_likes = likes[split.user_rows]
    return _with_popular_fallback(split, lambda rows: np.asarray(user_likes[rows] @ b, np.float32),
                                  np.diff(likes.indptr))


def oracle_scorer(synthetic: "SyntheticData", split: EvalSplit) -> ScoreFn | None:
    """The generator's P(shown) x P(liked) (`SyntheticData.relevance`); None when users or items do not map onto it."""
    gen_users = pd.Index(synthetic.dataset.users["user_id"].astype(str))
    gen_items = pd.Index(synthetic.dataset.items["item_id"].astype(str))
    u = gen_users.get_indexer(pd.Index(split.user_ids.astype(str)))
    i = gen_items.get_indexer(pd.Index(split.item_ids))
    if (u < 0).any() or (i < 0).any():
        log.warning("oracle skipped: %d users and %d catalog items are not in the generator's data",
                    int((u < 0).sum()), int((i < 0).sum()))
        return None
    return lambda rows: synthetic.relevance(u[rows])[:, i].astype(np.float32)


@dataclass
class Baselines:
    """Score functions of the baselines that ran, the reason for each that did not, fit seconds."""

    scorers: dict[str, ScoreFn]
    skipped: dict[str, str]
    fit_seconds: dict[str, float]


def parse_baselines(names: Sequence[str] | str | None) -> tuple[str, ...]:
    """Validate baseline names ("popular,als" or a list); None means all."""
    if names is None:
        return BASELINES
    if isinstance(names, str):
        names = [n.strip().lower() for n in names.split(",") if n.strip()]
    out = tuple(dict.fromkeys(str(n).strip().lower() for n in names))
    unknown = [n for n in out if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}: choose from {list(BASELINES)} (comma-separated)")
    return out


def baseline_scorers(split: EvalSplit, names: Sequence[str] = BASELINES, seed: int = 0,
                     als: AlsParams = AlsParams(), ease: EaseParams = EaseParams()) -> Baselines:
    """Fit the named baselines on the split's history; a baseline that cannot run is skipped and logged."""
    scorers: dict[str, ScoreFn] = {}
    skipped: dict[str, str] = {}
    fit_seconds: dict[str, float] = {}
    makers = {"popular": lambda: popularity_scorer(split), "random": lambda: random_scorer(split, seed),
              "als": lambda: als_scorer(split, seed, als), "ease": lambda: ease_scorer(split, ease)}
    for name in parse_baselines(names):
        t0 = time.time()
        try:
            scorers[name] = makers[name]()
        except BaselineSkipped as exc:
            skipped[name] = str(exc)
            log.warning("baseline %s skipped: %s", name, exc)
            continue
        fit_seconds[name] = time.time() - t0
    return Baselines(scorers, skipped, fit_seconds)


__all__ = ["AlsParams", "BASELINES", "BaselineSkipped", "Baselines", "COLLABORATIVE", "EaseParams", "als_scorer",
           "baseline_scorers", "ease_scorer", "oracle_scorer", "parse_baselines", "popularity_scorer",
           "random_scorer"]
