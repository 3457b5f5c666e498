"""The ranking comparison the inference tests rely on can fail: only swaps among tied scores pass."""

from __future__ import annotations

import pytest

from support.ranking import assert_same_ranking

SCORES = [0.9, 0.8, 0.7, 0.7, 0.6, 0.5]
ITEMS = ["a", "b", "c", "d", "e", "f"]
TRUE = dict(zip(ITEMS, SCORES)) | {"g": 0.5, "h": 0.1}


def test_identical_lists_and_swaps_within_a_tie_pass() -> None:
    assert_same_ranking(ITEMS, SCORES, ITEMS, SCORES, true_score=TRUE.get)
    assert_same_ranking(["a", "b", "d", "c", "e", "f"], SCORES, ITEMS, SCORES, true_score=TRUE.get)
    # the last place is tied with an item just outside the list: either may fill it
    assert_same_ranking(["a", "b", "c", "d", "e", "g"], SCORES, ITEMS, SCORES, true_score=TRUE.get)


@pytest.mark.parametrize("items, scores, why", [
    (["b", "a", "c", "d", "e", "f"], SCORES, "rank 1"),                            # swap of untied items, same scores
    (["a", "b", "c", "e", "d", "f"], SCORES, "ranks 3-4"),                         # a tie group lost a member
    (["a", "b", "c", "d", "e", "h"], SCORES, "'h' listed with 0.5, its score is 0.1"),  # stand-in not tied
    (["a", "b", "c", "d", "e", "f"], [0.9, 0.8, 0.7, 0.7, 0.6, 0.4], "Not equal"),  # a score off
    (["a", "a", "c", "d", "e", "f"], SCORES, "listed twice"),
])
def test_anything_else_fails(items, scores, why) -> None:
    true = TRUE.get if "listed with" in why else None  # the other cases fail on the order alone
    with pytest.raises(AssertionError, match=why):
        assert_same_ranking(items, scores, ITEMS, SCORES, true_score=true)


def test_reported_scores_must_be_the_items_scores() -> None:
    wrong = {**TRUE, "b": 0.2}
    with pytest.raises(AssertionError, match="'b' listed with 0.8, its score is 0.2"):
        assert_same_ranking(ITEMS, SCORES, ITEMS, SCORES, true_score=wrong.get)
