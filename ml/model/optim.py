"""What `model.l2_regularization` means: decoupled weight decay (AdamW), not an L2 term in the loss.

The seed's "L2 0.01" as a Keras kernel regulariser adds 0.01 * sum(w^2) of every kernel to
a loss that is a per-example mean: at the seed's sizes that penalty outweighs the data
term, drives most ReLU units dead and collapses the embeddings. Here the number is the
AdamW coefficient lambda: after each step every kernel and embedding table shrinks by
lr * lambda of itself, `w <- w - lr * lambda * w` (with Adam's own step on top), independent
of the batch size and of how large the loss is. Biases are not decayed. With the defaults
(lr 0.001, lambda 0.01) a weight that gets no gradient loses 0.001% per step.
"""

from __future__ import annotations

import keras

NOT_DECAYED = ("bias",)  # Dense biases and the rating task's bias


def decoupled_weight_decay_optimizer(learning_rate: float, weight_decay: float) -> keras.optimizers.Optimizer:
    """Adam with decoupled weight decay `weight_decay` (AdamW); plain Adam when it is 0."""
    if learning_rate <= 0:
        raise ValueError(f"learning_rate={learning_rate} must be > 0, e.g. 0.001")
    if weight_decay < 0:
        raise ValueError(f"model.l2_regularization={weight_decay} must be >= 0 (it is the AdamW weight decay, "
                         "e.g. 0.01)")
    if weight_decay == 0:
        return keras.optimizers.Adam(learning_rate=learning_rate)
    optimizer = keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=list(NOT_DECAYED))
    return optimizer
