"""The ID stage: OOV fallback for cold items and users, history pooling, numpy == graph, save/reload."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ml.model.inputs import IdTables, item_tower_inputs, pooled_history
from ml.model.towers import IdStage, build_tower
from ml.model.two_tower import TwoTowerModel

# 2 known items + OOV, 2 known users + OOV, 2-d id vectors
ITEM_TABLE = np.array([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], "float32")
USER_TABLE = np.array([[2.0, 0.0], [0.0, 2.0], [-1.0, -1.0]], "float32")


def _stage() -> IdStage:
    stage = IdStage(n_items=2, n_users=2, dim=2)
    stage.item_table.assign(ITEM_TABLE)
    stage.user_table.assign(USER_TABLE)
    return stage


def test_cold_item_and_cold_user_use_the_oov_row() -> None:
    stage = _stage()
    np.testing.assert_array_equal(np.asarray(stage.item_vectors(np.array([1, -1]))), [[0, 1], [5, 5]])
    # user -1 (cold) with no history: zero pools, OOV user row
    out = np.asarray(stage.user_vectors(np.array([0, -1]), np.array([[0, 1], [-1, -1]]), np.full((2, 2), -1)))
    np.testing.assert_array_equal(out, [[0.5, 0.5, 0, 0, 2, 0],      # mean of items 0, 1; no nopes; user 0
                                        [0, 0, 0, 0, -1, -1]])      # cold: nothing pooled, OOV row


def test_id_dropout_only_while_training() -> None:
    stage = IdStage(n_items=2, n_users=2, dim=2, id_dropout=0.999, seed=1)
    stage.item_table.assign(ITEM_TABLE)
    ids = np.zeros(64, "int32")
    assert (np.asarray(stage.item_vectors(ids, training=False)) == ITEM_TABLE[0]).all()
    dropped = np.asarray(stage.item_vectors(ids, training=True))
    assert (dropped == ITEM_TABLE[2]).all(axis=1).mean() > 0.9   # sent to the OOV row


def test_history_dropout_pools_a_subset_only_while_training() -> None:
    table = np.eye(8, dtype="float32")                       # item k -> unit vector k: the pool shows who was kept
    stage = IdStage(n_items=7, n_users=1, dim=8, history_dropout=0.5, seed=3)
    stage.item_table.assign(table)
    liked = np.tile(np.arange(7, dtype="int32"), (256, 1))   # every row: items 0..6
    nopes = np.full((256, 1), -1, "int32")
    users = np.zeros(256, "int32")
    served = np.asarray(stage.user_vectors(users, liked, nopes, training=False))[:, :8]
    np.testing.assert_allclose(served, np.tile(np.r_[np.full(7, 1 / 7), 0], (256, 1)), rtol=1e-6)  # whole history
    trained = np.asarray(stage.user_vectors(users, liked, nopes, training=True))[:, :8]
    kept = trained > 0
    assert 0.35 < kept.mean(axis=0)[:7].mean() < 0.65                 # about half of the ids survive
    assert len({tuple(r) for r in kept}) > 50                          # a different subset per row
    rows = kept.any(axis=1)                                            # a kept subset is pooled as its mean
    np.testing.assert_allclose(trained[rows].sum(axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="history_dropout=1.0"):
        IdStage(n_items=2, n_users=2, dim=2, history_dropout=1.0)


def test_exported_tables_put_the_oov_row_on_cold_rows() -> None:
    tables = IdTables(ITEM_TABLE, USER_TABLE).with_cold_rows_as_oov(np.array([True, False]), np.array([False, True]))
    np.testing.assert_array_equal(tables.item, [[1, 0], [5, 5], [5, 5]])
    np.testing.assert_array_equal(tables.user, [[-1, -1], [0, 2], [-1, -1]])
    # content path still there: [content ; id vector], unknown item id -1 -> OOV row
    x = item_tower_inputs(np.array([[7.0], [8.0], [9.0]], "float32"), tables, np.array([0, 1, -1]))
    np.testing.assert_array_equal(x, [[7, 1, 0], [8, 5, 5], [9, 5, 5]])


def test_pooled_history_is_the_masked_mean() -> None:
    pooled = pooled_history(ITEM_TABLE, np.array([0, 0, 2]), np.array([0, 1, 1]), n_users=3)
    np.testing.assert_array_equal(pooled, [[0.5, 0.5], [0, 0], [0, 1]])


@pytest.mark.parametrize("xla", [False, True])
def test_masked_mean_values_and_dense_gradient(xla: bool) -> None:
    """Hand-checked on a 3-row table: ids [[0, 1, -1], [-1, -1, -1], [2, 2, 0]] average rows 0 and 1,
    nothing (zeros), and rows 2, 2, 0; d sum(out * up) / d table[r] = sum over uses of up[b] / count[b]."""
    import tensorflow as tf

    from ml.model.towers import masked_mean

    table = tf.Variable(np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]], "float32"))
    ids = tf.constant([[0, 1, -1], [-1, -1, -1], [2, 2, 0]])
    up = tf.constant([[1.0, 2.0], [5.0, 5.0], [3.0, 6.0]])

    @tf.function(jit_compile=xla)
    def run():
        with tf.GradientTape() as tape:
            out = masked_mean(table, ids, xla=xla)
            loss = tf.reduce_sum(out * up)
        return out, tape.gradient(loss, table)

    out, grad = run()
    np.testing.assert_allclose(out.numpy(), [[0.5, 0.5], [0.0, 0.0], [7 / 3, 2.0]], rtol=1e-6)
    # dense (the optimizer gets no per-use slices to densify), and the padding row-0 lookups add nothing
    assert isinstance(grad, tf.Tensor)
    np.testing.assert_allclose(grad.numpy(), [[0.5 + 1.0, 1.0 + 2.0], [0.5, 1.0], [2.0, 4.0]], rtol=1e-6)


def _hybrid(seed: int = 0, user_vector: bool = True) -> TwoTowerModel:
    keras.utils.set_random_seed(seed)
    d = 2
    user = build_tower(3 + (3 if user_vector else 2) * d, [4], 2, 0.0, 0.0, "user_tower")
    item = build_tower(3 + d, [4], 2, 0.0, 0.0, "item_tower")
    return TwoTowerModel(user, item, temperature=0.5,
                         id_stage=IdStage(n_items=2, n_users=2, dim=d, seed=seed, user_vector=user_vector))


def _inputs() -> dict:
    rng = np.random.default_rng(0)
    return {"user_features": rng.normal(size=(3, 3)).astype("float32"),
            "item_features": rng.normal(size=(3, 3)).astype("float32"),
            "user_id": np.array([0, 1, -1]), "item_id": np.array([1, -1, 0]),
            "liked_ids": np.array([[0, -1], [0, 1], [-1, -1]]), "noped_ids": np.array([[1, -1], [-1, -1], [-1, -1]])}


def test_cold_item_still_depends_on_content() -> None:
    model = _hybrid()
    x = _inputs()
    _, items = model(x)
    x2 = {**x, "item_features": x["item_features"] + np.array([[0, 0, 0], [3, -2, 1], [0, 0, 0]], "float32")}
    _, items2 = model(x2)
    assert np.abs(np.asarray(items)[1] - np.asarray(items2)[1]).max() > 1e-3   # OOV id, other content
    np.testing.assert_allclose(np.asarray(items)[0], np.asarray(items2)[0], atol=1e-6)


@pytest.mark.parametrize("user_vector", [True, False])
def test_numpy_inputs_equal_the_graph(user_vector: bool) -> None:
    from ml.model.inputs import user_tower_inputs

    model = _hybrid(user_vector=user_vector)
    x = _inputs()
    user_x, item_x = (np.asarray(t) for t in model.tower_inputs(x))
    tables = model.id_tables()

    class _Content:  # the pipeline's content part is the given features themselves here
        @staticmethod
        def user_matrix(profiles, item_features, user_rows, item_rows, labels, n_users):
            return profiles

    hist_u = np.array([0, 0, 1, 1])
    hist_i = np.array([0, 1, 0, 1])
    hist_y = np.array([1, 0, 1, 1])
    np_user = user_tower_inputs(_Content(), np.zeros((2, 1)), tables, x["user_features"], hist_u, hist_i, hist_y,
                                id_rows=x["user_id"])
    np.testing.assert_allclose(np_user, user_x, atol=1e-6)
    assert np_user.shape == (3, 3 + (3 if user_vector else 2) * 2)   # [content ; liked ; noped (; own id)]
    assert tables.user.shape == ((3, 2) if user_vector else (3, 0))
    np.testing.assert_allclose(item_tower_inputs(x["item_features"], tables, x["item_id"]), item_x, atol=1e-6)


@pytest.mark.parametrize("user_vector", [True, False])
def test_hybrid_save_and_reload_give_identical_outputs(tmp_path, user_vector: bool) -> None:
    model = _hybrid(user_vector=user_vector)
    x = _inputs()
    before = model(x)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    after = again(x)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(again.id_tables().item, model.id_tables().item)
    assert again.id_stage.user_vector is user_vector


def test_missing_id_inputs_are_named() -> None:
    x = _inputs()
    del x["liked_ids"]
    with pytest.raises(ValueError, match=r"the model has an ID stage but the inputs lack \['liked_ids'\]"):
        _hybrid()(x)
    with pytest.raises(ValueError, match="n_items=0 must be >= 1"):
        IdStage(n_items=0, n_users=2, dim=2)


def test_without_the_user_vector_the_own_id_changes_nothing() -> None:
    """user_vector=False: the user core sees content and the pooled history only, so a user's own id
    (known, another one, or unknown) leaves the user embedding as it is."""
    model = _hybrid(user_vector=False)
    x = _inputs()
    users, _ = model(x)
    users2, _ = model({**x, "user_id": np.array([1, -1, 0])})
    np.testing.assert_array_equal(np.asarray(users), np.asarray(users2))
    assert model.id_stage.user_table is None


def test_learning_rate_scale_stores_vectors_divided_and_learns_that_much_faster() -> None:
    """`learning_rate_scale` s: the table holds vector / s and lookups multiply by s, so lookups, pools and the
    exported tables are the vectors themselves, while one Adam step (which moves a weight by about the learning
    rate, whatever its gradient) moves a vector s times as far."""
    stage = IdStage(n_items=2, n_users=2, dim=2, learning_rate_scale=4.0)
    stage.item_table.assign(ITEM_TABLE / 4.0)
    stage.user_table.assign(USER_TABLE / 4.0)
    np.testing.assert_allclose(np.asarray(stage.item_vectors(np.array([1, -1]))), [[0, 1], [5, 5]])
    out = np.asarray(stage.user_vectors(np.array([0]), np.array([[0, 1]]), np.array([[-1, -1]])))
    np.testing.assert_allclose(out, [[0.5, 0.5, 0, 0, 2, 0]])
    item, user = (np.asarray(t) for t in stage.tables())
    np.testing.assert_allclose(item, ITEM_TABLE)
    np.testing.assert_allclose(user, USER_TABLE)

    def moved(scale: float) -> float:
        s = IdStage(n_items=2, n_users=2, dim=2, learning_rate_scale=scale)
        s.item_table.assign(ITEM_TABLE / scale)
        before = np.asarray(s.item_vectors(np.array([0])))
        opt = keras.optimizers.Adam(learning_rate=0.01)
        import tensorflow as tf
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(s.item_vectors(np.array([0])))
        opt.apply_gradients(zip(tape.gradient(loss, [s.item_table]), [s.item_table]))
        return float(np.abs(np.asarray(s.item_vectors(np.array([0]))) - before).max())

    np.testing.assert_allclose(moved(1.0), 0.01, rtol=1e-3)   # Adam's first step: lr per coordinate
    np.testing.assert_allclose(moved(4.0), 0.04, rtol=1e-3)
    with pytest.raises(ValueError, match="learning_rate_scale=0"):
        IdStage(n_items=2, n_users=2, dim=2, learning_rate_scale=0)


def test_scaled_tables_numpy_inputs_equal_the_graph_and_survive_reload(tmp_path) -> None:
    keras.utils.set_random_seed(0)
    user = build_tower(3 + 2 * 2, [4], 2, 0.0, 0.0, "user_tower")
    item = build_tower(3 + 2, [4], 2, 0.0, 0.0, "item_tower")
    model = TwoTowerModel(user, item, temperature=0.5, id_stage=IdStage(n_items=2, n_users=2, dim=2, seed=0,
                                                                        user_vector=False, learning_rate_scale=8.0))
    x = _inputs()
    _, item_x = (np.asarray(t) for t in model.tower_inputs(x))
    tables = model.id_tables()
    np.testing.assert_allclose(tables.item, np.asarray(model.id_stage.item_table) * 8.0, rtol=1e-6)
    np.testing.assert_allclose(item_tower_inputs(x["item_features"], tables, x["item_id"]), item_x, atol=1e-6)
    before = model(x)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert again.id_stage.learning_rate_scale == 8.0
    for a, b in zip(before, again(x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(again.id_tables().item, tables.item)


def test_xla_training_steps_match_the_default_ones() -> None:
    """`jit_compile=True` switches the history pooling to its XLA form (gather + dense segment-sum gradient):
    three fit steps land on the same weights as without XLA, and the fit does not fail to compile.
    (16 hidden units: in a 4-unit tower whole rows go dead, and XLA's gradient of a zero vector's
    L2 normalisation is NaN.)"""
    x = _inputs()
    y = np.array([1.0, 0.0, 1.0], "float32")

    def model() -> TwoTowerModel:
        keras.utils.set_random_seed(0)
        return TwoTowerModel(build_tower(3 + 3 * 2, [16], 2, 0.0, 0.0, "user_tower"),
                             build_tower(3 + 2, [16], 2, 0.0, 0.0, "item_tower"), temperature=0.5,
                             id_stage=IdStage(n_items=2, n_users=2, dim=2, seed=0))

    weights = []
    for jit in (False, True):
        m = model()
        m.compile(optimizer=keras.optimizers.Adam(0.05), jit_compile=jit)
        assert m.jit_compile is jit
        m.fit(x, y, batch_size=3, epochs=3, verbose=0, shuffle=False)
        weights.append(m.get_weights())
    for default, xla in zip(*weights):
        np.testing.assert_allclose(xla, default, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(weights[0], model().get_weights())) > 1e-2  # the steps moved them
