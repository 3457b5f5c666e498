"""Mixed precision: which policy `training.mixed_precision` means, training under it, a float32 model after.

The GPU is what mixed precision is for; the code path is the same on the CPU (TensorFlow runs
float16 and bfloat16 kernels there, slowly), so these tests train under both mixed policies on
tiny data and check what matters: the layers computed in the low precision while the losses
and embeddings stayed float32, the float16 run scaled its loss, and what the trainer keeps and
exports afterwards is a float32 model with the trained weights.
"""

from __future__ import annotations

import numpy as np
import pytest

from ml.training.precision import dtype_policy, resolve_precision


@pytest.mark.parametrize("setting, gpus, expected", [
    ("auto", 0, "float32"), ("auto", 1, "mixed_float16"), ("auto", 8, "mixed_float16"),
    ("float32", 1, "float32"), ("mixed_bfloat16", 0, "mixed_bfloat16"), ("mixed_float16", 0, "mixed_float16"),
])
def test_resolve_precision(setting: str, gpus: int, expected: str) -> None:
    assert resolve_precision(setting, gpus=gpus) == expected


def test_resolve_precision_rejects_unknown_policy() -> None:
    with pytest.raises(ValueError, match=r"training.mixed_precision='half'.*auto, float32, mixed_float16"):
        resolve_precision("half", gpus=0)


def test_auto_is_float32_on_this_cpu_only_machine() -> None:
    import tensorflow as tf

    if tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU is visible: auto means mixed_float16 here (covered by the parametrised cases)")
    assert resolve_precision("auto") == "float32"


def test_dtype_policy_is_restored_even_after_an_error() -> None:
    import keras

    before = keras.config.dtype_policy().name
    with pytest.raises(RuntimeError):
        with dtype_policy("mixed_float16"):
            assert keras.config.dtype_policy().name == "mixed_float16"
            assert keras.layers.Dense(2).compute_dtype == "float16"
            raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == before
    assert keras.layers.Dense(2).compute_dtype == "float32"


def test_config_rejects_off_and_unknown_values() -> None:
    from ml.config import load_config

    with pytest.raises(ValueError, match="mixed_precision"):
        load_config(None, {"training.mixed_precision": "float8"})
    assert load_config(None, {}).training.mixed_precision == "auto"


@pytest.mark.slow
@pytest.mark.parametrize("policy, compute", [("mixed_float16", "float16"), ("mixed_bfloat16", "bfloat16")])
def test_training_under_a_mixed_policy_exports_a_float32_model(policy, compute, tiny_synth, tiny_config,
                                                                tmp_path) -> None:
    import keras

    from ml.bundle.load import load_bundle
    from ml.training.trainer import create_standard_trainer

    seen: dict[str, object] = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            m = self.model
            seen["hidden"] = m.user_tower.get_layer("user_tower_dense_0").compute_dtype
            seen["projection"] = m.user_tower.get_layer("user_tower_projection").compute_dtype
            seen["optimizer"] = type(m.optimizer).__name__
            seen["variables"] = {v.dtype for v in m.trainable_variables}
            seen["out"] = m.user_tower.output.dtype

    tiny_config["training"].update({"epochs": 2, "mixed_precision": policy})
    trainer = create_standard_trainer(tmp_path / "model", tiny_config, callbacks=[Record()])
    history = trainer.train(dataset=tiny_synth.dataset)

    assert seen["hidden"] == compute                    # the hidden layers ran in low precision
    assert seen["projection"] == "float32"              # the embedding and the losses did not
    assert seen["out"] == "float32"
    assert seen["variables"] == {"float32"}             # variables stay float32 (so weights copy 1:1)
    assert seen["optimizer"] == ("LossScaleOptimizer" if policy == "mixed_float16" else "FusedAdamW")
    assert all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]

    model = trainer.model                               # what is exported: float32 throughout
    assert {layer.compute_dtype for layer in model.user_tower.layers[1:]} == {"float32"}
    assert type(model.optimizer).__name__ == "FusedAdamW"
    bundle = load_bundle(tmp_path / "model")
    x = trainer.prepared.item_vectors[:5]
    from ml.model.inputs import item_tower_inputs

    inputs = item_tower_inputs(x, trainer.id_tables(), np.arange(5))
    out = np.asarray(model.item_tower(inputs, training=False))
    assert out.dtype == np.float32
    np.testing.assert_allclose(bundle.item_embeddings[:5], out, atol=1e-5)
