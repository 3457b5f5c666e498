"""TF.js layers-format export: file layout, Keras-2 topology, and the same embeddings as Keras."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ml.inference.tfjs import export_tfjs, export_tower, load_layers_model_weights, run_layers_model

# class names tfjs-layers 4.22 registers that this exporter may write
TFJS_CLASSES = {"InputLayer", "Dense", "Dropout", "LayerNormalization", "Reshape", "Cropping2D"}


def test_export_layout_and_topology(tiny_model_dir, tmp_path) -> None:
    paths = export_tfjs(tiny_model_dir, tmp_path / "tfjs")
    assert set(paths) == {"user_tower", "item_tower"}
    doc = json.loads(paths["user_tower"].read_text())
    assert doc["format"] == "layers-model" and set(doc) >= {"modelTopology", "weightsManifest", "generatedBy",
                                                           "convertedBy"}
    topo = doc["modelTopology"]
    assert topo["class_name"] == "Model" and topo["keras_version"].startswith("2.")
    layers = topo["config"]["layers"]
    assert {layer["class_name"] for layer in layers} <= TFJS_CLASSES
    assert layers[0]["config"]["batch_input_shape"] == [None, doc["userDefinedMetadata"]["input_dim"]]
    text = json.dumps(topo)
    for keras3_only in ('"module"', '"registered_name"', '"batch_shape"', "DTypePolicy", "__keras_tensor__",
                        "UnitNormalization"):
        assert keras3_only not in text
    # every inbound node is the Keras-2 form [[name, 0, 0, {}]] pointing at an earlier layer
    names = [layer["name"] for layer in layers]
    for i, layer in enumerate(layers[1:], start=1):
        (node,) = layer["inbound_nodes"]
        assert node[0][0] in names[:i] and node[0][1:] == [0, 0, {}]
    manifest = doc["weightsManifest"][0]
    size = sum(4 * int(np.prod(w["shape"])) for w in manifest["weights"])
    assert sum((paths["user_tower"].parent / p).stat().st_size for p in manifest["paths"]) == size
    assert doc["userDefinedMetadata"]["output_dim"] == 32


def test_exported_towers_compute_the_keras_embeddings(tiny_model_dir, tmp_path) -> None:
    from ml.bundle.load import load_bundle

    b = load_bundle(tiny_model_dir)
    paths = export_tfjs(tiny_model_dir, tmp_path / "tfjs", shard_bytes=4096)  # many small shards
    manifest = json.loads(paths["item_tower"].read_text())["weightsManifest"][0]
    assert len(manifest["paths"]) > 3 and manifest["paths"][0].endswith(f"of{len(manifest['paths'])}.bin")
    x_items = b.item_inputs()[:50]  # [content ; item-id vectors], see ml.model.inputs
    np.testing.assert_allclose(run_layers_model(paths["item_tower"], x_items), b.item_embeddings[:50], atol=1e-5)
    rng = np.random.default_rng(0)
    x_users = rng.standard_normal((20, b.user_tower.input_shape[-1])).astype(np.float32)
    np.testing.assert_allclose(run_layers_model(paths["user_tower"], x_users),
                               np.asarray(b.user_tower(x_users, training=False)), atol=1e-5)


def test_unit_norm_after_a_nonlinear_layer_uses_an_exact_mirror(tmp_path) -> None:
    import keras

    inp = keras.Input(shape=(6,), name="f")
    h = keras.layers.Dense(5, activation="relu", name="hidden")(inp)
    out = keras.layers.UnitNormalization(name="norm")(h)
    model = keras.Model(inp, out, name="relu_tower")
    model.save(tmp_path / "t.keras")
    path = export_tower(tmp_path / "t.keras", tmp_path / "out")
    _, weights = load_layers_model_weights(path)
    assert "norm_mirror/kernel" in weights and weights["norm_mirror/kernel"].shape == (5, 10)
    x = np.random.default_rng(1).standard_normal((30, 6)).astype(np.float32)
    np.testing.assert_allclose(run_layers_model(path, x), np.asarray(model(x)), atol=1e-6)


def test_export_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="is not a towerops model bundle"):
        export_tfjs(tmp_path)
    with pytest.raises(ValueError, match="shard_bytes=0 must be at least 4"):
        export_tfjs(tmp_path, shard_bytes=0)
