"""Synthetic swipe data with a known ground truth, for tests, demos, benchmarks and drift experiments.

Why: a recommender pipeline needs data where (a) a good model provably can do better than
popularity, (b) the best possible ranking is known (the `oracle`), (c) collaborative filtering
and content have different jobs, and (d) a controlled distribution shift can be switched on.

Generative story. Users have hidden tastes over topics (sparse Dirichlet, nudged by country and
age band so profiles carry signal for cold users); items have one dominant topic (+ a small
mixture) that also drives their title/description words, tags, genre, maker, price and duration
(`ml.data.synthetic_items`). Users and items also belong to hidden communities that NO content
reveals (a second sparse taste vector and a dominant community per item). The affinity of a
user for an item is

    (1 - collaborative_weight) * topic_taste . item_topics + collaborative_weight * community_taste . item_communities

The app shows items with probability mixing a Zipf popularity term with an affinity-targeted
term, and the user likes an item with probability sigmoid(a * affinity + b * popularity + c).
With collaborative_weight = 0 (the default) likes depend on content alone and the data is the
same as before the knob existed; at 0.5 content explains only half of the taste, and only who
liked what (collaborative filtering, ID embeddings) can recover the rest. `targeted_exposure`
is the share of exposures aimed at tastes (0.5 by default; real recommenders show mostly
taste-targeted items, 0.8 gives collaborative filtering its real-data edge over popularity).
The oracle ranks by `relevance` = P(shown) x P(liked), using topics, communities and popularity:
the chance an item turns up as a held-out like, the ceiling of the offline metrics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml.data.loaders import read_table_file, write_folder
from ml.data.schema import Dataset
from ml.data.synthetic_items import COUNTRIES, COUNTRY_WEIGHTS, NEW_GENRE, make_items, topic_table
from ml.data.validation import validate_dataset
from ml.logs import get_logger

log = get_logger("training")

EXPOSURE_BETA, EXPOSURE_POP_ALPHA, TARGET_GAMMA = 12.0, 1.0, 0.3
LIKE_A, LIKE_B, TARGET_LIKE_RATE = 10.0, 0.25, 0.4


@dataclass
class SyntheticData:
    """A generated dataset plus the generator's ground truth."""

    dataset: Dataset
    oracle: pd.DataFrame
    user_tastes: np.ndarray
    item_topics: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    # Standardised log popularity per item: the small popularity term of the like probability.
    item_pop_z: np.ndarray | None = None
    # Hidden communities (not revealed by any content); None when collaborative_weight is 0.
    user_communities: np.ndarray | None = None
    item_communities: np.ndarray | None = None
    item_popularity: np.ndarray | None = None  # the Zipf popularity behind exposures (sums to 1)

    def affinity(self, user_index: np.ndarray | None = None) -> np.ndarray:
        """The taste part of the like logit for users (rows, default all) x all items: topics and communities mixed."""
        rows = slice(None) if user_index is None else np.asarray(user_index)
        w = float(self.params.get("collaborative_weight", 0.0))
        return _affinity(self.user_tastes[rows], self.item_topics, w,
                         None if self.user_communities is None else self.user_communities[rows], self.item_communities)

    def like_probability(self, user_index: np.ndarray | None = None) -> np.ndarray:
        """True P(like) for users (rows of `user_tastes`, default all) x all items, the oracle's score."""
        pop_z = self.item_pop_z if self.item_pop_z is not None else np.zeros(self.item_topics.shape[0])
        p = self.params
        return _sigmoid(p["like_a"] * self.affinity(user_index) + p["like_b"] * pop_z[None, :] + p["like_c"])

    def exposure_probability(self, user_index: np.ndarray | None = None) -> np.ndarray:
        """P(the app shows item i) per draw for users x all items: the popularity / affinity-targeted mixture."""
        if self.item_popularity is None:
            return np.full((len(self.user_tastes) if user_index is None else len(user_index), len(self.item_topics)),
                           1.0 / len(self.item_topics))
        return _exposure(self.affinity(user_index), self.item_popularity, float(self.params.get("exposure_mix", 0.5)))

    def relevance(self, user_index: np.ndarray | None = None) -> np.ndarray:
        """P(shown) x P(liked): how likely an item turns up as a held-out like, the oracle's score.

        True like probability alone is no ceiling for offline metrics on logged swipes: an item the
        app would rarely show is rarely a held-out like, however much the user would like it.
        """
        return self.exposure_probability(user_index) * self.like_probability(user_index)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _affinity(tastes: np.ndarray, topics: np.ndarray, weight: float, communities: np.ndarray | None,
              item_communities: np.ndarray | None) -> np.ndarray:
    aff = tastes @ topics.T
    if weight > 0 and communities is not None and item_communities is not None:
        aff = (1.0 - weight) * aff + weight * (communities @ item_communities.T)
    return aff


def _exposure(aff: np.ndarray, popularity: np.ndarray, targeted_share: float) -> np.ndarray:
    """Per-draw exposure probabilities: (1 - share) x popularity + share x affinity-targeted (x popularity^0.3)."""
    pop_exposure = popularity ** EXPOSURE_POP_ALPHA
    pop_exposure = pop_exposure / pop_exposure.sum()
    targeted = np.exp(EXPOSURE_BETA * (aff - aff.max(axis=1, keepdims=True))) * popularity[None, :] ** TARGET_GAMMA
    targeted /= targeted.sum(axis=1, keepdims=True)
    return (1.0 - targeted_share) * pop_exposure[None, :] + targeted_share * targeted


def _ids(prefix: str, n: int) -> np.ndarray:
    width = max(5, len(str(n)))
    return np.array([f"{prefix}{i:0{width}d}" for i in range(1, n + 1)], dtype=object)


def _interaction_counts(rng: np.random.Generator, n_users: int, n_items: int, total: int) -> np.ndarray:
    """Per-user interaction counts summing to `total` (capped): ~15% cold users with 1-4, a heavy tail."""
    cap = max(5, int(n_items * 0.6))
    cold = rng.random(n_users) < 0.15
    counts = np.where(cold, rng.integers(1, 5, size=n_users), 5).astype(np.int64)
    counts = np.minimum(counts, cap)
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    activity[cold] = 0.0
    remaining = total - int(counts.sum())
    if remaining > 0 and activity.sum() > 0:
        counts += rng.multinomial(remaining, activity / activity.sum())
    # Redistribute what the cap cuts off to warm users still under it (a few passes).
    for _ in range(20):
        over = np.maximum(counts - cap, 0)
        counts = np.minimum(counts, cap)
        spare = int(over.sum())
        room = np.where(cold, 0, cap - counts)
        if spare == 0 or room.sum() == 0:
            break
        weights = activity * (room > 0)
        if weights.sum() == 0:
            weights = room.astype(float)
        counts += rng.multinomial(spare, weights / weights.sum())
    return np.minimum(counts, cap)


# ------------------------------------------------------------------ hidden structure
@dataclass
class _Users:
    tastes: np.ndarray
    country_idx: np.ndarray
    ages: np.ndarray


def _users(rng: np.random.Generator, n_users: int, n_topics: int, shift: float) -> _Users:
    """Topic tastes, sparse, nudged by country and age band (profiles carry signal for cold users)."""
    country_idx = rng.choice(len(COUNTRIES), size=n_users, p=COUNTRY_WEIGHTS)
    ages = np.clip(np.round(rng.normal(36.0, 12.0, size=n_users)), 18, 70).astype(np.int64)
    age_band = np.digitize(ages, [30, 45])
    country_fav = (rng.permutation(n_topics)[: len(COUNTRIES)] if n_topics >= len(COUNTRIES)
                   else rng.integers(0, n_topics, len(COUNTRIES)))
    age_fav = rng.permutation(n_topics)[:3]
    alpha = np.full((n_users, n_topics), 0.15)
    alpha[np.arange(n_users), country_fav[country_idx]] += 0.35
    alpha[np.arange(n_users), age_fav[age_band]] += 0.25
    tastes = rng.standard_gamma(alpha)
    tastes /= tastes.sum(axis=1, keepdims=True)
    if shift > 0:  # tastes rotate partly towards the neighbouring topic
        tastes = (1.0 - 0.5 * shift) * tastes + 0.5 * shift * np.roll(tastes, 1, axis=1)
    return _Users(tastes, country_idx, ages)


@dataclass
class _Items:
    dominant: np.ndarray
    topics: np.ndarray
    second: np.ndarray
    popularity: np.ndarray
    pop_z: np.ndarray


def _items(rng: np.random.Generator, n_items: int, n_topics: int, topic_share: np.ndarray, tilt: np.ndarray,
           shift: float) -> _Items:
    """A dominant topic (+ a small mixture) per item and a Zipf popularity over a random order of items."""
    dominant = rng.choice(n_topics, size=n_items, p=topic_share)
    mixture = rng.dirichlet(np.ones(n_topics), size=n_items)
    topics = 0.2 * mixture
    topics[np.arange(n_items), dominant] += 0.8
    masked = mixture.copy()
    masked[np.arange(n_items), dominant] = -1.0
    ranks = rng.permutation(n_items) + 1
    popularity = ranks.astype(np.float64) ** -1.0
    popularity *= np.exp(1.5 * shift * tilt[dominant])  # tilted by topic under shift
    popularity /= popularity.sum()
    log_pop = np.log(popularity)
    pop_z = (log_pop - log_pop.mean()) / (log_pop.std() + 1e-12)
    return _Items(dominant, topics, masked.argmax(axis=1), popularity, pop_z)


def _communities(seed: int, n_users: int, n_items: int, n_communities: int) -> tuple[np.ndarray, np.ndarray]:
    """Hidden community tastes per user and memberships per item, from their own random stream
    (so collaborative_weight = 0 leaves every other draw, hence the data, unchanged)."""
    rng = np.random.default_rng([seed, 0xC0FFEE])
    tastes = rng.standard_gamma(np.full((n_users, n_communities), 0.2))
    tastes /= np.maximum(tastes.sum(axis=1, keepdims=True), 1e-12)
    home = rng.integers(0, n_communities, size=n_items)
    members = 0.2 * rng.dirichlet(np.ones(n_communities), size=n_items)
    members[np.arange(n_items), home] += 0.8
    return tastes, members


# ------------------------------------------------------------------ interactions
def _exposures(rng: np.random.Generator, aff_rows: Any, n_users: int, popularity: np.ndarray,
               counts: np.ndarray, targeted_share: float) -> tuple[np.ndarray, np.ndarray]:
    """(user rows, item rows) shown: Gumbel top-k = sampling without replacement from each user's
    mix of popularity and affinity-targeted exposure, `counts[u]` items per user."""
    n_items = len(popularity)
    chunk = max(1, 2_000_000 // n_items)
    user_rows: list[np.ndarray] = []
    item_cols: list[np.ndarray] = []
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        aff = aff_rows(lo, hi)
        keys = np.log(_exposure(aff, popularity, targeted_share)) + rng.gumbel(size=aff.shape)
        c = counts[lo:hi]
        kmax = int(c.max())
        # sampling, not ranking: the kmax largest keys (continuous, never tied), in key order
        top = np.argpartition(-keys, kmax - 1, axis=1)[:, :kmax] if kmax < n_items else \
            np.tile(np.arange(n_items), (hi - lo, 1))
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1), axis=1)
        keep = np.arange(kmax)[None, :] < c[:, None]
        user_rows.append(np.broadcast_to(np.arange(lo, hi)[:, None], top.shape)[keep])
        item_cols.append(top[keep])
    return np.concatenate(user_rows), np.concatenate(item_cols)


def _decisions(rng: np.random.Generator, affinity: np.ndarray, pop_z: np.ndarray) -> tuple[np.ndarray, float]:
    """Likes ~ sigmoid(a * affinity + b * popularity + c), c solved so the like rate hits its target."""
    logits_wo_c = LIKE_A * affinity + LIKE_B * pop_z
    lo_c, hi_c = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo_c + hi_c)
        if _sigmoid(logits_wo_c + mid).mean() > TARGET_LIKE_RATE:
            hi_c = mid
        else:
            lo_c = mid
    like_c = 0.5 * (lo_c + hi_c)
    return rng.random(len(affinity)) < _sigmoid(logits_wo_c + like_c), like_c


def _timestamps(rng: np.random.Generator, u_idx: np.ndarray, n_users: int, start_ts: pd.Timestamp,
                days: int) -> np.ndarray:
    """Each user is active in a window; swipes uniform inside it."""
    total_s = float(days) * 86400.0
    win_start = rng.random(n_users) * 0.9 * total_s
    win_end = win_start + rng.random(n_users) * (total_s - win_start)
    secs = win_start[u_idx] + rng.random(len(u_idx)) * (win_end[u_idx] - win_start[u_idx])
    return start_ts.to_datetime64().astype("datetime64[s]") + np.floor(secs).astype(np.int64).astype("timedelta64[s]")


def _check_args(n_users: int, n_items: int, n_interactions: int, n_topics: int, shift: float,
                collaborative_weight: float, n_communities: int, targeted_exposure: float) -> None:
    if not 0.0 <= targeted_exposure <= 1.0:
        raise ValueError(f"targeted_exposure must be in [0, 1] (the share of exposures aimed at tastes), got "
                         f"{targeted_exposure}")
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must be in [0, 1], got {shift}")
    if not 0.0 <= collaborative_weight <= 1.0:
        raise ValueError(f"collaborative_weight must be in [0, 1] (0: likes from content alone), got {collaborative_weight}")
    if n_users < 1 or n_items < 1 or n_interactions < 1 or n_topics < 2 or n_communities < 2:
        raise ValueError("need n_users, n_items, n_interactions >= 1 and n_topics, n_communities >= 2")


def generate_synthetic(
    n_users: int = 1000,
    n_items: int = 500,
    n_interactions: int = 20000,
    seed: int = 0,
    n_topics: int = 8,
    shift: float = 0.0,
    oracle_k: int = 100,
    start: str = "2025-01-01",
    days: int = 180,
    collaborative_weight: float = 0.0,
    n_communities: int = 16,
    targeted_exposure: float = 0.5,
) -> SyntheticData:
    """Generate users, items and like/nope swipes whose structure a two-tower model can learn.

    Deterministic for a seed. `shift` in [0, 1] moves prices, topic popularity, release dates,
    genres and user tastes so monitoring can detect drift; shift=0 is the reference data.
    `collaborative_weight` in [0, 1] is the share of taste carried by hidden communities that
    no content reveals (0: likes from content alone). `targeted_exposure` is the share of what
    the app shows that is aimed at the user's tastes (the rest follows popularity).
    """
    _check_args(n_users, n_items, n_interactions, n_topics, shift, collaborative_weight, n_communities,
                targeted_exposure)
    rng = np.random.default_rng(seed)
    topics = topic_table(n_topics)
    start_ts = pd.Timestamp(start)
    if start_ts.tzinfo is not None:
        start_ts = start_ts.tz_convert("UTC").tz_localize(None)
    tilt = np.linspace(-1.0, 1.0, n_topics)  # shift favours the last topics
    topic_share = rng.dirichlet(np.full(n_topics, 20.0)) * np.exp(1.5 * shift * tilt)
    users = _users(rng, n_users, n_topics, shift)
    items = _items(rng, n_items, n_topics, topic_share / topic_share.sum(), tilt, shift)
    user_comm = item_comm = None
    if collaborative_weight > 0:
        user_comm, item_comm = _communities(seed, n_users, n_items, n_communities)

    def aff_rows(lo: int, hi: int) -> np.ndarray:
        return _affinity(users.tastes[lo:hi], items.topics, collaborative_weight,
                         None if user_comm is None else user_comm[lo:hi], item_comm)

    counts = _interaction_counts(rng, n_users, n_items, n_interactions)
    u_idx, i_idx = _exposures(rng, aff_rows, n_users, items.popularity, counts, targeted_exposure)
    pair_aff = np.einsum("ij,ij->i", users.tastes[u_idx], items.topics[i_idx])
    if user_comm is not None and item_comm is not None:
        pair_aff = (1.0 - collaborative_weight) * pair_aff + collaborative_weight * np.einsum(
            "ij,ij->i", user_comm[u_idx], item_comm[i_idx])
    liked, like_c = _decisions(rng, pair_aff, items.pop_z[i_idx])
    timestamps = _timestamps(rng, u_idx, n_users, start_ts, days)

    user_ids, item_ids = _ids("u", n_users), _ids("i", n_items)
    interactions = pd.DataFrame({"user_id": user_ids[u_idx], "item_id": item_ids[i_idx],
                                 "decision": np.where(liked, "like", "nope").astype(object),
                                 "timestamp": timestamps.astype("datetime64[ns]")})
    users_frame = pd.DataFrame({"user_id": user_ids, "age": users.ages,
                                "country": np.array(COUNTRIES, dtype=object)[users.country_idx]})
    items_frame = make_items(rng, topics, item_ids, items.dominant, items.second, shift, start_ts)
    dataset = validate_dataset(users_frame, items_frame, interactions,
                               sources={"users": "synthetic", "items": "synthetic", "interactions": "synthetic"})
    params: dict[str, Any] = {
        "n_users": n_users, "n_items": n_items, "n_interactions": n_interactions,
        "n_interactions_generated": int(len(interactions)), "seed": seed, "n_topics": n_topics, "shift": float(shift),
        "oracle_k": oracle_k, "start": str(start), "days": days, "collaborative_weight": float(collaborative_weight),
        "n_communities": n_communities, "targeted_exposure": float(targeted_exposure), "zipf_s": 1.0,
        "exposure_mix": float(targeted_exposure), "exposure_beta": EXPOSURE_BETA,
        "exposure_pop_alpha": EXPOSURE_POP_ALPHA, "like_a": LIKE_A, "like_b": LIKE_B, "like_c": float(like_c),
        "target_like_rate": TARGET_LIKE_RATE, "like_rate": float(liked.mean()),
        "cold_user_share": float((counts < 5).mean()),
        "genres": [t[0] for t in topics] + ([NEW_GENRE] if shift > 0 else []),
    }
    data = SyntheticData(dataset=dataset, oracle=pd.DataFrame(), user_tastes=users.tastes, item_topics=items.topics,
                         params=params, item_pop_z=items.pop_z, user_communities=user_comm, item_communities=item_comm,
                         item_popularity=items.popularity)
    data.oracle = _oracle(data, u_idx, i_idx, user_ids, item_ids, oracle_k)
    log.info("synthetic data: %d users, %d items, %d interactions, like rate %.3f, collaborative weight %.2f, "
             "shift %.2f (seed %d)", n_users, n_items, len(interactions), params["like_rate"], collaborative_weight,
             shift, seed)
    return data


def _oracle(data: SyntheticData, u_idx: np.ndarray, i_idx: np.ndarray, user_ids: np.ndarray, item_ids: np.ndarray,
            k: int) -> pd.DataFrame:
    """Top-k unseen items per user by `relevance` (shown x liked): the best possible recommendation.

    The ranking is a full stable sort of each user's scores (ties to the lower item row, the
    convention of `ml.inference.scoring.top_k_indices`, which this layer may not import)."""
    n_users, n_items = data.user_tastes.shape[0], data.item_topics.shape[0]
    order = np.argsort(u_idx, kind="stable")
    su, si = u_idx[order], i_idx[order]
    bounds = np.searchsorted(su, np.arange(n_users + 1))
    chunk = max(1, 2_000_000 // n_items)
    kk = min(k, n_items)
    out_u, out_i, out_s, out_r = [], [], [], []
    for lo in range(0, n_users if kk > 0 else 0, chunk):
        hi = min(n_users, lo + chunk)
        score = data.relevance(np.arange(lo, hi))
        seen = slice(bounds[lo], bounds[hi])
        score[su[seen] - lo, si[seen]] = -np.inf
        top = np.argsort(-score, axis=1, kind="stable")[:, :kk]
        top_scores = np.take_along_axis(score, top, axis=1)
        valid = np.isfinite(top_scores)
        out_u.append(np.broadcast_to(np.arange(lo, hi)[:, None], top.shape)[valid])
        out_i.append(top[valid])
        out_s.append(top_scores[valid])
        out_r.append(np.broadcast_to(np.arange(1, kk + 1)[None, :], top.shape)[valid])
    if not out_u:
        return pd.DataFrame({"user_id": [], "item_id": [], "score": [], "rank": []})
    return pd.DataFrame({"user_id": user_ids[np.concatenate(out_u)], "item_id": item_ids[np.concatenate(out_i)],
                         "score": np.concatenate(out_s).astype(np.float64),
                         "rank": np.concatenate(out_r).astype(np.int64)})


def write_synthetic(data: SyntheticData, path: str | Path, fmt: str = "csv") -> dict[str, Path]:
    """Write the dataset plus `oracle.<fmt>` and `generator.json` so experiments can score against truth."""
    folder = Path(path)
    written = write_folder(data.dataset, folder, fmt=fmt)
    oracle_path = folder / f"oracle.{fmt.lower().lstrip('.')}"
    if oracle_path.suffix == ".parquet":
        data.oracle.to_parquet(oracle_path, index=False)
    else:
        data.oracle.to_csv(oracle_path, index=False)
    written["oracle"] = oracle_path
    gen_path = folder / "generator.json"
    gen_path.write_text(json.dumps(data.params, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    written["generator"] = gen_path
    return written


def load_oracle(path: str | Path) -> pd.DataFrame | None:
    """The generator's oracle ranking from a folder written by `write_synthetic`, or None."""
    folder = Path(path)
    for suffix in (".parquet", ".csv", ".csv.gz"):
        file = folder / f"oracle{suffix}"
        if file.is_file():
            frame = read_table_file(file)
            frame["user_id"] = frame["user_id"].astype(str)
            frame["item_id"] = frame["item_id"].astype(str)
            return frame
    return None


__all__ = ["SyntheticData", "generate_synthetic", "write_synthetic", "load_oracle", "NEW_GENRE"]
