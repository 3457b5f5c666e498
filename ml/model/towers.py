"""The towers' two stages: an ID/lookup stage (embedding tables) and a Dense-only MLP core.

The core (`build_tower`) is an MLP over a feature vector ending in an L2-normalised
embedding, built from Dense / Dropout / UnitNormalization only, so serving runs it as a
numpy forward pass and it exports to TF.js unchanged.

The ID stage (`IdStage`) holds the learned identity of items and users: an item-id table
and a user-id table, each with one out-of-vocabulary (OOV) row after the known ones. The
item core sees [item content ; item-id vector]; the user core sees [user content ;
mean item-id vector of the liked items ; of the noped items], plus the user-id vector when
`model.user_id_vector` is on (off by default: a user's row learns from that user's few swipes
only, starts as noise next to the pooled history, and is not there at the edge, which always
feeds the OOV row; bench/quality.py's harness: NDCG@10 on the validation part 0.159 with it,
0.167 without, mix 0.8). An id of
-1 (or any negative id) is padding in a history and "unknown" as an own id, which maps to
the OOV row; `id_dropout` sends a share of the own ids to the OOV row while training, so
the OOV row learns what a cold item or user looks like from content alone; `history_dropout`
drops a share of the history ids of each training row (see `IdStage._drop_history`).
`ml.model.inputs` computes the same vectors in numpy from exported tables.
"""

from __future__ import annotations

import keras
from keras import ops

# ID vectors start at the scale of the standardised content columns they sit next to (mean 0,
# variance 1): at 0.05 they reached the first Dense layer 20x weaker than content and learned late.
ID_INIT_STDDEV = 1.0


def build_tower(
    input_dim: int,
    hidden_units: list[int],
    output_dim: int,
    dropout_rate: float,
    l2_regularization: float,
    name: str,
) -> keras.Model:
    """MLP `input_dim -> hidden_units... -> output_dim`, L2-normalised output.

    Dropout follows every hidden layer but the last: the last hidden layer feeds the
    projection straight, since noise there moves the normalised embedding itself and, at the
    softmax temperature of 0.1, drowns the ranking signal (bench/quality.py: NDCG@10 on the
    validation part 0.086 with dropout everywhere vs 0.125 without it on the last layer, 5 epochs).
    `l2_regularization` adds an L2 kernel penalty to the loss (kept for callers that build
    bare towers); `TwoTowerModel.from_config_object` passes 0 and regularises with the
    optimizer's decoupled weight decay instead (see `ml.model.optim`).
    """
    if input_dim < 1:
        raise ValueError(f"{name}: input_dim={input_dim}; the feature pipeline produced no columns")
    inputs = keras.Input(shape=(input_dim,), name=f"{name}_features", dtype="float32")
    x = inputs
    reg = keras.regularizers.L2(l2_regularization) if l2_regularization > 0 else None
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"{name}_dense_{i}")(x)
        if dropout_rate > 0 and i < len(hidden_units) - 1:
            x = keras.layers.Dropout(dropout_rate, name=f"{name}_dropout_{i}")(x)
    # the projection and the normalisation compute in float32 under a mixed-precision policy too:
    # the embeddings feed a softmax at temperature 0.1, where float16 rounding shows
    x = keras.layers.Dense(output_dim, kernel_regularizer=reg, name=f"{name}_projection", dtype="float32")(x)
    outputs = keras.layers.UnitNormalization(axis=-1, name=f"{name}_l2norm", dtype="float32")(x)
    return keras.Model(inputs, outputs, name=name)


def masked_mean(table, ids, xla: bool = False):
    """Mean of `table` rows over the non-negative entries of `ids` (B, L); zeros where none.

    The gradient with respect to the table comes out dense, (rows, d), in one operation.
    Autodiff of a gather would hand the optimizer B * L gradient slices, which Keras' Adam
    densifies again for every moment it updates: the ID stage then cost half of each training
    step (bench/train.py). Without XLA the mean is one sparse (B, rows) x dense (rows, d)
    product with weights 1/count (the fastest on the CPU); XLA compiles no sparse product, so
    under `jit_compile` a gather computes the forward and a segment sum the dense gradient.
    """
    import tensorflow as tf

    table = tf.cast(table, tf.float32)  # float32 under mixed precision too
    if xla:
        return _gathered_mean(table, tf.cast(ids, tf.int32))
    ids = tf.cast(ids, tf.int64)
    valid = ids >= 0
    at = tf.where(valid)                                            # (nnz, 2), row-major: sorted, as the product needs
    counts = tf.maximum(tf.reduce_sum(tf.cast(valid, tf.float32), axis=1), 1.0)
    weights = tf.gather(1.0 / counts, at[:, 0])
    shape = tf.stack([tf.shape(ids, out_type=tf.int64)[0], tf.shape(table, out_type=tf.int64)[0]])
    pooling = tf.sparse.SparseTensor(tf.stack([at[:, 0], tf.gather_nd(ids, at)], axis=1), weights, shape)
    return tf.sparse.sparse_dense_matmul(pooling, table)


def _gathered_mean(table, ids):
    """`masked_mean` for XLA: static shapes, a gathered (B, L, d) forward and a dense segment-sum gradient."""
    import tensorflow as tf

    valid = tf.cast(ids >= 0, tf.float32)
    weights = valid / tf.maximum(tf.reduce_sum(valid, axis=1, keepdims=True), 1.0)  # (B, L)
    rows = tf.maximum(ids, 0)

    @tf.custom_gradient
    def pooled(t):
        def grad(upstream):  # d(out[b]) / d(t[rows[b, l]]) = weights[b, l]
            parts = tf.reshape(upstream[:, None, :] * weights[..., None], (-1, tf.shape(t)[1]))
            return tf.math.unsorted_segment_sum(parts, tf.reshape(rows, (-1,)), tf.shape(t)[0])

        return tf.einsum("bld,bl->bd", tf.gather(t, rows), weights), grad

    return pooled(table)


@keras.saving.register_keras_serializable(package="towerops")
class IdStage(keras.layers.Layer):
    """Item-id and user-id embedding tables (known rows, then one OOV row) and history pooling."""

    def __init__(self, n_items: int, n_users: int, dim: int, id_dropout: float = 0.0, seed: int | None = None,
                 history_dropout: float = 0.0, user_vector: bool = True, learning_rate_scale: float = 1.0,
                 name: str = "id_stage", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        for field, value in (("n_items", n_items), ("n_users", n_users), ("dim", dim)):
            if int(value) < 1:
                raise ValueError(f"{name}: {field}={value} must be >= 1 (vocabulary sizes come from the training "
                                 "data; model.id_embedding_dim=0 turns the ID stage off)")
        if not 0.0 <= id_dropout < 1.0:
            raise ValueError(f"{name}: id_dropout={id_dropout} must be in [0, 1), e.g. 0.1")
        if not 0.0 <= history_dropout < 1.0:
            raise ValueError(f"{name}: history_dropout={history_dropout} must be in [0, 1), e.g. 0.5")
        if not learning_rate_scale > 0:
            raise ValueError(f"{name}: learning_rate_scale={learning_rate_scale} must be > 0, e.g. 10")
        self.history_dropout = float(history_dropout)
        # the tables hold vectors / scale and every lookup multiplies by scale: Adam moves a weight by about
        # the learning rate a step whatever its gradient, so the ID vectors learn `scale` times faster
        self.learning_rate_scale = float(learning_rate_scale)
        self.n_items, self.n_users, self.dim = int(n_items), int(n_users), int(dim)
        self.id_dropout = float(id_dropout)
        self.seed = seed
        init = keras.initializers.RandomNormal(stddev=ID_INIT_STDDEV / self.learning_rate_scale, seed=seed)
        self.item_table = self.add_weight(shape=(self.n_items + 1, self.dim), initializer=init, name="item_id_table")
        self.user_vector = bool(user_vector)
        self.user_table = self.add_weight(shape=(self.n_users + 1, self.dim), initializer=init, name="user_id_table") \
            if self.user_vector else None
        self._seed_generator = keras.random.SeedGenerator(seed) if self.id_dropout > 0 else None
        self._history_seed = keras.random.SeedGenerator(None if seed is None else seed + 1) \
            if self.history_dropout > 0 else None

    def _own_ids(self, ids, oov: int, training: bool):
        ids = ops.cast(ops.reshape(ids, (-1,)), "int32")
        ids = ops.where(ids < 0, oov, ids)
        if training and self._seed_generator is not None:
            drop = keras.random.uniform(ops.shape(ids), seed=self._seed_generator) < self.id_dropout
            ids = ops.where(drop, oov, ids)
        return ids

    def _drop_history(self, ids):
        """Training only: each history id becomes padding with probability `history_dropout`.

        Every training row of a user otherwise pools the same history, which an MLP can
        memorise as a fingerprint of the user; a fresh random subset per row makes the towers
        learn from which items go together (denoising, as in Mult-DAE) and matches serving,
        where the history is a sample of what the user will swipe.
        """
        ids = ops.cast(ids, "int32")
        drop = keras.random.uniform(ops.shape(ids), seed=self._history_seed) < self.history_dropout
        return ops.where(drop, -1, ids)

    def _scaled(self, x):
        return x if self.learning_rate_scale == 1.0 else x * self.learning_rate_scale

    def item_vectors(self, item_id, training: bool = False):
        """(B,) item ids -> (B, dim) item-id vectors (OOV row for negative ids)."""
        return self._scaled(ops.cast(ops.take(self.item_table, self._own_ids(item_id, self.n_items, training),
                                              axis=0), "float32"))

    def tables(self) -> tuple:
        """(item table, user table or None) as the vectors the lookups return (scale applied)."""
        user = None if self.user_table is None else self._scaled(ops.convert_to_tensor(self.user_table))
        return self._scaled(ops.convert_to_tensor(self.item_table)), user

    def user_vectors(self, user_id, liked_ids, noped_ids, training: bool = False, xla: bool = False):
        """[mean liked item vector ; mean noped item vector ; user-id vector], (B, 3 * dim); (B, 2 * dim) without
        the user-id vector (`user_vector=False`). `xla`: the graph is compiled with XLA (see `masked_mean`)."""
        if training and self.history_dropout > 0:
            liked_ids = self._drop_history(liked_ids)
            noped_ids = self._drop_history(noped_ids)
        parts = [self._scaled(masked_mean(self.item_table, liked_ids, xla)),
                 self._scaled(masked_mean(self.item_table, noped_ids, xla))]
        if self.user_table is not None:
            parts.append(self._scaled(ops.cast(ops.take(self.user_table, self._own_ids(user_id, self.n_users,
                                                                                       training), axis=0), "float32")))
        return ops.concatenate(parts, axis=1)

    def call(self, item_id):
        return self.item_vectors(item_id)

    def get_config(self) -> dict:
        return {**super().get_config(), "n_items": self.n_items, "n_users": self.n_users, "dim": self.dim,
                "id_dropout": self.id_dropout, "seed": self.seed, "history_dropout": self.history_dropout,
                "user_vector": self.user_vector, "learning_rate_scale": self.learning_rate_scale}
