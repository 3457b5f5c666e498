"""Comparing two top-k lists that should be the same ranking, up to float rounding.

Two exact scorers (BLAS sgemm vs sgemv, a reduced basis, faiss vs numpy) may order items
whose scores differ by rounding differently. `assert_same_ranking` allows exactly that
and nothing more: equal scores position by position (to `atol`); the same item at every
position whose score is not tied (within `atol`) with a neighbour; within a group of tied
positions the same set of items; and, given `true_score(item)`, every reported score is that
item's real score, so that in the group cut by the end of the list an item of one list may
stand in for one of the other (its score ties, or the scores would differ).
"""

from __future__ import annotations

from typing import Callable, Hashable, Sequence

import numpy as np


def _tie_groups(scores: Sequence[float], atol: float) -> list[list[int]]:
    groups: list[list[int]] = []
    for i, s in enumerate(scores):
        if groups and abs(float(scores[groups[-1][-1]]) - float(s)) <= atol:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def assert_same_ranking(items: Sequence[Hashable], scores: Sequence[float], ref_items: Sequence[Hashable],
                        ref_scores: Sequence[float], atol: float = 1e-5,
                        true_score: Callable[[Hashable], float] | None = None) -> None:
    """Fail unless (items, scores) is the ranking (ref_items, ref_scores) up to ties within atol."""
    items, ref_items = list(items), list(ref_items)
    assert len(items) == len(ref_items), f"{len(items)} items vs {len(ref_items)}"
    np.testing.assert_allclose(np.asarray(scores, dtype=np.float64), np.asarray(ref_scores, dtype=np.float64),
                               atol=atol, rtol=0)
    assert len(set(items)) == len(items), f"an item is listed twice: {items}"
    if true_score is not None:
        for item, score in zip(items, scores):
            assert abs(true_score(item) - float(score)) <= atol, f"{item!r} listed with {score}, its score is {true_score(item)}"
    n = len(items)
    for group in _tie_groups(ref_scores, atol):
        got, want = {items[i] for i in group}, {ref_items[i] for i in group}
        if group[-1] == n - 1 and true_score is not None:
            continue  # cut by the end of the list: a stand-in's true score ties (checked above)
        if len(group) == 1:
            i = group[0]
            assert items[i] == ref_items[i], f"rank {i + 1}: {items[i]!r} vs {ref_items[i]!r} (score {ref_scores[i]}, no tie)"
        else:
            assert got == want, (f"ranks {group[0] + 1}-{group[-1] + 1} (tied scores): "
                                 f"{sorted(map(str, got))} vs {sorted(map(str, want))}")
