"""Synthetic swipe data with a known ground truth, for tests, demos and drift experiments.

Why: a recommender pipeline needs data where (a) a good model provably can do
better than popularity, (b) the best possible ranking is known (the `oracle`), and
(c) a controlled distribution shift can be switched on to exercise monitoring.

Generative story: users have hidden tastes over topics (sparse Dirichlet, nudged by
country and age band so profiles carry signal for cold users); items have one
dominant topic (+ a small mixture) that also drives title/description words, tags,
genre, maker, price and duration. The app shows items with probability mixing a
Zipf popularity term with a taste-targeted term, and the user likes an item with
probability sigmoid(a * taste.topic + b * popularity + c): taste dominates.
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
from ml.data.validation import validate_dataset
from ml.logs import get_logger

log = get_logger("training")

# One row per topic: genre, 15 topic words, 6 tags. Distinct words so TF-IDF can recover topics.
_TOPICS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("scifi", ("galaxy", "rocket", "orbit", "alien", "starship", "planet", "nebula", "astronaut",
               "cosmic", "asteroid", "warp", "lunar", "satellite", "comet", "android"),
     ("space", "future", "aliens", "robots", "interstellar", "cyber")),
    ("food", ("recipe", "kitchen", "chef", "pasta", "bakery", "spice", "flavor", "dessert",
              "grill", "soup", "noodle", "pastry", "garlic", "tasting", "brunch"),
     ("cooking", "baking", "vegan", "streetfood", "dessert", "wine")),
    ("thriller", ("detective", "murder", "suspect", "heist", "alibi", "witness", "clue", "crime",
                  "killer", "forensic", "interrogation", "hostage", "conspiracy", "fugitive", "sniper"),
     ("mystery", "crime", "noir", "suspense", "whodunit", "spy")),
    ("romance", ("love", "wedding", "kiss", "heartbreak", "romantic", "valentine", "bride",
                 "sweetheart", "affair", "passion", "date", "engagement", "flirt", "honeymoon", "crush"),
     ("love", "drama", "feelgood", "relationships", "wedding", "heartwarming")),
    ("sports", ("football", "stadium", "goal", "champion", "marathon", "tennis", "coach", "league",
                "tournament", "sprint", "basketball", "referee", "trophy", "athlete", "playoff"),
     ("sports", "fitness", "competition", "teamwork", "olympics", "training")),
    ("music", ("guitar", "concert", "melody", "band", "album", "drummer", "symphony", "vinyl",
               "singer", "chorus", "jazz", "rhythm", "lyrics", "festival", "piano"),
     ("music", "live", "rock", "jazz", "classical", "indie")),
    ("documentary", ("forest", "ocean", "wildlife", "mountain", "river", "glacier", "rainforest",
                     "safari", "desert", "volcano", "coral", "migration", "savanna", "canyon", "reef"),
     ("nature", "wildlife", "outdoors", "planetearth", "ecology", "travel")),
    ("history", ("empire", "ancient", "medieval", "pharaoh", "castle", "revolution", "dynasty",
                 "knight", "monarch", "archive", "colonial", "battle", "roman", "viking", "treaty"),
     ("history", "war", "biography", "ancient", "royalty", "archaeology")),
    ("tech", ("software", "startup", "algorithm", "laptop", "coding", "silicon", "gadget", "network",
              "database", "processor", "smartphone", "cloud", "hacker", "compiler", "blockchain"),
     ("technology", "programming", "gadgets", "startups", "ai", "innovation")),
    ("fantasy", ("dragon", "wizard", "sorcery", "elf", "kingdom", "quest", "enchanted", "goblin",
                 "prophecy", "amulet", "unicorn", "spellbook", "dwarf", "realm", "potion"),
     ("magic", "epic", "dragons", "adventure", "myth", "sword")),
    ("horror", ("ghost", "haunted", "zombie", "vampire", "demon", "curse", "nightmare", "cemetery",
                "creepy", "poltergeist", "werewolf", "exorcism", "skeleton", "blood", "witch"),
     ("horror", "scary", "supernatural", "gore", "halloween", "paranormal")),
    ("comedy", ("joke", "sitcom", "prank", "laugh", "parody", "standup", "satire", "blooper",
                "goofy", "comedian", "slapstick", "hilarious", "roast", "improv", "punchline"),
     ("funny", "comedy", "lighthearted", "family", "sketch", "satire")),
)
_NOISE_WORDS: tuple[str, ...] = (
    "the", "new", "story", "great", "best", "world", "life", "day", "people", "classic", "amazing",
    "episode", "series", "guide", "ultimate", "edition", "special", "first", "night", "journey",
)
_GENERIC_TAGS: tuple[str, ...] = ("bestseller", "staff-pick", "trending", "award-winner", "new-release")
_COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "CA")
_COUNTRY_WEIGHTS = np.array([0.30, 0.12, 0.12, 0.10, 0.10, 0.12, 0.08, 0.06])
_MAKER_FIRST = ("Blue", "Red", "Iron", "Silver", "Golden", "North", "Lucky", "Quiet", "Wild", "Bright",
                "Stone", "Polar", "Velvet", "Rapid", "Hidden", "Cedar", "Amber", "Cobalt", "Echo", "Pixel")
_MAKER_SECOND = ("Works", "Studio", "House", "Labs", "Media", "Press", "Pictures", "Collective")
NEW_GENRE = "new_wave"


def _topic_table(n_topics: int) -> list[tuple[str, list[str], list[str]]]:
    """Genre, words, tags per topic; beyond the 12 built-in topics, made-up but distinct words."""
    out: list[tuple[str, list[str], list[str]]] = []
    for k in range(n_topics):
        if k < len(_TOPICS):
            genre, words, tags = _TOPICS[k]
            out.append((genre, list(words), list(tags)))
        else:
            out.append(
                (f"genre{k}", [f"topic{k}word{j}" for j in range(15)], [f"topic{k}tag{j}" for j in range(6)])
            )
    return out


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

    def like_probability(self, user_index: np.ndarray | None = None) -> np.ndarray:
        """True P(like) for users (rows of `user_tastes`, default all) x all items, the oracle's score."""
        tastes = self.user_tastes if user_index is None else self.user_tastes[np.asarray(user_index)]
        pop_z = self.item_pop_z if self.item_pop_z is not None else np.zeros(self.item_topics.shape[0])
        return _like_prob(tastes, self.item_topics, pop_z, self.params["like_a"], self.params["like_b"], self.params["like_c"])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _like_prob(tastes: np.ndarray, topics: np.ndarray, pop_z: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return _sigmoid(a * (tastes @ topics.T) + b * pop_z[None, :] + c)


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
) -> SyntheticData:
    """Generate users, items and like/nope swipes whose structure a two-tower model can learn.

    Deterministic for a seed. `shift` in [0, 1] moves prices, topic popularity, release dates,
    genres and user tastes so monitoring can detect drift; shift=0 is the reference data.
    """
    if not 0.0 <= shift <= 1.0:
        raise ValueError(f"shift must be in [0, 1], got {shift}")
    if n_users < 1 or n_items < 1 or n_interactions < 1 or n_topics < 2:
        raise ValueError("need n_users, n_items, n_interactions >= 1 and n_topics >= 2")
    rng = np.random.default_rng(seed)
    topics = _topic_table(n_topics)
    start_ts = pd.Timestamp(start)
    if start_ts.tzinfo is not None:
        start_ts = start_ts.tz_convert("UTC").tz_localize(None)

    # ---- hidden structure
    tilt = np.linspace(-1.0, 1.0, n_topics)  # shift favours the last topics
    topic_share = rng.dirichlet(np.full(n_topics, 20.0)) * np.exp(1.5 * shift * tilt)
    topic_share /= topic_share.sum()

    country_idx = rng.choice(len(_COUNTRIES), size=n_users, p=_COUNTRY_WEIGHTS)
    ages = np.clip(np.round(rng.normal(36.0, 12.0, size=n_users)), 18, 70).astype(np.int64)
    age_band = np.digitize(ages, [30, 45])
    country_fav = rng.permutation(n_topics)[: len(_COUNTRIES)] if n_topics >= len(_COUNTRIES) else rng.integers(0, n_topics, len(_COUNTRIES))
    age_fav = rng.permutation(n_topics)[:3]
    alpha = np.full((n_users, n_topics), 0.15)
    alpha[np.arange(n_users), country_fav[country_idx]] += 0.35
    alpha[np.arange(n_users), age_fav[age_band]] += 0.25
    tastes = rng.standard_gamma(alpha)
    tastes /= tastes.sum(axis=1, keepdims=True)
    if shift > 0:  # tastes rotate partly towards the neighbouring topic
        tastes = (1.0 - 0.5 * shift) * tastes + 0.5 * shift * np.roll(tastes, 1, axis=1)

    dominant = rng.choice(n_topics, size=n_items, p=topic_share)
    mixture = rng.dirichlet(np.ones(n_topics), size=n_items)
    item_topics = 0.2 * mixture
    item_topics[np.arange(n_items), dominant] += 0.8
    masked = mixture.copy()
    masked[np.arange(n_items), dominant] = -1.0
    second = masked.argmax(axis=1)  # largest non-dominant topic, for description words

    # Zipf-like popularity over a random order of items, tilted by topic under shift.
    zipf_s = 1.0
    ranks = rng.permutation(n_items) + 1
    popularity = ranks.astype(np.float64) ** -zipf_s
    popularity *= np.exp(1.5 * shift * tilt[dominant])
    popularity /= popularity.sum()
    log_pop = np.log(popularity)
    pop_z = (log_pop - log_pop.mean()) / (log_pop.std() + 1e-12)

    # ---- exposures: Gumbel top-k = sampling without replacement from each user's exposure distribution
    counts = _interaction_counts(rng, n_users, n_items, n_interactions)
    mix, beta, pop_alpha, target_gamma = 0.5, 12.0, 1.0, 0.3
    pop_exposure = popularity**pop_alpha
    pop_exposure /= pop_exposure.sum()
    chunk = max(1, 2_000_000 // n_items)
    user_rows: list[np.ndarray] = []
    item_cols: list[np.ndarray] = []
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        aff = tastes[lo:hi] @ item_topics.T
        targeted = np.exp(beta * (aff - aff.max(axis=1, keepdims=True))) * popularity[None, :] ** target_gamma
        targeted /= targeted.sum(axis=1, keepdims=True)
        p = (1.0 - mix) * pop_exposure[None, :] + mix * targeted
        keys = np.log(p) + rng.gumbel(size=p.shape)
        c = counts[lo:hi]
        kmax = int(c.max())
        if kmax < n_items:
            top = np.argpartition(-keys, kmax - 1, axis=1)[:, :kmax]
        else:
            top = np.tile(np.arange(n_items), (hi - lo, 1))
        top_keys = np.take_along_axis(keys, top, axis=1)
        top = np.take_along_axis(top, np.argsort(-top_keys, axis=1), axis=1)
        keep = np.arange(kmax)[None, :] < c[:, None]
        user_rows.append(np.broadcast_to(np.arange(lo, hi)[:, None], top.shape)[keep])
        item_cols.append(top[keep])
    u_idx = np.concatenate(user_rows)
    i_idx = np.concatenate(item_cols)

    # ---- decisions: taste dominates; c is solved so the like rate hits the target
    like_a, like_b, target_like_rate = 10.0, 0.25, 0.4
    logits_wo_c = like_a * np.einsum("ij,ij->i", tastes[u_idx], item_topics[i_idx]) + like_b * pop_z[i_idx]
    lo_c, hi_c = -30.0, 30.0
    for _ in range(60):
        mid = 0.5 * (lo_c + hi_c)
        if _sigmoid(logits_wo_c + mid).mean() > target_like_rate:
            hi_c = mid
        else:
            lo_c = mid
    like_c = 0.5 * (lo_c + hi_c)
    liked = rng.random(len(u_idx)) < _sigmoid(logits_wo_c + like_c)

    # ---- timestamps: each user is active in a window; swipes uniform inside it, increasing per user
    total_s = float(days) * 86400.0
    win_start = rng.random(n_users) * 0.9 * total_s
    win_end = win_start + rng.random(n_users) * (total_s - win_start)
    frac = rng.random(len(u_idx))
    secs = win_start[u_idx] + frac * (win_end[u_idx] - win_start[u_idx])
    secs = np.floor(secs).astype(np.int64)
    timestamps = start_ts.to_datetime64().astype("datetime64[s]") + secs.astype("timedelta64[s]")

    user_ids = _ids("u", n_users)
    item_ids = _ids("i", n_items)
    interactions = pd.DataFrame(
        {
            "user_id": user_ids[u_idx],
            "item_id": item_ids[i_idx],
            "decision": np.where(liked, "like", "nope").astype(object),
            "timestamp": timestamps.astype("datetime64[ns]"),
        }
    )

    users = pd.DataFrame(
        {"user_id": user_ids, "age": ages, "country": np.array(_COUNTRIES, dtype=object)[country_idx]}
    )
    items = _make_items(rng, topics, item_ids, dominant, second, shift, start_ts, tilt)

    dataset = validate_dataset(
        users, items, interactions, sources={"users": "synthetic", "items": "synthetic", "interactions": "synthetic"}
    )
    oracle = _oracle(tastes, item_topics, pop_z, like_a, like_b, like_c, u_idx, i_idx, user_ids, item_ids, oracle_k)

    params: dict[str, Any] = {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n_interactions,
        "n_interactions_generated": int(len(interactions)),
        "seed": seed,
        "n_topics": n_topics,
        "shift": float(shift),
        "oracle_k": oracle_k,
        "start": str(start),
        "days": days,
        "zipf_s": zipf_s,
        "exposure_mix": mix,
        "exposure_beta": beta,
        "exposure_pop_alpha": pop_alpha,
        "like_a": like_a,
        "like_b": like_b,
        "like_c": float(like_c),
        "target_like_rate": target_like_rate,
        "like_rate": float(liked.mean()),
        "cold_user_share": float((counts < 5).mean()),
        "genres": [t[0] for t in topics] + ([NEW_GENRE] if shift > 0 else []),
    }
    log.info(
        "synthetic data: %d users, %d items, %d interactions, like rate %.3f, shift %.2f (seed %d)",
        n_users, n_items, len(interactions), params["like_rate"], shift, seed,
    )
    return SyntheticData(
        dataset=dataset, oracle=oracle, user_tastes=tastes, item_topics=item_topics, params=params, item_pop_z=pop_z
    )


def _make_items(
    rng: np.random.Generator,
    topics: list[tuple[str, list[str], list[str]]],
    item_ids: np.ndarray,
    dominant: np.ndarray,
    second: np.ndarray,
    shift: float,
    start_ts: pd.Timestamp,
    tilt: np.ndarray,
) -> pd.DataFrame:
    """Item metadata driven by the dominant topic so content features carry the taste signal."""
    n_items, n_topics = len(item_ids), len(topics)
    n_words = 15
    words = np.array([w for t in topics for w in t[1][:n_words]], dtype=object).reshape(n_topics, n_words)
    noise = np.array(_NOISE_WORDS, dtype=object)

    # Titles: two topic words + sometimes a noise word.
    t_words = rng.integers(0, n_words, size=(n_items, 2))
    t_noise = rng.integers(0, len(noise), size=n_items)
    t_has_noise = rng.random(n_items) < 0.4
    # Descriptions: 12-25 words; 65% dominant topic, 10% secondary topic, 25% noise.
    max_len = 25
    d_len = rng.integers(12, max_len + 1, size=n_items)
    d_src = rng.random((n_items, max_len))
    d_topic_word = rng.integers(0, n_words, size=(n_items, max_len))
    d_noise_word = rng.integers(0, len(noise), size=(n_items, max_len))
    dom_words = words[dominant[:, None], d_topic_word]
    sec_words = words[second[:, None], d_topic_word]
    desc_words = np.where(d_src < 0.65, dom_words, np.where(d_src < 0.75, sec_words, noise[d_noise_word]))
    # Tags: 2-4 topic tags, 20% get a generic tag.
    n_tags = rng.integers(2, 5, size=n_items)
    tag_keys = rng.random((n_items, 6))
    generic = rng.random(n_items) < 0.2
    generic_idx = rng.integers(0, len(_GENERIC_TAGS), size=n_items)
    # Genre: topic genre, 10% noise, and a new genre under shift.
    genre_noise = rng.random(n_items) < 0.10
    genre_other = rng.integers(0, n_topics, size=n_items)
    new_wave = rng.random(n_items) < 0.3 * shift
    # Makers: power-law pool, each with a home topic; 70% of items come from a same-topic maker.
    n_makers = max(10, n_items // 20)
    maker_topic = rng.integers(0, n_topics, size=n_makers)
    maker_weight = (rng.permutation(n_makers) + 1.0) ** -1.1
    same_topic = rng.random(n_items) < 0.7
    maker_u = rng.random(n_items)
    # Price and duration: topic-dependent lognormals.
    price_mu = rng.uniform(np.log(3.0), np.log(30.0), size=n_topics)
    price = np.exp(price_mu[dominant] + 0.5 * rng.standard_normal(n_items)) * (1.0 + shift)
    dur_mu = rng.uniform(np.log(300.0), np.log(7200.0), size=n_topics)
    duration = np.round(np.exp(dur_mu[dominant] + 0.4 * rng.standard_normal(n_items)))
    # Release dates: the last ~8 years before `start` (+ shift x 1 year later).
    release_days = rng.integers(-8 * 365, 30, size=n_items) + int(round(shift * 365))

    maker_names = [
        f"{_MAKER_FIRST[m % len(_MAKER_FIRST)]} {_MAKER_SECOND[(m // len(_MAKER_FIRST)) % len(_MAKER_SECOND)]}"
        + (f" {m // (len(_MAKER_FIRST) * len(_MAKER_SECOND)) + 1}" if m >= len(_MAKER_FIRST) * len(_MAKER_SECOND) else "")
        for m in range(n_makers)
    ]
    all_cdf = np.cumsum(maker_weight) / maker_weight.sum()
    per_topic: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k in range(n_topics):
        members = np.flatnonzero(maker_topic == k)
        if len(members):
            w = maker_weight[members]
            per_topic[k] = (members, np.cumsum(w) / w.sum())

    titles, descriptions, tags_col, genres, makers = [], [], [], [], []
    for i in range(n_items):
        k = int(dominant[i])
        title_words = [words[k, t_words[i, 0]], words[k, t_words[i, 1]]]
        if t_has_noise[i]:
            title_words.insert(0, noise[t_noise[i]])
        titles.append(" ".join(w.capitalize() for w in title_words))
        descriptions.append(" ".join(desc_words[i, : d_len[i]]))
        topic_tags = topics[k][2]
        order = np.argsort(tag_keys[i, : len(topic_tags)])[: n_tags[i]]
        item_tags = [topic_tags[j] for j in sorted(order)]
        if generic[i]:
            item_tags.append(_GENERIC_TAGS[generic_idx[i]])
        tags_col.append(item_tags)
        if new_wave[i]:
            genres.append(NEW_GENRE)
        else:
            genres.append(topics[int(genre_other[i]) if genre_noise[i] else k][0])
        if same_topic[i] and k in per_topic:
            members, cdf = per_topic[k]
            m = int(members[min(np.searchsorted(cdf, maker_u[i]), len(members) - 1)])
        else:
            m = int(min(np.searchsorted(all_cdf, maker_u[i]), n_makers - 1))
        makers.append(maker_names[m])

    released = (start_ts.normalize().to_datetime64().astype("datetime64[D]") + release_days.astype("timedelta64[D]"))
    return pd.DataFrame(
        {
            "item_id": item_ids,
            "title": titles,
            "description": descriptions,
            "tags": tags_col,
            "genre": genres,
            "maker": makers,
            "price": np.round(price, 2),
            "duration_s": duration.astype(np.float64),
            "released_at": released.astype("datetime64[ns]"),
        }
    )


def _oracle(
    tastes: np.ndarray,
    item_topics: np.ndarray,
    pop_z: np.ndarray,
    a: float,
    b: float,
    c: float,
    u_idx: np.ndarray,
    i_idx: np.ndarray,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    k: int,
) -> pd.DataFrame:
    """Top-k unseen items per user by true like probability: the best possible recommendation."""
    n_users, n_items = tastes.shape[0], item_topics.shape[0]
    order = np.argsort(u_idx, kind="stable")
    su, si = u_idx[order], i_idx[order]
    bounds = np.searchsorted(su, np.arange(n_users + 1))
    chunk = max(1, 2_000_000 // n_items)
    out_u, out_i, out_s, out_r = [], [], [], []
    for lo in range(0, n_users, chunk):
        hi = min(n_users, lo + chunk)
        score = _like_prob(tastes[lo:hi], item_topics, pop_z, a, b, c)
        seen = slice(bounds[lo], bounds[hi])
        score[su[seen] - lo, si[seen]] = -np.inf
        kk = min(k, n_items)
        if kk <= 0:
            break
        top = np.argpartition(-score, kk - 1, axis=1)[:, :kk] if kk < n_items else np.tile(np.arange(n_items), (hi - lo, 1))
        top_scores = np.take_along_axis(score, top, axis=1)
        sort = np.argsort(-top_scores, axis=1, kind="stable")
        top = np.take_along_axis(top, sort, axis=1)
        top_scores = np.take_along_axis(top_scores, sort, axis=1)
        valid = np.isfinite(top_scores)
        rows = np.broadcast_to(np.arange(lo, hi)[:, None], top.shape)
        ranks = np.broadcast_to(np.arange(1, kk + 1)[None, :], top.shape)
        out_u.append(rows[valid])
        out_i.append(top[valid])
        out_s.append(top_scores[valid])
        out_r.append(ranks[valid])
    if not out_u:
        return pd.DataFrame({"user_id": [], "item_id": [], "score": [], "rank": []})
    return pd.DataFrame(
        {
            "user_id": user_ids[np.concatenate(out_u)],
            "item_id": item_ids[np.concatenate(out_i)],
            "score": np.concatenate(out_s).astype(np.float64),
            "rank": np.concatenate(out_r).astype(np.int64),
        }
    )


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
