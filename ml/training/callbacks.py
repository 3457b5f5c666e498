"""Training callbacks: embedding health after every epoch.

`EmbeddingHealth` adds the figures of `ml.model.health` (dead ReLU units, effective rank and
mean cosine of item and user embeddings) to each epoch's logs, so they reach the history,
the terminal line, MLflow and the bundle's final metrics (the best epoch's) like the loss.
It runs once per epoch on a fixed sample (2,048 items and users at most), in numpy, so it
adds nothing to the training step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import keras
import numpy as np

from ml.model.health import SAMPLE_ROWS, dense_layers, sample_rows, tower_health
from ml.model.inputs import item_tower_inputs, user_tower_inputs

if TYPE_CHECKING:
    from ml.training.trainer import TwoTowerTrainer


class EmbeddingHealth(keras.callbacks.Callback):
    """Per-epoch `health_*` figures of the model being trained, on a fixed sample of items and users.

    Users are embedded from their train history (as validation and evaluation do), items
    from their features; unknown ids use the OOV row, as in the exported bundle.
    """

    def __init__(self, trainer: "TwoTowerTrainer", sample: int = SAMPLE_ROWS, seed: int = 0) -> None:
        super().__init__()
        p = trainer.prepared
        self.trainer = trainer
        self.items = sample_rows(len(p.item_ids), sample, seed)
        known = np.flatnonzero(p.user_known)
        self.users = known[sample_rows(len(known), sample, seed)]
        tr = p.split.train
        pos = np.full(len(p.user_ids), -1, np.int64)
        pos[self.users] = np.arange(len(self.users))
        keep = tr & (pos[p.user_rows] >= 0)
        self.hist = (pos[p.user_rows[keep]], p.item_rows[keep], p.labels[keep])

    def figures(self, model: Any) -> dict[str, float]:
        """The health figures of `model` now."""
        t, p = self.trainer, self.trainer.prepared
        tables = model.id_tables().with_cold_rows_as_oov(p.item_known, p.user_known) if t.uses_ids else \
            t.id_tables()
        item_x = item_tower_inputs(p.item_vectors[self.items], tables, self.items)
        user_x = user_tower_inputs(t.pipeline, p.item_vectors, tables, p.profiles[self.users], *self.hist,
                                   id_rows=self.users)
        return tower_health(dense_layers(model.user_tower), user_x, dense_layers(model.item_tower), item_x)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs.update(self.figures(self.model))


class RankingMetric(keras.callbacks.Callback):
    """Adds a full-catalog ranking metric of the validation part (`val_ndcg_at_10`, ...) to each epoch's logs.

    The in-batch softmax loss is a poor guide to when ranking stops improving (it keeps
    rising while NDCG@10 still climbs), so early stopping and the checkpoint can watch this
    instead. Same protocol as tuning and offline evaluation, validation part only.
    """

    def __init__(self, trainer: "TwoTowerTrainer", metric: str) -> None:
        super().__init__()
        from ml.evaluation.validation import ValidationRanking, stopping_metric_k

        self.metric = metric
        self.ranking = ValidationRanking(trainer, metric, stopping_metric_k(metric))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is not None:
            logs[self.metric] = self.ranking(self.model)

