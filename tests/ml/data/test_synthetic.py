"""The synthetic generator: deterministic, realistic shape, learnable, and popularity is beatable."""

from __future__ import annotations

import json
import time
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


def test_large_generation_is_fast() -> None:
    t0 = time.perf_counter()
    big = generate_synthetic(n_users=2000, n_items=5000, n_interactions=100_000, seed=0)
    elapsed = time.perf_counter() - t0
    assert len(big.dataset.interactions) == 100_000
    assert elapsed < 10.0, elapsed


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        generate_synthetic(shift=1.5)
