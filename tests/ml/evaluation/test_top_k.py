"""The one top-k (`ml.inference.scoring.top_k_indices`) at the k boundary, and the protocol's use of it.

Ties always go to the lower index, also when the tied scores straddle position k (argpartition
alone picks an arbitrary subset of them); k = n, k > n and k = 0 are edge cases, not errors.
"""

from __future__ import annotations

import numpy as np
import pytest

from ml.evaluation.protocol import build_split, rank_system
from ml.inference.scoring import top_k_indices


def test_ties_straddling_position_k_go_to_the_lower_index() -> None:
    # positions 1, 2, 4, 6 tie at 0.5; k = 3 takes item 3 (0.9), then the two lowest tied rows 1 and 2
    scores = np.array([0.1, 0.5, 0.5, 0.9, 0.5, 0.2, 0.5])
    assert top_k_indices(scores, 3).tolist() == [3, 1, 2]
    assert top_k_indices(scores, 4).tolist() == [3, 1, 2, 4]
    assert top_k_indices(np.ones(100), 3).tolist() == [0, 1, 2]          # all tied: the first three
    assert top_k_indices(np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 2.0, 2.0, 2.0]]), 2).tolist() == [[0, 1], [1, 2]]


def test_k_equal_to_and_above_n_return_every_index_in_order() -> None:
    scores = np.array([0.3, 0.9, 0.3, -np.inf])
    assert top_k_indices(scores, 4).tolist() == [1, 0, 2, 3]              # -inf last
    assert top_k_indices(scores, 10).tolist() == [1, 0, 2, 3]             # k > n: n indices, no padding


def test_k_zero_is_an_empty_ranking() -> None:
    assert top_k_indices(np.array([0.2, 0.1]), 0).shape == (0,)
    assert top_k_indices(np.zeros((3, 5)), 0).shape == (3, 0)


def test_nan_scores_rank_last() -> None:
    assert top_k_indices(np.array([np.nan, 0.1, 0.2]), 3).tolist() == [2, 1, 0]


def test_matches_a_full_stable_sort_on_random_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 30))
        scores = rng.integers(0, 3, size=(3, n)).astype(float)
        k = int(rng.integers(0, n + 2))
        expected = np.stack([np.lexsort((np.arange(n), -row))[:min(k, n)] for row in scores])
        np.testing.assert_array_equal(top_k_indices(scores, k), expected)


@pytest.fixture
def tiny_split():
    """3 users x 5 items. History: u0 saw item 0; u1 saw items 0-3 (only item 4 is left); u2 nothing.
    Held out: one like each (u0: item 2, u1: item 4, u2: item 1)."""
    users = np.array([0, 1, 1, 1, 1, 0, 1, 2])
    items = np.array([0, 0, 1, 2, 3, 2, 4, 1])
    labels = np.array([1, 0, 1, 0, 1, 1, 1, 1])
    history = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    return build_split(users, items, labels, history, ~history, np.array(["u0", "u1", "u2"]),
                       [f"i{k}" for k in range(5)], "test", {"validation_split": 0.0, "test_split": 0.5})


def test_rank_system_masks_history_and_pads_with_minus_one(tiny_split) -> None:
    tied = rank_system("tied", lambda rows: np.zeros((len(rows), 5), np.float32), tiny_split, k_max=3)
    # all scores tie: lowest rows first, history items never shown; u1 has one unseen item left
    assert tied.top.tolist() == [[1, 2, 3], [4, -1, -1], [0, 1, 2]]
    whole = rank_system("tied", lambda rows: np.zeros((len(rows), 5), np.float32), tiny_split, k_max=9)
    assert whole.top.shape == (3, 5)                                     # k > n items: n columns
    assert whole.top[0].tolist() == [1, 2, 3, 4, -1]
