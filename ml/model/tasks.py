"""The two losses of the two-tower model as small Keras layers, in the TensorFlow Recommenders manner.

`RetrievalTask`: in-batch softmax. Each like row of the batch is a query whose positive is
its own item and whose negatives are the other rows' items; scores are cosines divided by
a temperature. Accidental hits (the same item elsewhere in the batch, or another like of the
same user) are masked out of the negatives, and the sampling-bias (logQ) correction
subtracts log q(item) from every logit, so the batch softmax estimates the full-catalog one
even though popular items fill more batch slots.

`RatingTask`: like/nope binary cross-entropy on the pair's own score plus a learned bias,
so explicit nopes push a pair apart, which the softmax alone never sees.

Each task takes tensors and returns a scalar loss; `TwoTowerModel.compute_loss` adds them.
"""

from __future__ import annotations

import keras
from keras import ops

MASKED_LOGIT = -1e9


def _check_pair(name: str, query, candidate) -> None:
    """Static shape check (when known): (B, d) queries against (B, d) candidates."""
    q, c = tuple(query.shape), tuple(candidate.shape)
    if len(q) != 2 or len(c) != 2:
        raise ValueError(f"{name}: query embeddings have shape {q} and candidate embeddings {c}; both must be "
                         "(batch, dim) matrices: pass the towers' outputs for one batch")
    if q[1] is not None and c[1] is not None and q[1] != c[1]:
        raise ValueError(f"{name}: query embeddings are {q[1]}-d but candidate embeddings {c[1]}-d; set "
                         "model.user_embedding_dim equal to model.item_embedding_dim")
    if q[0] is not None and c[0] is not None and q[0] != c[0]:
        raise ValueError(f"{name}: {q[0]} query rows but {c[0]} candidate rows; row i of both must be the same "
                         "(user, item) interaction of the batch")


def _check_temperature(name: str, temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"{name}: temperature={temperature} must be > 0 (it divides the cosine scores); "
                         "the default is 0.1")
    return float(temperature)


def _column(name: str, field: str, value, batch):
    """A (B,) tensor from a (B,) or (B, 1) input; ValueError naming the field otherwise."""
    value = ops.convert_to_tensor(value)
    shape = tuple(value.shape)
    if len(shape) == 2 and shape[1] == 1:
        value = ops.reshape(value, (-1,))
        shape = tuple(value.shape)
    if len(shape) != 1 or (shape[0] is not None and batch is not None and shape[0] != batch):
        raise ValueError(f"{name}: {field} has shape {shape}; it needs one value per batch row, shape ({batch},)")
    return value


@keras.saving.register_keras_serializable(package="towerops")
class RetrievalTask(keras.layers.Layer):
    """In-batch softmax over likes with accidental-hit masking and logQ correction.

    loss = mean over like rows r of -log softmax_r(logits)[r], with
    logits[r, c] = cos(u_r, i_c) / temperature - logq_weight * log q(item_c), and
    logits[r, c] = -1e9 for c != r when item_c == item_r or (user_c == user_r and row c is a like).

    `logq_weight` 1 is the textbook correction (the batch softmax then estimates the full
    softmax over the catalog); above 1 it also discounts popularity in what the cosine learns,
    0 turns the correction off.
    """

    def __init__(self, temperature: float = 0.1, logq_weight: float = 1.0, name: str = "retrieval",
                 **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.temperature = _check_temperature(name, temperature)
        if not logq_weight >= 0:
            raise ValueError(f"{name}: logq_weight={logq_weight} must be >= 0 (1 = the standard logQ correction, "
                             "0 = none)")
        self.logq_weight = float(logq_weight)

    def call(self, query, candidate, labels, item_index=None, user_index=None, item_log_q=None):
        _check_pair(self.name, query, candidate)
        batch = query.shape[0]
        labels = ops.cast(_column(self.name, "labels", labels, batch), "float32")
        scores = ops.matmul(query, ops.transpose(candidate)) / self.temperature  # (B, B)
        n = ops.shape(scores)[0]
        eye = ops.eye(n, dtype="bool")
        mask = ops.zeros_like(eye)
        if item_index is not None:
            items = _column(self.name, "item_index", item_index, batch)
            mask = ops.logical_or(mask, ops.equal(items[:, None], items[None, :]))
        if user_index is not None:
            users = _column(self.name, "user_index", user_index, batch)
            same_user_like = ops.logical_and(ops.equal(users[:, None], users[None, :]), labels[None, :] > 0.5)
            mask = ops.logical_or(mask, same_user_like)
        mask = ops.logical_and(mask, ops.logical_not(eye))
        logits = scores
        if item_log_q is not None:
            log_q = ops.cast(_column(self.name, "item_log_q", item_log_q, batch), scores.dtype)
            logits = logits - self.logq_weight * log_q[None, :]
        logits = ops.where(mask, ops.full_like(logits, MASKED_LOGIT), logits)
        log_probs = logits - ops.logsumexp(logits, axis=1, keepdims=True)
        diag = ops.sum(ops.where(eye, log_probs, ops.zeros_like(log_probs)), axis=1)
        return -ops.sum(diag * labels) / ops.maximum(ops.sum(labels), 1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature, "logq_weight": self.logq_weight}


@keras.saving.register_keras_serializable(package="towerops")
class RatingTask(keras.layers.Layer):
    """Like/nope binary cross-entropy on logit = cos(u, i) / temperature + bias.

    `call` returns (loss, logits); the logits feed the AUC metric.
    """

    def __init__(self, temperature: float = 0.1, name: str = "rating", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.temperature = _check_temperature(name, temperature)
        self.bias = self.add_weight(shape=(), initializer="zeros", name="bias")

    def call(self, query, candidate, labels):
        _check_pair(self.name, query, candidate)
        labels = ops.cast(_column(self.name, "labels", labels, query.shape[0]), "float32")
        logits = ops.sum(query * candidate, axis=1) / self.temperature + self.bias
        # numerically stable BCE with logits: max(x, 0) - x*y + log(1 + exp(-|x|))
        loss = ops.mean(ops.maximum(logits, 0.0) - logits * labels + ops.log1p(ops.exp(-ops.abs(logits))))
        return loss, logits

    def get_config(self) -> dict:
        return {**super().get_config(), "temperature": self.temperature}
