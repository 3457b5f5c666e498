"""Tuning's objective ranks on the VALIDATION part with the protocol's split and top-k, never the test part."""

from __future__ import annotations

import types

import numpy as np
import pytest

from ml.data.synthetic import generate_synthetic
from ml.evaluation.validation import ValidationRanking
from ml.training.trainer import TwoTowerTrainer

CONFIG = {"model": {"user_embedding_dim": 8, "item_embedding_dim": 8, "hidden_units": [8], "id_embedding_dim": 0},
          "training": {"validation_split": 0.2, "test_split": 0.2}, "features": {"text_dim": 4}}


@pytest.fixture(scope="module")
def trainer(tmp_path_factory) -> TwoTowerTrainer:
    t = TwoTowerTrainer(tmp_path_factory.mktemp("vr"), CONFIG)
    t.prepare(generate_synthetic(n_users=120, n_items=80, n_interactions=2400, seed=2).dataset)
    return t


def _towers(user_emb: np.ndarray, n_items: int) -> types.SimpleNamespace:
    """Towers that ignore their inputs: users get `user_emb`, item i gets the i-th unit vector."""
    return types.SimpleNamespace(user_tower=lambda x, training=False: user_emb[: len(x)],
                                 item_tower=lambda x, training=False: np.eye(n_items, dtype=np.float32)[: len(x)])


def test_a_model_that_knows_the_validation_likes_scores_one(trainer) -> None:
    ranking = ValidationRanking(trainer, "val_ndcg_at_10", 10)
    split, p = ranking.split, trainer.prepared
    assert split.part == "valid"
    # held out = the validation rows exactly; the test rows are in neither the held-out part nor the history
    assert len(split.pair_item) == int(p.split.valid.sum())
    assert split.history.user_rows.size == int(p.split.train.sum())
    n_items = len(p.item_ids)
    perfect = np.zeros((len(split.user_ids), n_items), np.float32)
    for u in range(len(split.user_ids)):
        perfect[u, split.rel_items[split.rel_indptr[u]:split.rel_indptr[u + 1]]] = 1.0
    assert ranking(_towers(perfect, n_items)) == pytest.approx(1.0)
    assert ranking(_towers(-perfect, n_items)) < 0.5                     # their likes ranked last


def test_test_likes_do_not_move_the_objective(trainer) -> None:
    """A model pointing every user at their TEST likes scores like any other guess on validation."""
    ranking = ValidationRanking(trainer, "val_recall_at_10", 10)
    split, p = ranking.split, trainer.prepared
    n_items, pos = len(p.item_ids), {int(r): k for k, r in enumerate(split.user_rows)}
    cheat = np.zeros((len(split.user_ids), n_items), np.float32)
    test = p.split.test & (p.labels == 1)
    for u, i in zip(p.user_rows[test], p.item_rows[test]):
        if int(u) in pos:
            cheat[pos[int(u)], i] = 1.0
    valid_likes = {(int(u), int(i)) for u, i in zip(p.user_rows[p.split.valid & (p.labels == 1)],
                                                    p.item_rows[p.split.valid & (p.labels == 1)])}
    overlap = sum((int(u), int(i)) in valid_likes for u, i in zip(p.user_rows[test], p.item_rows[test]))
    assert overlap == 0                                                   # a swipe is in one part only
    assert ranking(_towers(cheat, n_items)) < 0.5


def test_non_ranking_objective_names_the_choices(trainer) -> None:
    with pytest.raises(ValueError, match="not a ranking metric.*ndcg"):
        ValidationRanking(trainer, "val_auc", 10)
