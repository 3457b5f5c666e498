"""Latent recovery: does a set of item vectors group items the way a known (hidden) grouping does?"""

from __future__ import annotations

import numpy as np
import pytest

from ml.evaluation.metrics import neighbour_agreement


def test_hand_computed_agreement() -> None:
    # rows 0, 1 point along x, rows 2, 3 along y; row 4 is zero (no direction: a miss)
    vectors = np.array([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [0.0, 0.0]])
    assert neighbour_agreement(vectors, np.array([0, 0, 1, 1, 1])) == pytest.approx(4 / 5)
    # the grouping the vectors do not follow: every nearest neighbour is in the other group (row 4 a miss)
    assert neighbour_agreement(vectors, np.array([0, 1, 0, 1, 0])) == pytest.approx(0.0)
    # blocks of rows give the same answer as one block
    assert neighbour_agreement(vectors, np.array([0, 0, 1, 1, 1]), block=2) == pytest.approx(4 / 5)


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match=r"vectors have shape \(3, 2\) but there are 2 labels"):
        neighbour_agreement(np.zeros((3, 2)), np.array([0, 1]))
    with pytest.raises(ValueError, match="at least 2 rows"):
        neighbour_agreement(np.ones((1, 2)), np.array([0]))


def test_als_factors_recover_the_hidden_communities_content_does_not() -> None:
    """On synthetic data whose likes follow hidden communities, collaborative filtering's item factors group
    items by community far above chance, while the items' content features (which reveal topics only) do not."""
    from ml.data.synthetic import generate_synthetic
    from ml.evaluation.baselines import als_factors
    from ml.evaluation.protocol import build_split, heldout_masks

    synth = generate_synthetic(n_users=600, n_items=200, n_interactions=24_000, seed=0, collaborative_weight=0.9,
                               targeted_exposure=0.8, n_communities=4)
    data = synth.dataset
    items = data.items["item_id"].astype(str).tolist()
    users = data.users["user_id"].astype(str).to_numpy()
    inter = data.interactions
    history, heldout, part = heldout_masks(inter, {"validation_split": 0.2, "test_split": 0.1}, "test")
    user_rows = inter["user_id"].astype(str).map({u: r for r, u in enumerate(users)}).to_numpy()
    item_rows = inter["item_id"].astype(str).map({i: r for r, i in enumerate(items)}).to_numpy()
    split = build_split(user_rows, item_rows, inter["label"].to_numpy(), history, heldout, users, items, part,
                        {"validation_split": 0.2, "test_split": 0.1})
    _, item_factors = als_factors(split, seed=0)
    community = synth.item_communities.argmax(axis=1)
    chance = 1 / synth.item_communities.shape[1]
    assert neighbour_agreement(item_factors, community) > 0.8   # 1.0 when written; chance is 0.25
    assert neighbour_agreement(synth.item_topics, community) < 1.6 * chance
