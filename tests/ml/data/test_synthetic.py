"""The synthetic generator: deterministic, realistic shape, learnable, and popularity is beatable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml.data.loaders import load_folder
from ml.data.synthetic import NEW_GENRE, SyntheticData, generate_synthetic, load_oracle, write_synthetic


@pytest.fixture(scope="module")
def data() -> SyntheticData:
    return generate_synthetic(seed=0)


def _frames_equal(a: SyntheticData, b: SyntheticData) -> None:
    pd.testing.assert_frame_equal(a.dataset.users, b.dataset.users)
    pd.testing.assert_frame_equal(a.dataset.items, b.dataset.items)
    pd.testing.assert_frame_equal(a.dataset.interactions, b.dataset.interactions)
    pd.testing.assert_frame_equal(a.oracle, b.oracle)
    np.testing.assert_array_equal(a.user_tastes, b.user_tastes)


def test_same_seed_same_data(data: SyntheticData) -> None:
    _frames_equal(data, generate_synthetic(seed=0))


def test_shift_zero_equals_default(data: SyntheticData) -> None:
    _frames_equal(data, generate_synthetic(seed=0, shift=0.0))


def test_different_seed_differs(data: SyntheticData) -> None:
    other = generate_synthetic(seed=1)
    assert not data.dataset.interactions[["user_id", "item_id"]].equals(other.dataset.interactions[["user_id", "item_id"]])
    assert not np.allclose(data.user_tastes, other.user_tastes)


def test_shape_and_schema(data: SyntheticData) -> None:
    ds = data.dataset
    assert ds.row_counts() == {"users": 1000, "items": 500, "interactions": 20000}
    assert ds.users["user_id"].iloc[0] == "u00001" and ds.items["item_id"].iloc[0] == "i00001"
    assert set(ds.users.columns) == {"user_id", "age", "country"}
    assert ds.users["age"].between(18, 70).all()
    assert not ds.interactions.duplicated(["user_id", "item_id"]).any()
    assert ds.items["tags"].map(len).between(2, 5).all()
    lengths = ds.items["description"].str.split().map(len)
    assert lengths.between(12, 25).all()
    assert (ds.items["price"] > 0).all() and (ds.items["duration_s"] > 0).all()
    assert ds.sources == {"users": "synthetic", "items": "synthetic", "interactions": "synthetic"}
    assert data.user_tastes.shape == (1000, 8) and data.item_topics.shape == (500, 8)
    ts = ds.interactions["timestamp"]
    assert ts.min() >= pd.Timestamp("2025-01-01") and ts.max() < pd.Timestamp("2025-01-01") + pd.Timedelta(days=180)


def test_like_rate_and_cold_users(data: SyntheticData) -> None:
    inter = data.dataset.interactions
    assert 0.3 <= inter["label"].mean() <= 0.5
    per_user = inter.groupby("user_id").size().reindex(data.dataset.users["user_id"], fill_value=0)
    cold_share = (per_user < 5).mean()
    assert 0.08 <= cold_share <= 0.25
    assert per_user.max() > 5 * per_user.median()  # a heavy tail of active users


def test_power_law_popularity(data: SyntheticData) -> None:
    counts = data.dataset.interactions["item_id"].value_counts()
    top_share = counts.head(len(data.dataset.items) // 10).sum() / counts.sum()
    assert top_share > 0.3  # top 10% of items get > 3x their uniform share


def test_likes_follow_taste(data: SyntheticData) -> None:
    inter = data.dataset.interactions
    u = inter["user_id"].str[1:].astype(int).to_numpy() - 1
    i = inter["item_id"].str[1:].astype(int).to_numpy() - 1
    affinity = np.einsum("ij,ij->i", data.user_tastes[u], data.item_topics[i])
    liked = inter["label"].to_numpy() == 1
    assert affinity[liked].mean() > 2 * affinity[~liked].mean()
    # users mostly like one or two topics
    top2 = np.sort(data.user_tastes, axis=1)[:, -2:].sum(axis=1)
    assert np.median(top2) > 0.75


def test_topic_words_recoverable(data: SyntheticData) -> None:
    items = data.dataset.items
    dominant = data.item_topics.argmax(axis=1)
    same = items["genre"].to_numpy() == pd.Series(items["genre"]).groupby(dominant).transform(lambda s: s.mode()[0]).to_numpy()
    assert same.mean() > 0.85  # genre mostly follows the topic
    # Items of the same topic share far more description words than items of different topics.
    words = items["description"].str.split().map(set)
    a, b = np.flatnonzero(dominant == 0)[:20], np.flatnonzero(dominant == 1)[:20]
    within = np.mean([len(words[x] & words[y]) for x in a for y in a if x < y])
    across = np.mean([len(words[x] & words[y]) for x in a for y in b])
    assert within > 2 * across


def test_oracle_excludes_seen_and_has_k(data: SyntheticData) -> None:
    oracle = data.oracle
    assert list(oracle.columns) == ["user_id", "item_id", "score", "rank"]
    per_user = oracle.groupby("user_id").size()
    assert len(per_user) == 1000 and (per_user == 100).all()
    seen = data.dataset.interactions[["user_id", "item_id"]].assign(seen=True)
    merged = oracle.merge(seen, on=["user_id", "item_id"], how="left")
    assert merged["seen"].isna().all()
    first = oracle[oracle["user_id"] == "u00001"]
    assert first["rank"].tolist() == list(range(1, 101))
    assert first["score"].is_monotonic_decreasing


def test_oracle_beats_popularity_on_time_split(data: SyntheticData) -> None:
    ds = data.dataset
    inter = ds.interactions
    cut = inter["timestamp"].quantile(0.8)
    train, test = inter[inter["timestamp"] <= cut], inter[(inter["timestamp"] > cut) & (inter["label"] == 1)]
    uid = {u: k for k, u in enumerate(ds.users["user_id"])}
    iid = {i: k for k, i in enumerate(ds.items["item_id"])}
    tu, ti = train["user_id"].map(uid).to_numpy(), train["item_id"].map(iid).to_numpy()
    oracle_scores = data.like_probability()
    pop_scores = np.tile(np.bincount(ti, minlength=len(iid)).astype(float), (len(uid), 1))
    k = 10
    held = test.groupby(test["user_id"].map(uid))["item_id"].agg(lambda s: set(s.map(iid)))
    rates = {}
    for name, scores in (("oracle", oracle_scores), ("popular", pop_scores)):
        scores[tu, ti] = -np.inf  # never recommend what the user already swiped in train
        users = held.index.to_numpy()
        top = np.argsort(-scores[users], axis=1)[:, :k]
        hits = [bool(held[u] & set(row)) for u, row in zip(users, top)]
        rates[name] = float(np.mean(hits))
    assert len(held) > 100
    assert rates["oracle"] > rates["popular"] + 0.15, rates
    assert rates["popular"] > 0.1, rates  # popularity is a real baseline, just clearly worse


def test_shift_changes_distributions(data: SyntheticData) -> None:
    shifted = generate_synthetic(seed=0, shift=1.0)
    base_items, new_items = data.dataset.items, shifted.dataset.items
    assert new_items["price"].median() > 1.6 * base_items["price"].median()
    assert new_items["released_at"].median() > base_items["released_at"].median() + pd.Timedelta(days=200)
    assert NEW_GENRE not in set(base_items["genre"])
    share = (new_items["genre"] == NEW_GENRE).mean()
    assert 0.2 <= share <= 0.4
    base_topic = np.bincount(data.item_topics.argmax(1), minlength=8) / 500
    new_topic = np.bincount(shifted.item_topics.argmax(1), minlength=8) / 500
    assert np.abs(base_topic - new_topic).sum() > 0.3
    assert not np.allclose(data.user_tastes, shifted.user_tastes)
    small = generate_synthetic(seed=0, shift=0.2)
    assert 0.0 < (small.dataset.items["genre"] == NEW_GENRE).mean() < share


def test_write_and_load_oracle(tmp_path: Path, data: SyntheticData) -> None:
    small = generate_synthetic(n_users=50, n_items=40, n_interactions=400, seed=3, oracle_k=5)
    files = write_synthetic(small, tmp_path / "syn")
    assert {"users", "items", "interactions", "oracle", "generator"} <= set(files)
    params = json.loads((tmp_path / "syn" / "generator.json").read_text())
    assert params["seed"] == 3 and params["oracle_k"] == 5
    oracle = load_oracle(tmp_path / "syn")
    assert oracle is not None
    pd.testing.assert_frame_equal(oracle, small.oracle)
    assert load_oracle(tmp_path) is None
    loaded = load_folder(tmp_path / "syn")
    pd.testing.assert_frame_equal(loaded.interactions, small.dataset.interactions)


def test_large_generation_has_the_requested_shape() -> None:
    """Its speed is a figure for bench/, not a test; here: the sizes asked for, ids that resolve."""
    big = generate_synthetic(n_users=2000, n_items=5000, n_interactions=100_000, seed=0)
    ds = big.dataset
    assert (len(ds.users), len(ds.items), len(ds.interactions)) == (2000, 5000, 100_000)
    assert ds.interactions["user_id"].isin(ds.users["user_id"]).all()
    assert ds.interactions["item_id"].isin(ds.items["item_id"]).all()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        generate_synthetic(shift=1.5)


# --------------------------------------------------------------------------- hidden communities


@pytest.fixture(scope="module")
def mixed() -> SyntheticData:
    return generate_synthetic(n_users=800, n_items=600, n_interactions=24000, seed=4, collaborative_weight=0.6)


def test_collaborative_weight_zero_has_no_hidden_part(data: SyntheticData) -> None:
    assert data.params["collaborative_weight"] == 0.0 and data.user_communities is None
    np.testing.assert_allclose(data.affinity(np.arange(3)), data.user_tastes[:3] @ data.item_topics.T)


def test_likes_follow_hidden_communities_too(mixed: SyntheticData) -> None:
    inter = mixed.dataset.interactions
    u = inter["user_id"].str[1:].astype(int).to_numpy() - 1
    i = inter["item_id"].str[1:].astype(int).to_numpy() - 1
    liked = inter["label"].to_numpy() == 1
    hidden = np.einsum("ij,ij->i", mixed.user_communities[u], mixed.item_communities[i])
    topical = np.einsum("ij,ij->i", mixed.user_tastes[u], mixed.item_topics[i])
    assert hidden[liked].mean() > 2 * hidden[~liked].mean()
    assert topical[liked].mean() > 1.2 * topical[~liked].mean()    # content still matters, less


def test_content_does_not_reveal_the_communities(mixed: SyntheticData) -> None:
    """Items' genre (their visible topic) is independent of their hidden community."""
    genre = mixed.dataset.items["genre"].to_numpy()
    community = mixed.item_communities.argmax(axis=1)
    overall = pd.Series(genre).value_counts(normalize=True)
    for c in np.unique(community):
        members = genre[community == c]
        if len(members) < 30:
            continue
        share = pd.Series(members).value_counts(normalize=True).reindex(overall.index, fill_value=0.0)
        assert (share - overall).abs().max() < 0.2, c


def test_oracle_uses_content_and_communities(mixed: SyntheticData) -> None:
    p, w = mixed.params, mixed.params["collaborative_weight"]
    u, i = 7, 11
    aff = (1 - w) * mixed.user_tastes[u] @ mixed.item_topics[i] + w * mixed.user_communities[u] @ mixed.item_communities[i]
    expected = 1 / (1 + np.exp(-(p["like_a"] * aff + p["like_b"] * mixed.item_pop_z[i] + p["like_c"])))
    assert mixed.like_probability(np.array([u]))[0, i] == pytest.approx(expected)
    # the oracle's list for that user: unseen items by P(shown) x P(liked), best first
    shown = mixed.exposure_probability(np.array([u]))[0]
    assert shown.sum() == pytest.approx(1.0)
    probs = shown * mixed.like_probability(np.array([u]))[0]
    np.testing.assert_allclose(mixed.relevance(np.array([u]))[0], probs)
    seen = set(mixed.dataset.interactions.loc[mixed.dataset.interactions["user_id"] == "u00008", "item_id"])
    unseen = [k for k in range(len(probs)) if f"i{k + 1:05d}" not in seen]
    best = sorted(unseen, key=lambda k: -probs[k])[:5]
    first = mixed.oracle[mixed.oracle["user_id"] == "u00008"]
    assert first["item_id"].tolist()[:5] == [f"i{k + 1:05d}" for k in best]


def test_collaborative_weight_out_of_range() -> None:
    with pytest.raises(ValueError, match="collaborative_weight must be in"):
        generate_synthetic(collaborative_weight=1.5)
    with pytest.raises(ValueError, match="targeted_exposure must be in"):
        generate_synthetic(targeted_exposure=-0.1)


def test_more_targeted_exposure_means_less_popularity_in_the_swipes() -> None:
    kw = dict(n_users=400, n_items=300, n_interactions=8000, seed=2, collaborative_weight=0.5)
    def top_share(d: SyntheticData) -> float:
        counts = d.dataset.interactions["item_id"].value_counts()
        return counts.head(30).sum() / counts.sum()
    assert top_share(generate_synthetic(**kw, targeted_exposure=0.9)) < top_share(generate_synthetic(**kw, targeted_exposure=0.2))
