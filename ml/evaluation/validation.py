"""Ranking metrics on the VALIDATION part after each epoch, for tuning objectives and early stopping.

The same protocol as offline evaluation (`ml.evaluation.protocol`): user vectors from the
train history only, items met in training excluded, relevant = held-out likes not met in
training, the one top-k. Only the validation part is used; the test part is never read.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ml.evaluation.metrics import RANKING_METRICS, metric_key, validation_ranking_metric
from ml.evaluation.protocol import EvalSplit, build_split, embedding_scorer, history_of, rank_system, system_metrics
from ml.model.inputs import item_tower_inputs, user_tower_inputs


class ValidationRanking:
    """Full-catalog ranking metric (`val_ndcg_at_10`, ...) on the time-split validation likes, per epoch."""

    def __init__(self, trainer: Any, metric: str, k: int, batch_users: int = 2048) -> None:
        p = trainer.prepared
        parsed = validation_ranking_metric(metric)
        if parsed is None or parsed[1] != int(k):
            raise ValueError(f"objective metric {metric!r} is not a ranking metric: use val_<metric>_at_<k> with one of "
                             f"{', '.join(RANKING_METRICS)}, or val_loss")
        self.name = parsed[0]
        training = trainer.config.training
        shares = {"validation_split": float(training.validation_split),
                  "test_split": float(getattr(training, "test_split", 0.0) or 0.0)}
        try:
            self.split: EvalSplit = build_split(p.user_rows, p.item_rows, p.labels, p.split.train, p.split.valid,
                                                np.asarray(p.user_ids), [str(i) for i in p.item_ids], "valid", shares,
                                                source="the training data")
        except ValueError as exc:
            raise ValueError(f"{exc}. Ranking metrics need validation likes: use objective.metric: val_loss, more data "
                             "or a larger training.validation_split") from None
        self.trainer, self.k, self.batch_users = trainer, int(k), batch_users
        self.key = metric_key(self.name, self.k)

    def embeddings(self, model: Any) -> tuple[np.ndarray, np.ndarray]:
        """(evaluated users' embeddings from their train history, item embeddings) of the model as it is now.

        `model` has `user_tower`, `item_tower` (the Dense cores) and, for a model with ID
        embeddings, `id_tables()`; items and users without a training interaction use the OOV row.
        """
        t, p = self.trainer, self.trainer.prepared
        if t.uses_ids:
            if not callable(getattr(model, "id_tables", None)):
                raise ValueError("the model has ID embeddings (model.id_embedding_dim > 0) but no id_tables(): pass "
                                 "the Keras model being trained or ModelBundle.towers()")
            tables = model.id_tables().with_cold_rows_as_oov(p.item_known, p.user_known)
        else:
            tables = t.id_tables()
        rows = self.split.user_rows
        users = user_tower_inputs(t.pipeline, p.item_vectors, tables, p.profiles[rows], *history_of(self.split),
                                  id_rows=rows)
        return _embed(model.user_tower, users), _embed(model.item_tower, item_tower_inputs(p.item_vectors, tables))

    def __call__(self, model: Any) -> float:
        ranking = rank_system("model", embedding_scorer(*self.embeddings(model)), self.split, self.k, self.batch_users)
        values = system_metrics(ranking, self.split, [self.k], [self.name]).per_user[self.key]
        values = values[self.split.n_relevant > 0]
        return float(np.nanmean(values)) if len(values) else float("nan")


def _embed(tower: Any, features: np.ndarray, batch: int = 8192) -> np.ndarray:
    features = np.asarray(features, np.float32)
    if len(features) == 0:
        return np.zeros((0, 0), np.float32)
    return np.concatenate([np.asarray(tower(features[i:i + batch], training=False)) for i in range(0, len(features), batch)])


def stopping_metric_k(metric: str) -> int:
    """K of a ranking `training.early_stopping_metric` (val_ndcg_at_10 -> 10); ValueError naming the value
    otherwise. `train_run` calls it before any MLflow run starts, so a typo costs no half-done run."""
    parsed = validation_ranking_metric(metric)
    if parsed is None:
        raise ValueError(f"training.early_stopping_metric={metric!r} is not one towerops computes: use val_loss or "
                         f"val_<metric>_at_<k> with <metric> one of {', '.join(RANKING_METRICS)}, e.g. val_ndcg_at_10")
    return parsed[1]
