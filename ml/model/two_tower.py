"""Keras two-tower model: a user tower and an item tower, each an MLP ending in an
L2-normalised embedding, trained with in-batch softmax over likes plus an explicit
like/nope (binary cross-entropy) term.

Each tower is a plain functional Keras model of built-in layers, so it saves, loads
and exports (SavedModel, TensorFlow.js) without custom objects. `TwoTowerModel`
implements a single hook, `compute_loss`; Keras' own train/test steps do the rest.
"""

from __future__ import annotations

import keras
from keras import ops

from ml.config import ModelConfig
from ml.model.towers import build_tower


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

    Inputs are a dict with `user_features` (B, user_dim) and `item_features`
    (B, item_dim), optionally `user_index`/`item_index` (B,) used only to mask
    accidental hits in the in-batch softmax, and `item_log_q` (B,), the log of each
    item's chance to appear in a batch, for the sampling-bias correction; the target
    `y` is the like label (B,).
    """

    def __init__(
        self,
        user_tower: keras.Model,
        item_tower: keras.Model,
        temperature: float = 0.1,
        bce_weight: float = 1.0,
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
        self.temperature = float(temperature)
        self.bce_weight = float(bce_weight)
        self.retrieval_loss_tracker = keras.metrics.Mean(name="retrieval_loss")
        self.rating_loss_tracker = keras.metrics.Mean(name="rating_loss")
        self.auc_metric = keras.metrics.AUC(name="auc")
        self.rating_bias = self.add_weight(shape=(), initializer="zeros", name="rating_bias")

    @classmethod
    def from_config_object(cls, cfg: ModelConfig, user_dim: int, item_dim: int, bce_weight: float = 1.0) -> "TwoTowerModel":
        user_tower = build_tower(user_dim, cfg.hidden_units, cfg.user_embedding_dim, cfg.dropout_rate,
                                 cfg.l2_regularization, "user_tower")
        item_tower = build_tower(item_dim, cfg.hidden_units, cfg.item_embedding_dim, cfg.dropout_rate,
                                 cfg.l2_regularization, "item_tower")
        return cls(user_tower, item_tower, temperature=cfg.temperature, bce_weight=bce_weight)

    def call(self, inputs, training=False):
        return (
            self.user_tower(inputs["user_features"], training=training),
            self.item_tower(inputs["item_features"], training=training),
        )

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        user_emb, item_emb = y_pred
        labels = ops.cast(ops.reshape(y, (-1,)), "float32")
        scores = ops.matmul(user_emb, ops.transpose(item_emb)) / self.temperature  # (B, B)
        batch = ops.shape(scores)[0]
        eye = ops.eye(batch, dtype="bool")
        # Accidental hits: the same item (or another like of the same user) elsewhere in
        # the batch is not a negative for this row.
        mask = ops.zeros_like(eye)
        if isinstance(x, dict) and "item_index" in x:
            item_idx = ops.reshape(x["item_index"], (-1,))
            mask = ops.logical_or(mask, ops.equal(item_idx[:, None], item_idx[None, :]))
        if isinstance(x, dict) and "user_index" in x:
            user_idx = ops.reshape(x["user_index"], (-1,))
            same_user_like = ops.logical_and(ops.equal(user_idx[:, None], user_idx[None, :]), labels[None, :] > 0.5)
            mask = ops.logical_or(mask, same_user_like)
        mask = ops.logical_and(mask, ops.logical_not(eye))
        logits = scores
        if isinstance(x, dict) and "item_log_q" in x:
            # Sampling-bias correction: in-batch negatives arrive in proportion to popularity;
            # subtracting log q(item) makes the softmax estimate the full-catalog one.
            logits = logits - ops.cast(ops.reshape(x["item_log_q"], (1, -1)), logits.dtype)
        logits = ops.where(mask, ops.full_like(scores, -1e9), logits)
        log_probs = logits - ops.logsumexp(logits, axis=1, keepdims=True)
        diag_log_prob = ops.sum(ops.where(eye, log_probs, ops.zeros_like(log_probs)), axis=1)
        n_pos = ops.maximum(ops.sum(labels), 1.0)
        retrieval_loss = -ops.sum(diag_log_prob * labels) / n_pos

        diag_scores = ops.sum(ops.where(eye, scores, ops.zeros_like(scores)), axis=1)
        rating_logits = diag_scores + self.rating_bias
        rating_loss = ops.mean(
            ops.maximum(rating_logits, 0.0) - rating_logits * labels + ops.log1p(ops.exp(-ops.abs(rating_logits)))
        )
        total = retrieval_loss + self.bce_weight * rating_loss
        if self.losses:
            total = total + ops.sum(ops.stack(self.losses))
        self.retrieval_loss_tracker.update_state(retrieval_loss)
        self.rating_loss_tracker.update_state(rating_loss)
        self.auc_metric.update_state(labels, ops.sigmoid(rating_logits))
        return _per_replica(total)

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "user_tower": keras.saving.serialize_keras_object(self.user_tower),
            "item_tower": keras.saving.serialize_keras_object(self.item_tower),
            "temperature": self.temperature,
            "bce_weight": self.bce_weight,
        }

    @classmethod
    def from_config(cls, config: dict) -> "TwoTowerModel":
        config = dict(config)
        config["user_tower"] = keras.saving.deserialize_keras_object(config["user_tower"])
        config["item_tower"] = keras.saving.deserialize_keras_object(config["item_tower"])
        return cls(**config)
