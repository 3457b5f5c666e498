"""Offline evaluation ranks from each user's train history only, and reports the cold segment.

README: "user embeddings come from the train part only; items already swiped in train are
excluded; relevant = held-out likes"; segments `cold.*` (< 5 train interactions), `warm.*`.
The bundle's exported user embeddings saw every interaction, held-out ones included, so an
evaluation that used them would be optimistic: these tests fail if it does.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from ml.data.schema import Dataset
from ml.evaluation.evaluate import evaluate_bundle
from ml.evaluation.protocol import COLD_USER_THRESHOLD

pytestmark = pytest.mark.slow  # uses the session's trained tiny model

MODEL_KEYS = ("ndcg_at_10", "recall_at_10", "hit_rate_at_10", "mrr_at_10", "auc")


def _model_metrics(ev) -> dict[str, float]:
    return {k: ev.metrics[k] for k in MODEL_KEYS}


def test_exported_user_embeddings_are_not_used(tiny_model_dir, tiny_synth, tmp_path) -> None:
    """Point each evaluated user's exported embedding at the item of their held-out like: through
    the exported embeddings that like would rank first for everyone; the evaluation must not move."""
    ds = tiny_synth.dataset
    before = evaluate_bundle(tiny_model_dir, ds, ks="10", metrics="ndcg,recall,hit_rate,mrr,auc", baselines=())
    split = before.split
    assert before.metrics["hit_rate_at_10"] < 0.9          # room for the leak to show

    leaky = tmp_path / "leaky"
    shutil.copytree(tiny_model_dir, leaky)
    user_emb = np.load(leaky / "users" / "user_embeddings.npy")
    item_emb = np.load(leaky / "embeddings" / "item_embeddings.npy")
    ranked = np.flatnonzero(split.n_relevant > 0)
    for u in ranked:
        held_out_like = split.rel_items[split.rel_indptr[u]]
        user_emb[split.user_rows[u]] = item_emb[held_out_like]
    np.save(leaky / "users" / "user_embeddings.npy", user_emb)

    # what an evaluation reading the exported embeddings would see: that like at rank 1 (cosine 1)
    scores = user_emb[split.user_rows[ranked]] @ item_emb.T
    firsts = split.rel_items[split.rel_indptr[ranked]]
    assert (scores[np.arange(len(ranked)), firsts] >= scores.max(axis=1) - 1e-5).all()

    after = evaluate_bundle(leaky, ds, ks="10", metrics="ndcg,recall,hit_rate,mrr,auc", baselines=())
    assert _model_metrics(after) == pytest.approx(_model_metrics(before))
    np.testing.assert_array_equal(after.systems["model"].top, before.systems["model"].top)


def _each_users_last(inter: pd.DataFrame) -> np.ndarray:
    """Row positions of each user's latest interaction (held out by any per-user time split
    for users with >= 5 interactions)."""
    counts = inter.groupby("user_id")["user_id"].transform("size").to_numpy()
    order = inter.assign(_pos=np.arange(len(inter))).sort_values(["user_id", "timestamp", "_pos"], kind="stable")
    last = order.groupby("user_id").tail(1)["_pos"].to_numpy()
    return last[counts[last] >= 10]


def test_rankings_do_not_depend_on_held_out_interactions(tiny_model_dir, tiny_synth) -> None:
    """Rewrite every user's latest swipe (another item, the opposite decision): the relevance
    changes, the rankings cannot, since they come from the train history alone."""
    ds = tiny_synth.dataset
    inter = ds.interactions.reset_index(drop=True)
    last = _each_users_last(inter)
    assert len(last) > 100
    changed = inter.copy()
    rng = np.random.default_rng(0)
    items = ds.items["item_id"].to_numpy()
    changed.loc[last, "item_id"] = rng.choice(items, size=len(last))
    flipped = 1 - changed.loc[last, "label"].to_numpy()
    changed.loc[last, "label"] = flipped.astype(changed["label"].dtype)
    changed.loc[last, "decision"] = np.where(flipped == 1, "like", "nope")
    changed.loc[last, "rating"] = flipped.astype(np.float32)
    other = Dataset(ds.users, ds.items, changed, dict(ds.sources))

    a = evaluate_bundle(tiny_model_dir, ds, ks="10", metrics="ndcg,auc", baselines=())
    b = evaluate_bundle(tiny_model_dir, other, ks="10", metrics="ndcg,auc", baselines=())
    assert list(a.split.user_ids) == list(b.split.user_ids)
    pos = {u: i for i, u in enumerate(a.split.user_ids)}
    users = sorted({str(u) for u in inter.loc[last, "user_id"]} & set(pos))
    assert len(users) > 100
    rows = [pos[u] for u in users]
    np.testing.assert_array_equal(a.systems["model"].top[rows], b.systems["model"].top[rows])
    assert a.metrics["ndcg_at_10"] != b.metrics["ndcg_at_10"]  # the relevance did change


COLD_USERS = 10


def _with_cold_users(ds: Dataset) -> tuple[Dataset, dict[str, str]]:
    """Warm users keep their whole history (>= 12 swipes); COLD_USERS others keep their first 4
    swipes and then like an item they had not swiped (their one held-out interaction); every
    other user's swipes are dropped. Returns the data and each cold user's held-out item."""
    inter = ds.interactions.assign(_pos=np.arange(len(ds.interactions)))
    inter = inter.sort_values(["user_id", "timestamp", "_pos"], kind="stable")
    counts = inter.groupby("user_id").size()
    long = sorted(counts[counts >= 12].index)
    cold, warm = long[:COLD_USERS], long[COLD_USERS:]
    parts = [inter[inter["user_id"].isin(warm)]]
    held_out: dict[str, str] = {}
    catalog = ds.items["item_id"].tolist()
    for user in cold:
        rows = inter[inter["user_id"] == user].head(5).copy()
        first_four = set(rows["item_id"].iloc[:4])
        fresh = next(i for i in catalog if i not in first_four)
        last = rows.index[4]
        rows.loc[last, ["item_id", "decision"]] = [fresh, "like"]
        rows.loc[last, "rating"] = np.float32(1.0)
        rows.loc[last, "label"] = 1
        rows.loc[last, "timestamp"] = rows["timestamp"].iloc[:4].max() + pd.Timedelta(hours=1)
        held_out[user] = fresh
        parts.append(rows)
    out = pd.concat(parts).drop(columns="_pos").sort_values("timestamp", kind="stable").reset_index(drop=True)
    return Dataset(ds.users, ds.items, out, {"interactions": "cold.csv"}), held_out


def test_cold_segment_counts_and_metrics(tiny_model_dir, tiny_synth) -> None:
    """Shares pinned (test 0.2, no validation part): a 5-swipe user holds out exactly its last swipe and
    keeps 4 as history, whatever the bundle's own split; with the default test share of 0.1 a user needs
    10 swipes to have a test part at all, and so at least 9 of history: never cold."""
    ds, held_out = _with_cold_users(tiny_synth.dataset)
    ev = evaluate_bundle(tiny_model_dir, ds, ks="10", metrics="ndcg,recall,hit_rate,mrr", baselines=(),
                         validation_split=0.0, test_split=0.2)
    split, m = ev.split, ev.metrics
    pos = {str(u): i for i, u in enumerate(split.user_ids)}
    assert set(held_out) <= set(pos)

    # exactly the constructed users are cold: fewer than COLD_USER_THRESHOLD train swipes
    cold_rows = np.flatnonzero((split.n_train < COLD_USER_THRESHOLD) & (split.n_relevant > 0))
    assert sorted(str(split.user_ids[r]) for r in cold_rows) == sorted(held_out)
    assert m["eval.cold_users_ranked"] == COLD_USERS
    assert m["eval.warm_users_ranked"] == m["eval.users_ranked"] - COLD_USERS > 50

    # by hand: one relevant item each, so hit = recall = [rank <= 10], ndcg = 1/log2(rank + 1), mrr = 1/rank
    top = ev.systems["model"].top
    item_row = {iid: i for i, iid in enumerate(split.item_ids)}
    ranks = []
    for user, item in held_out.items():
        row = list(top[pos[user], :10])
        ranks.append(row.index(item_row[item]) + 1 if item_row[item] in row else None)
    hits = [r is not None for r in ranks]
    assert m["cold.hit_rate_at_10"] == pytest.approx(np.mean(hits))
    assert m["cold.recall_at_10"] == pytest.approx(np.mean(hits))
    assert m["cold.ndcg_at_10"] == pytest.approx(np.mean([1 / np.log2(r + 1) if r else 0.0 for r in ranks]))
    assert m["cold.mrr_at_10"] == pytest.approx(np.mean([1 / r if r else 0.0 for r in ranks]))
    # the overall figure mixes both segments, weighted by their users
    n_warm = m["eval.warm_users_ranked"]
    assert m["ndcg_at_10"] == pytest.approx((COLD_USERS * m["cold.ndcg_at_10"] + n_warm * m["warm.ndcg_at_10"])
                                            / (COLD_USERS + n_warm))
