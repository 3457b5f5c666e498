"""The visible side of the synthetic data: topic vocabulary and item metadata (titles, descriptions,
tags, genre, maker, price, duration, release date) driven by each item's dominant topic, so content
features carry the topic part of the taste signal and nothing of the hidden communities."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

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
COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "BR", "IN", "JP", "CA")
COUNTRY_WEIGHTS = np.array([0.30, 0.12, 0.12, 0.10, 0.10, 0.12, 0.08, 0.06])
_MAKER_FIRST = ("Blue", "Red", "Iron", "Silver", "Golden", "North", "Lucky", "Quiet", "Wild", "Bright",
                "Stone", "Polar", "Velvet", "Rapid", "Hidden", "Cedar", "Amber", "Cobalt", "Echo", "Pixel")
_MAKER_SECOND = ("Works", "Studio", "House", "Labs", "Media", "Press", "Pictures", "Collective")
NEW_GENRE = "new_wave"
_N_WORDS = 15
_MAX_DESCRIPTION = 25


def topic_table(n_topics: int) -> list[tuple[str, list[str], list[str]]]:
    """Genre, words, tags per topic; beyond the 12 built-in topics, made-up but distinct words."""
    out: list[tuple[str, list[str], list[str]]] = []
    for k in range(n_topics):
        if k < len(_TOPICS):
            genre, words, tags = _TOPICS[k]
            out.append((genre, list(words), list(tags)))
        else:
            out.append((f"genre{k}", [f"topic{k}word{j}" for j in range(15)], [f"topic{k}tag{j}" for j in range(6)]))
    return out


def _draw_attributes(rng: np.random.Generator, n_items: int, n_topics: int, dominant: np.ndarray,
                     shift: float) -> dict[str, Any]:
    """Every random draw behind the item metadata, in one fixed order (the data depends on it)."""
    d: dict[str, Any] = {}
    d["t_words"] = rng.integers(0, _N_WORDS, size=(n_items, 2))          # titles: two topic words
    d["t_noise"] = rng.integers(0, len(_NOISE_WORDS), size=n_items)       # ... sometimes a noise word
    d["t_has_noise"] = rng.random(n_items) < 0.4
    d["d_len"] = rng.integers(12, _MAX_DESCRIPTION + 1, size=n_items)     # descriptions: 12-25 words,
    d["d_src"] = rng.random((n_items, _MAX_DESCRIPTION))                  # 65% dominant, 10% second topic
    d["d_topic_word"] = rng.integers(0, _N_WORDS, size=(n_items, _MAX_DESCRIPTION))
    d["d_noise_word"] = rng.integers(0, len(_NOISE_WORDS), size=(n_items, _MAX_DESCRIPTION))
    d["n_tags"] = rng.integers(2, 5, size=n_items)                        # tags: 2-4 topic tags,
    d["tag_keys"] = rng.random((n_items, 6))
    d["generic"] = rng.random(n_items) < 0.2                              # 20% get a generic one
    d["generic_idx"] = rng.integers(0, len(_GENERIC_TAGS), size=n_items)
    d["genre_noise"] = rng.random(n_items) < 0.10                         # genre: 10% noise,
    d["genre_other"] = rng.integers(0, n_topics, size=n_items)
    d["new_wave"] = rng.random(n_items) < 0.3 * shift                     # a new genre under shift
    n_makers = max(10, n_items // 20)                                     # makers: power-law pool with
    d["maker_topic"] = rng.integers(0, n_topics, size=n_makers)           # home topics; 70% same-topic
    d["maker_weight"] = (rng.permutation(n_makers) + 1.0) ** -1.1
    d["same_topic"] = rng.random(n_items) < 0.7
    d["maker_u"] = rng.random(n_items)
    price_mu = rng.uniform(np.log(3.0), np.log(30.0), size=n_topics)      # price, duration: per topic
    d["price"] = np.exp(price_mu[dominant] + 0.5 * rng.standard_normal(n_items)) * (1.0 + shift)
    dur_mu = rng.uniform(np.log(300.0), np.log(7200.0), size=n_topics)
    d["duration"] = np.round(np.exp(dur_mu[dominant] + 0.4 * rng.standard_normal(n_items)))
    d["release_days"] = rng.integers(-8 * 365, 30, size=n_items) + int(round(shift * 365))  # last ~8 years
    return d


def _maker_names(n_makers: int) -> list[str]:
    first, second = len(_MAKER_FIRST), len(_MAKER_SECOND)
    return [f"{_MAKER_FIRST[m % first]} {_MAKER_SECOND[(m // first) % second]}"
            + (f" {m // (first * second) + 1}" if m >= first * second else "") for m in range(n_makers)]


def _makers(d: dict[str, Any], dominant: np.ndarray, n_topics: int) -> list[str]:
    """Each item's maker: from its topic's makers when `same_topic`, else from the whole pool (by weight)."""
    weight, n_makers = d["maker_weight"], len(d["maker_weight"])
    names = _maker_names(n_makers)
    all_cdf = np.cumsum(weight) / weight.sum()
    per_topic: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for k in range(n_topics):
        members = np.flatnonzero(d["maker_topic"] == k)
        if len(members):
            per_topic[k] = (members, np.cumsum(weight[members]) / weight[members].sum())
    out = []
    for i, k in enumerate(dominant.tolist()):
        u = d["maker_u"][i]
        if d["same_topic"][i] and k in per_topic:
            members, cdf = per_topic[k]
            out.append(names[int(members[min(np.searchsorted(cdf, u), len(members) - 1)])])
        else:
            out.append(names[int(min(np.searchsorted(all_cdf, u), n_makers - 1))])
    return out


def make_items(rng: np.random.Generator, topics: list[tuple[str, list[str], list[str]]], item_ids: np.ndarray,
               dominant: np.ndarray, second: np.ndarray, shift: float, start_ts: pd.Timestamp) -> pd.DataFrame:
    """Item metadata driven by the dominant topic so content features carry the topic taste signal."""
    n_items, n_topics = len(item_ids), len(topics)
    d = _draw_attributes(rng, n_items, n_topics, dominant, shift)
    words = np.array([w for t in topics for w in t[1][:_N_WORDS]], dtype=object).reshape(n_topics, _N_WORDS)
    noise = np.array(_NOISE_WORDS, dtype=object)
    dom_words = words[dominant[:, None], d["d_topic_word"]]
    sec_words = words[second[:, None], d["d_topic_word"]]
    src = d["d_src"]
    desc_words = np.where(src < 0.65, dom_words, np.where(src < 0.75, sec_words, noise[d["d_noise_word"]]))
    titles, descriptions, tags_col, genres = [], [], [], []
    for i, k in enumerate(dominant.tolist()):
        title_words = [words[k, d["t_words"][i, 0]], words[k, d["t_words"][i, 1]]]
        if d["t_has_noise"][i]:
            title_words.insert(0, noise[d["t_noise"][i]])
        titles.append(" ".join(w.capitalize() for w in title_words))
        descriptions.append(" ".join(desc_words[i, : d["d_len"][i]]))
        topic_tags = topics[k][2]
        order = np.argsort(d["tag_keys"][i, : len(topic_tags)])[: d["n_tags"][i]]  # a random subset, stable
        item_tags = [topic_tags[j] for j in sorted(order)]
        if d["generic"][i]:
            item_tags.append(_GENERIC_TAGS[d["generic_idx"][i]])
        tags_col.append(item_tags)
        genres.append(NEW_GENRE if d["new_wave"][i] else topics[int(d["genre_other"][i]) if d["genre_noise"][i] else k][0])
    released = start_ts.normalize().to_datetime64().astype("datetime64[D]") + d["release_days"].astype("timedelta64[D]")
    return pd.DataFrame({
        "item_id": item_ids, "title": titles, "description": descriptions, "tags": tags_col, "genre": genres,
        "maker": _makers(d, dominant, n_topics), "price": np.round(d["price"], 2),
        "duration_s": d["duration"].astype(np.float64), "released_at": released.astype("datetime64[ns]"),
    })
