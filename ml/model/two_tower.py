"""Keras two-tower model: wires the towers (`ml.model.towers`) to the tasks (`ml.model.tasks`).

A user tower and an item tower, each an ID/lookup stage (optional) and a Dense-only core
ending in an L2-normalised embedding, trained with the in-batch softmax retrieval task plus
the like/nope rating task. `compute_loss` only delegates to the tasks; Keras' own
train/test steps do the rest.

The cores are plain functional Keras models of built-in layers, so they save, load and
export (SavedModel, TensorFlow.js, the numpy forward pass of serving) without custom
objects; the ID tables are exported next to them as arrays (`ml.model.inputs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import ops

from ml.model.inputs import IdTables
from ml.model.optim import FusedAdam, FusedAdamW  # noqa: F401  registered: a saved compiled model names them
from ml.model.tasks import RatingTask, RetrievalTask
from ml.model.towers import IdStage, build_tower

if TYPE_CHECKING:
    from ml.config import ModelConfig

ID_INPUTS = ("user_id", "item_id", "liked_ids", "noped_ids")


def _per_replica(loss):
    """Divide a replica's loss by the number of replicas in sync (tf.distribute).

    Keras sums gradients over replicas and multiplies the tracked `loss` back by their
    number; its built-in losses are pre-divided, a custom `compute_loss` must do the
    same or gradients and the logged loss/val_loss come out N times too large. A no-op
    with one replica.
    """
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        n = tf.distribute.get_strategy().num_replicas_in_sync
        if n > 1:
            loss = loss / float(n)
    return loss


@keras.saving.register_keras_serializable(package="towerops")
class TwoTowerModel(keras.Model):
    """Scores a (user, item) pair by the cosine of their embeddings.

    Inputs are a dict with `user_features` (B, user_dim) and `item_features` (B, item_dim);
    with an ID stage also `user_id`, `item_id` (B,) (vocabulary rows, -1 = unknown) and
    `liked_ids`, `noped_ids` (B, L) (the user's history as item rows, -1 = padding).
    Optional for the loss: `user_index`/`item_index` (B,) to mask accidental hits, and
    `item_log_q` (B,), the log of each item's chance to fill a batch slot (logQ
    correction). The target `y` is the like label (B,).
    """

    def __init__(
        self,
        user_tower: keras.Model,
        item_tower: keras.Model,
        temperature: float = 0.1,
        bce_weight: float = 1.0,
        id_stage: IdStage | None = None,
        logq_weight: float = 1.0,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be > 0 (it divides the cosine scores)")
        u_dim, i_dim = user_tower.output_shape[-1], item_tower.output_shape[-1]
        if u_dim != i_dim:
            raise ValueError(
                f"user tower outputs {u_dim}-d but item tower outputs {i_dim}-d embeddings; "
                "set model.user_embedding_dim equal to model.item_embedding_dim"
            )
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.id_stage = id_stage
        self.temperature = float(temperature)
        self.bce_weight = float(bce_weight)
        self.logq_weight = float(logq_weight)
        # the losses compute in float32 under a mixed-precision policy too (softmax at temperature 0.1, logQ)
        self.retrieval_task = RetrievalTask(temperature=temperature, logq_weight=logq_weight, dtype="float32")
        self.rating_task = RatingTask(temperature=temperature, dtype="float32")
        self.retrieval_loss_tracker = keras.metrics.Mean(name="retrieval_loss")
        self.rating_loss_tracker = keras.metrics.Mean(name="rating_loss")
        self.auc_metric = keras.metrics.AUC(name="auc")

    @classmethod
    def from_config_object(cls, cfg: "ModelConfig", user_dim: int, item_dim: int, bce_weight: float = 1.0,
                           n_items: int | None = None, n_users: int | None = None,
                           seed: int | None = None) -> "TwoTowerModel":
        """The standard architecture for feature widths `user_dim`/`item_dim`.

        With `n_items` and `n_users` (vocabulary sizes) and `cfg.id_embedding_dim > 0` the
        towers get the ID stage: the item core then reads item_dim + d columns, the user core
        user_dim + 2d (+ d more with `cfg.user_id_vector`). Regularisation is the optimizer's weight decay (`ml.model.optim`), so
        the Dense layers carry no kernel penalty.
        """
        d = int(getattr(cfg, "id_embedding_dim", 0) or 0)
        id_stage = None
        if d > 0 and n_items and n_users:
            id_stage = IdStage(n_items, n_users, d, id_dropout=float(getattr(cfg, "id_dropout", 0.0)), seed=seed,
                               history_dropout=float(getattr(cfg, "history_dropout", 0.0)),
                               user_vector=bool(getattr(cfg, "user_id_vector", True)),
                               learning_rate_scale=float(getattr(cfg, "id_learning_rate_scale", 1.0)))
        user_in = user_dim + ((3 if id_stage.user_vector else 2) * d if id_stage else 0)
        item_in = item_dim + (d if id_stage else 0)
        user_tower = build_tower(user_in, cfg.hidden_units, cfg.user_embedding_dim, cfg.dropout_rate, 0.0, "user_tower")
        item_tower = build_tower(item_in, cfg.hidden_units, cfg.item_embedding_dim, cfg.dropout_rate, 0.0, "item_tower")
        return cls(user_tower, item_tower, temperature=cfg.temperature, bce_weight=bce_weight, id_stage=id_stage,
                   logq_weight=float(getattr(cfg, "logq_weight", 1.0)))

    def build(self, input_shape=None) -> None:
        """Nothing to create: the towers are built functional models, the tables and the rating bias
        exist from __init__ (defined so Keras does not warn about unbuilt state)."""
        self.built = True

    # ------------------------------------------------------------------ forward
    def tower_inputs(self, inputs, training=False):
        """(user core input, item core input): content, with the ID vectors appended when there is an ID stage."""
        user_x, item_x = inputs["user_features"], inputs["item_features"]
        if self.id_stage is None:
            return user_x, item_x
        missing = [k for k in ID_INPUTS if k not in inputs]
        if missing:
            raise ValueError(f"the model has an ID stage but the inputs lack {missing} (have {sorted(inputs)}); "
                             "build them with the trainer's training_arrays or ml.model.inputs")
        ids = self.id_stage
        user_x = ops.concatenate([ops.cast(user_x, "float32"),
                                  ids.user_vectors(inputs["user_id"], inputs["liked_ids"], inputs["noped_ids"],
                                                   training=training, xla=bool(getattr(self, "jit_compile", False)))],
                                 axis=1)
        item_x = ops.concatenate([ops.cast(item_x, "float32"), ids.item_vectors(inputs["item_id"], training=training)],
                                 axis=1)
        return user_x, item_x

    def call(self, inputs, training=False):
        user_x, item_x = self.tower_inputs(inputs, training=training)
        return self.user_tower(user_x, training=training), self.item_tower(item_x, training=training)

    def id_tables(self) -> IdTables:
        """The current ID tables as numpy (width 0 for a content-only model)."""
        if self.id_stage is None:
            return IdTables.empty(0, 0)
        ids = self.id_stage
        item, user = ids.tables()
        user = ops.convert_to_numpy(user) if user is not None else np.zeros((ids.n_users + 1, 0), np.float32)
        return IdTables(ops.convert_to_numpy(item), user)

    # --------------------------------------------------------------------- loss
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        user_emb, item_emb = y_pred
        x = x if isinstance(x, dict) else {}
        labels = ops.cast(ops.reshape(y, (-1,)), "float32")
        retrieval_loss = self.retrieval_task(user_emb, item_emb, labels, item_index=x.get("item_index"),
                                             user_index=x.get("user_index"), item_log_q=x.get("item_log_q"))
        rating_loss, rating_logits = self.rating_task(user_emb, item_emb, labels)
        total = retrieval_loss + self.bce_weight * rating_loss
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        self.retrieval_loss_tracker.update_state(retrieval_loss)
        self.rating_loss_tracker.update_state(rating_loss)
        self.auc_metric.update_state(labels, ops.sigmoid(rating_logits))
        return _per_replica(total)

    # ------------------------------------------------------------ serialisation
    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "user_tower": keras.saving.serialize_keras_object(self.user_tower),
            "item_tower": keras.saving.serialize_keras_object(self.item_tower),
            "id_stage": keras.saving.serialize_keras_object(self.id_stage) if self.id_stage is not None else None,
            "temperature": self.temperature,
            "bce_weight": self.bce_weight,
            "logq_weight": self.logq_weight,
        }

    @classmethod
    def from_config(cls, config: dict) -> "TwoTowerModel":
        config = dict(config)
        config["user_tower"] = keras.saving.deserialize_keras_object(config["user_tower"])
        config["item_tower"] = keras.saving.deserialize_keras_object(config["item_tower"])
        if config.get("id_stage") is not None:
            config["id_stage"] = keras.saving.deserialize_keras_object(config["id_stage"])
        return cls(**config)
