"""The low-rank scoring path on a really trained tower (README: "when the towers' last hidden
layer is narrower than the embedding, every item embedding lies in a subspace of rank <=
hidden + 1, so the engine scores in that basis: the same scores").

The other low-rank tests feed the engine a synthetic catalog; here a tiny model with a last
hidden layer of 8 and 32-d embeddings is trained, and its own exported catalog must trigger
the reduction and give the exact engine's answers.
"""

from __future__ import annotations

import numpy as np
import pytest
from support.ranking import assert_same_ranking

from ml.inference.engine import RealtimeInferenceEngine

pytestmark = pytest.mark.slow

LAST_HIDDEN, DIM = 8, 32


@pytest.fixture(scope="module")
def narrow_bundle(tiny_synth, tmp_path_factory):
    from ml.training.trainer import create_standard_trainer

    config = {"model": {"user_embedding_dim": DIM, "item_embedding_dim": DIM, "hidden_units": [32, LAST_HIDDEN],
                        "dropout_rate": 0.0},
              "training": {"batch_size": 128, "epochs": 2, "patience": 2, "seed": 5}, "features": {"text_dim": 16}}
    out = tmp_path_factory.mktemp("narrow") / "model"
    create_standard_trainer(model_dir=out, config=config).train(dataset=tiny_synth.dataset)
    return out


def test_trained_catalog_is_reduced_and_scores_like_the_exact_engine(narrow_bundle) -> None:
    reduced = RealtimeInferenceEngine(narrow_bundle, scoring="exact")
    exact = RealtimeInferenceEngine(narrow_bundle, scoring="exact", lowrank=False)
    assert exact.reduction is None
    assert reduced.reduction is not None, "the trained catalog was not recognised as low rank"
    assert 1 <= reduced.reduction.rank <= LAST_HIDDEN + 1
    assert reduced.scoring_matrix.shape == (len(reduced.bundle.item_ids), reduced.reduction.rank)
    assert reduced.reduction.max_residual <= 2e-5

    b = exact.bundle
    items = np.asarray(b.item_embeddings, dtype=np.float64)
    for row in range(0, len(b.user_ids), 10):
        user = b.user_ids[row]
        got, want = reduced.get_recommendations(user, top_k=10), exact.get_recommendations(user, top_k=10)
        u = np.asarray(b.user_embeddings[row], dtype=np.float64)
        assert_same_ranking([r["item_id"] for r in got], [r["score"] for r in got], [r["item_id"] for r in want],
                            [r["score"] for r in want], atol=2e-5,
                            true_score=lambda item: float(items[b.item_index[item]] @ u))
    # a cold user (history only) goes through the user tower, then the same reduced basis
    liked = b.item_ids[:3]
    got = reduced.get_recommendations(None, liked_items=liked, top_k=10)
    want = exact.get_recommendations(None, liked_items=liked, top_k=10)
    assert_same_ranking([r["item_id"] for r in got], [r["score"] for r in got], [r["item_id"] for r in want],
                        [r["score"] for r in want], atol=2e-5)
