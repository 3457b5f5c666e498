"""Two-tower model on tiny tensors: hand-computed loss, masking, save/reload, overfit one batch."""

from __future__ import annotations

import math
from pathlib import Path

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


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_fused_adam_steps_equal_keras_adam(weight_decay: float) -> None:
    """The fused kernel is Keras' Adam(W) to float rounding: five steps on a decayed kernel, an undecayed
    bias and an embedding table with sparse (IndexedSlices) gradients, which keep Keras' own update."""
    import keras as k
    import tensorflow as tf

    from ml.model.optim import decoupled_weight_decay_optimizer

    rng = np.random.default_rng(0)
    start = [rng.normal(size=(6, 4)).astype("float32"), rng.normal(size=(4,)).astype("float32"),
             rng.normal(size=(5, 3)).astype("float32")]
    grads = [[rng.normal(size=a.shape).astype("float32") for a in start[:2]] + [rng.normal(size=(2, 3))]
             for _ in range(5)]
    ends = []
    for fused in (False, True):
        kernel, bias, table = (k.Variable(a, name=n) for a, n in zip(start, ("kernel", "bias", "table")))
        if fused:
            opt = decoupled_weight_decay_optimizer(learning_rate=0.05, weight_decay=weight_decay)
            assert type(opt).__name__ == ("FusedAdamW" if weight_decay else "FusedAdam")
        else:
            opt = (k.optimizers.AdamW(learning_rate=0.05, weight_decay=weight_decay) if weight_decay
                   else k.optimizers.Adam(learning_rate=0.05))
            if weight_decay:
                opt.exclude_from_weight_decay(var_names=["bias"])
        for g_kernel, g_bias, g_rows in grads:
            sparse = tf.IndexedSlices(tf.constant(g_rows, tf.float32), tf.constant([1, 3]), tf.constant([5, 3]))
            opt.apply_gradients([(g_kernel, kernel), (g_bias, bias), (sparse, table)])
        ends.append([np.asarray(v) for v in (kernel, bias, table)])
    for keras_adam, fused_adam, before in zip(*ends, start):
        np.testing.assert_allclose(fused_adam, keras_adam, atol=2e-6)
        assert np.abs(fused_adam - before).max() > 0.1      # five steps of lr 0.05 moved every variable


def test_a_saved_compiled_model_loads_where_only_the_model_module_is_imported(tmp_path) -> None:
    """The exported two_tower.keras names its optimizer (towerops>FusedAdamW): a fresh process that imports
    ml.model.two_tower (as every loader of the model does) must find it."""
    import subprocess
    import sys

    from ml.model.optim import decoupled_weight_decay_optimizer

    model = _model()
    model.compile(optimizer=decoupled_weight_decay_optimizer(0.01, 0.01))
    model({"user_features": np.zeros((2, 3), "float32"), "item_features": np.zeros((2, 3), "float32")})
    model.save(tmp_path / "m.keras")
    path = str(tmp_path / "m.keras")
    code = f"import keras, ml.model.two_tower; m = keras.saving.load_model({path!r}); print(type(m.optimizer).__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "FusedAdamW"
