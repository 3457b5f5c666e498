"""The protocol's split parts, the baselines (popular, ALS, EASE) and the lifts, on data small enough to check by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from ml.data.schema import Dataset
from ml.evaluation.baselines import EaseParams, baseline_scorers, ease_scorer, parse_baselines, popularity_scorer
from ml.evaluation.evaluate import flat_metrics, lifts, score_systems
from ml.evaluation.protocol import build_split, prepare_split


def _dataset(rows: list[tuple[str, str, int, int]]) -> Dataset:
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "label", "day"])
    inter["timestamp"] = pd.Timestamp("2025-01-01") + pd.to_timedelta(inter.pop("day"), unit="D")
    users = pd.DataFrame({"user_id": sorted(set(inter["user_id"]))})
    return Dataset(users, pd.DataFrame({"item_id": [f"i{k}" for k in range(6)]}), inter, {"interactions": "t.csv"})


# u1: 10 swipes on days 0..9 -> with validation 0.2 / test 0.2: train days 0-5, valid 6-7, test 8-9
DATA = _dataset([("u1", f"i{d % 6}", int(d % 2 == 0), d) for d in range(10)]
                + [("u2", f"i{(d + 3) % 6}", 1, d) for d in range(5)])
BUNDLE = SimpleNamespace(config={"training": {"validation_split": 0.2, "test_split": 0.2}},
                         item_ids=[f"i{k}" for k in range(6)])


def test_test_part_is_held_out_with_train_and_validation_as_history() -> None:
    split = prepare_split(BUNDLE, DATA)
    assert split.part == "test" and split.describe() == "test part (test_split=0.2, validation_split=0.2)"
    u1 = list(split.user_ids).index("u1")
    # u1's test days 8, 9 -> items i2 (like), i3 (nope); history = days 0..7
    assert split.counts["heldout_interactions"] == 2 + 1           # u2: 5 rows -> 1 test row
    assert split.n_train[u1] == 8
    assert set(split.pair_item[split.pair_user == u1].tolist()) == {2, 3}


def test_validation_part_never_sees_the_test_part() -> None:
    split = prepare_split(BUNDLE, DATA, part="valid")
    u1 = list(split.user_ids).index("u1")
    assert split.n_train[u1] == 6                                   # train days 0..5 only
    assert set(split.pair_item[split.pair_user == u1].tolist()) == {0, 1}   # days 6, 7
    assert split.history.user_rows.size == 6 + 3                    # u2: 5 rows -> 3 train, 1 valid, 1 test


def test_bundle_without_a_test_share_is_evaluated_on_its_validation_part(caplog, capsys) -> None:
    old = SimpleNamespace(config={"training": {"validation_split": 0.2}}, item_ids=BUNDLE.item_ids)
    split = prepare_split(old, DATA)
    said = caplog.text + capsys.readouterr().err  # the warning reaches caplog or, once logging is configured, stderr
    assert split.part == "valid"
    assert "test_split=0" in said


def _split(likes: list[tuple[int, int]], held: list[tuple[int, int]], n_users: int, n_items: int):
    users = np.array([u for u, _ in likes + held])
    items = np.array([i for _, i in likes + held])
    history = np.r_[np.ones(len(likes), bool), np.zeros(len(held), bool)]
    return build_split(users, items, np.ones(len(users), np.int64), history, ~history,
                       np.array([f"u{k}" for k in range(n_users)]), [f"i{k}" for k in range(n_items)], "test",
                       {"validation_split": 0.0, "test_split": 0.5})


def test_ease_closed_form_by_hand() -> None:
    # history likes: u0 {0, 1}, u1 {0, 1}, u2 {1, 2}; held out: u2 likes 0
    split = _split([(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 2)], [(2, 0)], 3, 3)
    x = np.array([[1, 1, 0], [1, 1, 0], [0, 1, 1]], float)
    p = np.linalg.inv(x.T @ x + 2.0 * np.eye(3))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    scores = ease_scorer(split, EaseParams(l2=2.0))(np.array([0]))    # the one evaluated user: u2
    np.testing.assert_allclose(scores[0], x[2] @ b, rtol=1e-5)
    assert scores[0, 0] > 0                                         # item 0 co-occurs with item 1


def test_ease_size_guard_says_what_it_skipped_and_why() -> None:
    split = _split([(0, k) for k in range(4)], [(0, 4)], 1, 5)
    fitted = baseline_scorers(split, ("popular", "ease"), ease=EaseParams(max_items=4))
    assert set(fitted.scorers) == {"popular"}
    assert "5 items" in fitted.skipped["ease"] and "5 x 5 matrix" in fitted.skipped["ease"] and "limit of 4" in fitted.skipped["ease"]


def test_als_is_deterministic_and_users_without_likes_get_popularity() -> None:
    rng = np.random.default_rng(1)
    likes = sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, 30, 300), rng.integers(0, 40, 300))})
    held = [(u, (i + 1) % 40) for u, i in likes[::10]] + [(30, 5)]   # user 30 has no history at all
    split = _split(likes, held, 31, 40)
    a = baseline_scorers(split, ("als", "popular"), seed=3)
    b = baseline_scorers(split, ("als",), seed=3)
    rows = np.arange(len(split.user_ids))
    np.testing.assert_array_equal(a.scorers["als"](rows), b.scorers["als"](rows))
    cold = list(split.user_ids).index("u30")
    np.testing.assert_array_equal(a.scorers["als"](np.array([cold]))[0], popularity_scorer(split)(np.array([cold]))[0])


def test_popularity_ranks_by_history_likes_then_users_then_row() -> None:
    split = _split([(0, 2), (1, 2), (0, 1), (2, 3)], [(2, 0)], 3, 4)
    systems, _ = score_systems({"popular": popularity_scorer(split)}, split, [4], ["ndcg"])
    assert systems["popular"].top[0].tolist() == [2, 1, 0, -1]       # u2 saw item 3; 1 vs 0: item 1 has a like


def test_lifts_over_each_and_the_best_baseline_without_nan() -> None:
    summaries = {"model": {"all": {"ndcg_at_10": 0.30, "auc": float("nan")}, "cold": {"ndcg_at_10": 0.1}},
                 "popular": {"all": {"ndcg_at_10": 0.10, "auc": 0.6}, "cold": {"ndcg_at_10": 0.0}},
                 "als": {"all": {"ndcg_at_10": 0.25, "auc": 0.7}}, "random": {"all": {"ndcg_at_10": 0.01}},
                 "oracle": {"all": {"ndcg_at_10": 0.50}}}
    assert lifts(summaries, "all", "ndcg_at_10") == pytest.approx(
        {"lift_over_popular": 3.0, "lift_over_als": 1.2, "lift_over_random": 30.0, "lift_over_best_baseline": 1.2,
         "oracle_ratio": 0.6})
    flat = flat_metrics(summaries, {"users_ranked": 5})
    assert flat["lift_over_best_baseline.ndcg_at_10"] == pytest.approx(0.30 / 0.25)
    assert "lift_over_popular.cold.ndcg_at_10" not in flat           # popular scored 0 there: no ratio
    assert "auc" not in flat and "lift_over_als.auc" not in flat     # the model's AUC is undefined
    assert all(math.isfinite(v) for v in flat.values()) and flat["eval.users_ranked"] == 5.0


def test_unknown_baseline_names_the_choices() -> None:
    assert parse_baselines("popular, ALS") == ("popular", "als")
    with pytest.raises(ValueError, match="unknown baseline.*'knn'.*popular"):
        parse_baselines(["knn"])


def test_test_part_baselines_fit_on_the_training_part_only() -> None:
    """Evaluating the test part, the history holds train + validation, but the model trained on the training part
    only: the baselines fit there too (u1's 6 training rows + u2's 3), and score users from the whole history."""
    split = prepare_split(BUNDLE, DATA)
    assert split.fit_history.user_rows.size == 6 + 3
    assert split.history.user_rows.size == 8 + 4
    valid = prepare_split(BUNDLE, DATA, part="valid")
    assert valid.fit_history.user_rows.size == valid.history.user_rows.size == 6 + 3


def _fit_split():
    """Likes only. Training part: u0 i0, u1 i0, u1 i1, u2 i1; validation part (history, not fit): u0 i2, u2 i2;
    held out: u1 i2, u0 i1. Item 2 is liked in the history but never in the training part."""
    rows = [(0, 0), (1, 0), (1, 1), (2, 1), (0, 2), (2, 2), (1, 2), (0, 1)]
    users, items = np.array([u for u, _ in rows]), np.array([i for _, i in rows])
    fit = np.r_[np.ones(4, bool), np.zeros(4, bool)]
    history = np.r_[np.ones(6, bool), np.zeros(2, bool)]
    args = (users, items, np.ones(8, np.int64), history, ~history, np.array(["u0", "u1", "u2"]), ["i0", "i1", "i2"],
            "test", {"validation_split": 0.25, "test_split": 0.25})
    return build_split(*args, fit_mask=fit), build_split(*args)


def test_baselines_fit_on_the_fit_part_and_fold_in_the_history() -> None:
    split, whole = _fit_split()
    from ml.evaluation.baselines import als_scorer, popularity_scores

    # popular: item 2 has no training-part like, so it ranks last with a score under 1 (likes + tie-breaks < 1);
    # fitted on the whole history its 2 likes would count
    pop = popularity_scores(split)
    assert pop[2] < 1.0 < 2.0 < min(pop[0], pop[1])
    assert popularity_scores(whole)[2] > 2.0
    # EASE: item 2 never co-occurs in the training part, so B's row and column for it are 0: no user scores it,
    # and u0's history like of item 2 adds nothing (u0 scores as if its history were {i0})
    rows = np.arange(len(split.user_ids))
    ease = ease_scorer(split, EaseParams(l2=1.0))(rows)
    np.testing.assert_allclose(ease[:, 2], 0.0, atol=1e-7)
    assert np.abs(ease_scorer(whole, EaseParams(l2=1.0))(rows)[:, 2]).max() > 1e-3
    # ALS: item 2's factors stay 0 (nothing to fit), and u0's factors are solved from its whole history (fold-in):
    # u0 and u1 share item 0 in the fit part, so u0 now leans to item 1 through u1
    als = als_scorer(split)(rows)
    np.testing.assert_allclose(als[:, 2], 0.0, atol=1e-6)
    u0 = list(split.user_ids).index("u0")
    assert als[u0, 1] > 0
    with pytest.raises(ValueError, match="fit_mask selects 1 interactions outside the history"):
        users, items = np.array([0, 1, 1]), np.array([0, 0, 1])
        build_split(users, items, np.ones(3, np.int64), np.array([True, True, False]), np.array([False, False, True]),
                    np.array(["u0", "u1"]), ["i0", "i1"], "test", {"validation_split": 0.0, "test_split": 0.5},
                    fit_mask=np.array([True, True, True]))
