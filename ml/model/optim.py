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


class _FusedAdamStep:
    """Adam's update of a variable as one TensorFlow kernel (`ResourceApplyAdam`), the same formula.

    Keras' own `update_step` runs about ten element-wise ops per variable, each a pass over
    the variable and its two moments; with the ID tables that was a third of a CPU training
    step. The fused kernel makes one pass (bench/train.py: 5-10% of the step). Sparse
    gradients, AMSGrad and other backends keep Keras' path; weight decay stays Keras' own.
    """

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf

        if self.amsgrad or keras.backend.backend() != "tensorflow" or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle, v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta_1, beta2=beta_2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


@keras.saving.register_keras_serializable(package="towerops")
class FusedAdam(_FusedAdamStep, keras.optimizers.Adam):
    """keras.optimizers.Adam with a fused update kernel per variable."""


@keras.saving.register_keras_serializable(package="towerops")
class FusedAdamW(_FusedAdamStep, keras.optimizers.AdamW):
    """keras.optimizers.AdamW (decoupled weight decay) with a fused Adam kernel per variable."""


def decoupled_weight_decay_optimizer(learning_rate: float, weight_decay: float) -> keras.optimizers.Optimizer:
    """Adam with decoupled weight decay `weight_decay` (AdamW); plain Adam when it is 0."""
    if learning_rate <= 0:
        raise ValueError(f"learning_rate={learning_rate} must be > 0, e.g. 0.001")
    if weight_decay < 0:
        raise ValueError(f"model.l2_regularization={weight_decay} must be >= 0 (it is the AdamW weight decay, "
                         "e.g. 0.01)")
    if weight_decay == 0:
        return FusedAdam(learning_rate=learning_rate)
    optimizer = FusedAdamW(learning_rate=learning_rate, weight_decay=weight_decay)
    optimizer.exclude_from_weight_decay(var_names=list(NOT_DECAYED))
    return optimizer
