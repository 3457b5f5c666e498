"""Embedding-health figures on matrices whose answer is known by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.model.health import dead_unit_shares, effective_rank, embedding_health, forward, mean_pairwise_cosine


def test_effective_rank_by_hand() -> None:
    assert effective_rank(np.eye(8)) == pytest.approx(8.0)            # 8 equal singular values
    assert effective_rank(np.ones((5, 3))) == pytest.approx(1.0)      # all rows the same direction
    # singular values 3 and 1: p = (3/4, 1/4), exp(-(.75 ln .75 + .25 ln .25))
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(np.diag([3.0, 1.0])) == pytest.approx(expected)
    assert math.isnan(effective_rank(np.ones((1, 4))))


def test_mean_pairwise_cosine_by_hand() -> None:
    assert mean_pairwise_cosine(np.eye(3)) == pytest.approx(0.0)
    assert mean_pairwise_cosine(np.array([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)
    # pairs: (a,b)=0, (a,c)=cos45, (b,c)=cos45 -> mean sqrt(2)/3
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert mean_pairwise_cosine(x) == pytest.approx(math.sqrt(2) / 3)


def test_dead_units_and_forward() -> None:
    # unit 0 passes x, unit 1 is -|x| - 1: never positive on any row -> dead
    kernel = np.array([[1.0, -1.0]], np.float32)
    bias = np.array([0.0, -1.0], np.float32)
    proj = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    layers = [("hidden", kernel, bias, "relu"), ("projection", proj, None, "linear")]
    x = np.array([[1.0], [2.0], [0.5]], np.float32)
    emb, hidden = forward(x, layers)
    assert dead_unit_shares(hidden) == {"hidden": 0.5}
    np.testing.assert_allclose(emb, [[1, 0], [1, 0], [1, 0]])         # L2-normalised
    figures = embedding_health(emb, emb, hidden)
    assert figures["health_dead_unit_share"] == 0.5 and figures["health_dead_unit_share.hidden"] == 0.5
    assert figures["health_item_effective_rank"] == pytest.approx(1.0)
    assert figures["health_user_mean_cosine"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"layer 'hidden' takes 1 columns but gets inputs of shape \(3, 2\)"):
        forward(np.ones((3, 2), np.float32), layers)
