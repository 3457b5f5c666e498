"""Two-tower model on tiny tensors: hand-computed loss, masking, save/reload, overfit one batch."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from ml.config import ModelConfig
from ml.model.towers import build_tower
from ml.model.two_tower import TwoTowerModel


def _model(temperature: float = 1.0, bce_weight: float = 1.0, l2: float = 0.0) -> TwoTowerModel:
    cfg = ModelConfig(user_embedding_dim=2, item_embedding_dim=2, hidden_units=[4], dropout_rate=0.0,
                      l2_regularization=l2, temperature=temperature)
    return TwoTowerModel.from_config_object(cfg, user_dim=3, item_dim=3, bce_weight=bce_weight)


def test_loss_matches_hand_computation() -> None:
    model = _model(temperature=1.0)
    u = np.array([[1.0, 0.0], [0.0, 1.0]], dtype="float32")
    i = np.array([[1.0, 0.0], [0.0, 1.0]], dtype="float32")
    labels = np.array([1.0, 0.0], dtype="float32")
    loss = float(model.compute_loss(x={}, y=labels, y_pred=(u, i)))
    # scores = identity. Retrieval: only row 0 is a like: -log(e^1 / (e^1 + e^0)).
    retrieval = math.log(1 + math.exp(-1))
    # Rating: logits = diag = [1, 1], labels [1, 0]: mean(log(1+e^-1), log(1+e^1)).
    rating = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss == pytest.approx(retrieval + rating, rel=1e-5)


def test_temperature_scales_scores() -> None:
    model = _model(temperature=0.5, bce_weight=0.0)
    u = i = np.eye(2, dtype="float32")
    loss = float(model.compute_loss(x={}, y=np.array([1.0, 1.0], "float32"), y_pred=(u, i)))
    assert loss == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)


def test_accidental_hits_are_masked() -> None:
    model = _model(bce_weight=0.0)
    u = np.eye(2, dtype="float32")
    i = np.array([[1.0, 0.0], [1.0, 0.0]], dtype="float32")  # the same item twice
    y = np.array([1.0, 0.0], "float32")
    unmasked = float(model.compute_loss(x={}, y=y, y_pred=(u, i)))
    masked = float(model.compute_loss(x={"item_index": np.array([5, 5])}, y=y, y_pred=(u, i)))
    assert unmasked == pytest.approx(math.log(2), rel=1e-5)   # two equal logits
    assert masked == pytest.approx(0.0, abs=1e-6)             # the duplicate is not a negative


def test_l2_regularization_is_decoupled_weight_decay() -> None:
    """model.l2_regularization is AdamW's lambda: with a zero gradient a kernel shrinks by lr * lambda
    per step, a bias does not, and nothing is added to the loss."""
    import keras as k

    from ml.model.optim import decoupled_weight_decay_optimizer

    model = _model(l2=0.5, bce_weight=0.0)
    u = i = np.eye(2, dtype="float32")
    y = np.array([1.0, 1.0], "float32")
    assert float(model.compute_loss(x={}, y=y, y_pred=(u, i))) == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    kernel = k.Variable(np.full((2, 2), 2.0, "float32"), name="kernel")
    bias = k.Variable(np.full((2,), 2.0, "float32"), name="bias")
    opt = decoupled_weight_decay_optimizer(learning_rate=0.1, weight_decay=0.5)
    opt.apply_gradients([(np.zeros((2, 2), "float32"), kernel), (np.zeros(2, "float32"), bias)])
    np.testing.assert_allclose(np.asarray(kernel), 2.0 * (1 - 0.1 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(bias), 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="model.l2_regularization=-1 must be >= 0"):
        decoupled_weight_decay_optimizer(0.1, -1)


def test_tower_shapes_and_unit_norm() -> None:
    keras.utils.set_random_seed(0)  # an unlucky init can leave a row with every ReLU off (norm 0)
    tower = build_tower(5, [8, 4], 6, 0.2, 0.01, "t")
    out = np.asarray(tower(np.random.default_rng(0).normal(size=(3, 5)).astype("float32")))
    assert out.shape == (3, 6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_mismatched_tower_dims_raise() -> None:
    with pytest.raises(ValueError, match="user tower outputs 4-d but item tower outputs 6-d"):
        TwoTowerModel(build_tower(3, [4], 4, 0, 0, "u"), build_tower(3, [4], 6, 0, 0, "i"))
    with pytest.raises(ValueError, match="input_dim=0"):
        build_tower(0, [4], 4, 0, 0, "u")


def test_save_and_reload_give_identical_outputs(tmp_path) -> None:
    model = _model()
    x = {"user_features": np.random.default_rng(1).normal(size=(4, 3)).astype("float32"),
         "item_features": np.random.default_rng(2).normal(size=(4, 3)).astype("float32")}
    before = model(x)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    after = again(x)
    np.testing.assert_array_equal(np.asarray(before[0]), np.asarray(after[0]))
    np.testing.assert_array_equal(np.asarray(before[1]), np.asarray(after[1]))
    assert again.temperature == model.temperature


@pytest.mark.slow
def test_overfits_one_batch() -> None:
    """The gate from FSDL: a correct model and loss drive one batch's loss to ~0."""
    keras.utils.set_random_seed(0)
    n = 16
    cfg = ModelConfig(user_embedding_dim=16, item_embedding_dim=16, hidden_units=[64], dropout_rate=0.0,
                      l2_regularization=0.0, temperature=0.1)
    model = TwoTowerModel.from_config_object(cfg, user_dim=n, item_dim=n, bce_weight=0.0)
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    x = {"user_features": np.eye(n, dtype="float32"), "item_features": np.eye(n, dtype="float32")[::-1].copy(),
         "item_index": np.arange(n)}
    y = np.ones(n, dtype="float32")
    first = model.evaluate(x, y, batch_size=n, verbose=0, return_dict=True)["retrieval_loss"]
    model.fit(x, y, batch_size=n, epochs=150, verbose=0, shuffle=False)
    last = model.evaluate(x, y, batch_size=n, verbose=0, return_dict=True)["retrieval_loss"]
    assert first > 2.0 and last < 0.05
    u, i = model(x)
    assert (np.argmax(np.asarray(u) @ np.asarray(i).T, axis=1) == np.arange(n)).all()


def test_sampling_bias_correction_subtracts_log_q() -> None:
    model = _model(bce_weight=0.0)
    u = i = np.eye(2, dtype="float32")
    y = np.array([1.0, 0.0], "float32")
    log_q = np.array([math.log(0.5), math.log(0.1)], "float32")
    loss = float(model.compute_loss(x={"item_log_q": log_q}, y=y, y_pred=(u, i)))
    w = model.logq_weight
    assert w == ModelConfig().logq_weight == 1.5     # the config's weight reaches the retrieval task
    # row 0 logits: [1 - w log .5, 0 - w log .1]; the target is column 0
    a, b = 1 - w * math.log(0.5), -w * math.log(0.1)
    assert loss == pytest.approx(-(a - math.log(math.exp(a) + math.exp(b))), rel=1e-5)
