"""Ranking metrics against values computed by hand on tiny rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.evaluation.metrics import (
    ALL_METRICS,
    auc,
    catalog_coverage,
    hits_from_csr,
    item_self_information,
    novelty,
    parse_ks,
    parse_metrics,
    ranking_metrics,
)

L2 = math.log2


def _csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.r_[0, np.cumsum([len(x) for x in lists])]
    return indptr, np.array([i for x in lists for i in x], dtype=np.int64)


# user 0: ranking [3, 1, 4, 0, 2], relevant {1, 2}    -> hits at ranks 2 and 5
# user 1: ranking [0, 2, 1, 3, 4], relevant {0}       -> hit at rank 1
# user 2: ranking [4, 3, 2, 1, 0], relevant {}        -> undefined (NaN)
# user 3: ranking [1, 0, 2, 3, -1], relevant {3, 4, 0} -> hits at ranks 2 and 4; item 4 is never ranked
TOP = np.array([[3, 1, 4, 0, 2], [0, 2, 1, 3, 4], [4, 3, 2, 1, 0], [1, 0, 2, 3, -1]])
REL = [[1, 2], [0], [], [3, 4, 0]]


@pytest.fixture(scope="module")
def values() -> dict[str, np.ndarray]:
    indptr, items = _csr(REL)
    hits = hits_from_csr(TOP, indptr, items, n_items=5)
    return ranking_metrics(hits, np.diff(indptr), ks=(1, 3, 5))


def test_hits_matrix_marks_relevant_positions_only():
    indptr, items = _csr(REL)
    hits = hits_from_csr(TOP, indptr, items, n_items=5)
    expected = np.array([[0, 1, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, 0, 1, 0]], dtype=bool)
    np.testing.assert_array_equal(hits, expected)


def test_recall_and_precision(values):
    np.testing.assert_allclose(values["recall_at_1"][[0, 1, 3]], [0, 1, 0])
    np.testing.assert_allclose(values["recall_at_3"][[0, 1, 3]], [1 / 2, 1, 1 / 3])
    np.testing.assert_allclose(values["recall_at_5"][[0, 1, 3]], [1, 1, 2 / 3])
    np.testing.assert_allclose(values["precision_at_3"][[0, 1, 3]], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(values["precision_at_5"][[0, 1, 3]], [2 / 5, 1 / 5, 2 / 5])
    assert np.isnan(values["recall_at_3"][2]) and np.isnan(values["precision_at_3"][2])


def test_ndcg(values):
    # user 0 @5: DCG = 1/log2(3) + 1/log2(6); IDCG = 1 + 1/log2(3)
    u0 = (1 / L2(3) + 1 / L2(6)) / (1 + 1 / L2(3))
    # user 0 @3: DCG = 1/log2(3); IDCG (2 relevant, K=3) = 1 + 1/log2(3)
    u0_3 = (1 / L2(3)) / (1 + 1 / L2(3))
    # user 3 @5: DCG = 1/log2(3) + 1/log2(5); IDCG (3 relevant) = 1 + 1/log2(3) + 1/log2(4)
    u3 = (1 / L2(3) + 1 / L2(5)) / (1 + 1 / L2(3) + 1 / L2(4))
    np.testing.assert_allclose(values["ndcg_at_5"][[0, 1, 3]], [u0, 1.0, u3])
    np.testing.assert_allclose(values["ndcg_at_3"][0], u0_3)
    np.testing.assert_allclose(values["ndcg_at_1"][[0, 1, 3]], [0, 1, 0])


def test_map_hit_rate_mrr(values):
    # AP@5 user 0: (1/2 + 2/5) / min(2, 5); user 3: (1/2 + 2/4) / min(3, 5)
    np.testing.assert_allclose(values["map_at_5"][[0, 1, 3]], [(0.5 + 0.4) / 2, 1.0, (0.5 + 0.5) / 3])
    # AP@1 user 3: no hit at rank 1 -> 0; divisor min(3, 1) = 1
    np.testing.assert_allclose(values["map_at_1"][[0, 1, 3]], [0, 1, 0])
    np.testing.assert_allclose(values["hit_rate_at_1"][[0, 1, 3]], [0, 1, 0])
    np.testing.assert_allclose(values["hit_rate_at_3"][[0, 1, 3]], [1, 1, 1])
    np.testing.assert_allclose(values["mrr_at_1"][[0, 1, 3]], [0, 1, 0])
    np.testing.assert_allclose(values["mrr_at_5"][[0, 1, 3]], [1 / 2, 1, 1 / 2])
    assert np.isnan(values["mrr_at_5"][2])


def test_k_larger_than_the_ranking_counts_missing_positions_as_misses():
    indptr, items = _csr([[0, 1]])
    hits = hits_from_csr(np.array([[0, 1]]), indptr, items, n_items=2)
    v = ranking_metrics(hits, np.diff(indptr), ks=(10,))
    assert v["precision_at_10"][0] == pytest.approx(0.2)
    assert v["recall_at_10"][0] == pytest.approx(1.0)
    assert v["ndcg_at_10"][0] == pytest.approx(1.0)


def test_coverage_and_novelty():
    top = np.array([[0, 1, 2], [0, 1, 3], [0, 2, -1]])
    assert catalog_coverage(top, 1, n_items=10) == pytest.approx(0.1)   # only item 0
    assert catalog_coverage(top, 3, n_items=10) == pytest.approx(0.4)   # items 0-3
    # 3 users in training; item i seen by counts[i] users
    info = item_self_information(np.array([3, 1, 0, 0, 0, 0, 0, 0, 0, 0]), n_users=3)
    assert info[0] == pytest.approx(-L2(4 / 4)) and info[1] == pytest.approx(-L2(2 / 4))
    assert info[2] == pytest.approx(-L2(1 / 4))
    nov = novelty(top, 3, info)
    assert nov[0] == pytest.approx((0 + 1 + 2) / 3)
    assert nov[2] == pytest.approx((0 + 2) / 2)  # the empty slot is ignored


def test_auc_hand_computed_with_ties():
    # likes score 0.9, 0.5; nopes 0.5, 0.1 -> pairs: (0.9>0.5) (0.9>0.1) (0.5=0.5 -> 1/2) (0.5>0.1) = 3.5/4
    assert auc(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0])) == pytest.approx(3.5 / 4)
    assert auc(np.array([0.1, 0.9]), np.array([1, 0])) == pytest.approx(0.0)
    assert math.isnan(auc(np.array([0.3, 0.4]), np.array([1, 1])))


def test_parse_metrics_and_ks_reject_bad_input():
    assert parse_metrics(None) == ALL_METRICS
    assert parse_metrics("ndcg, HitRate") == ("ndcg", "hit_rate")
    with pytest.raises(ValueError, match="unknown metric name.*'ndgc'.*choose from"):
        parse_metrics("ndgc,recall")
    assert parse_ks("50,10,10") == (10, 50)
    with pytest.raises(ValueError, match="whole number"):
        parse_ks("10,ten")
    with pytest.raises(ValueError, match="positive"):
        parse_ks([0, 10])
