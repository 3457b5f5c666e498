"""TensorFlow.js export of the towers, written without the `tensorflowjs` converter.

The `tensorflowjs` pip package cannot install beside TensorFlow 2.21 (its
tensorflow-decision-forests pin wants TF 2.13), so this module writes the documented
TF.js *layers model* format itself, for `tf.loadLayersModel(...)` of @tensorflow/tfjs 4.x:

    <out>/<tower>/model.json             {"format": "layers-model", "generatedBy", "convertedBy",
                                          "modelTopology": <Keras 2 style model config>,
                                          "weightsManifest": [{"paths": [...], "weights": [...]}],
                                          "userDefinedMetadata": {...}}
    <out>/<tower>/group1-shard1ofN.bin   the weights, little-endian float32, concatenated in
                                          manifest order, cut in 4 MiB shards

Keras 3 configs differ from the tf.keras 2 JSON that tfjs-layers reads (`batch_shape` vs
`batch_input_shape`, DTypePolicy objects, `module`/`registered_name`, `inbound_nodes` as
`__keras_tensor__` args), so the topology is rebuilt here in the Keras 2 shape from the
saved `.keras` file (read by `ml.inference.towers.read_keras_tower`, no TensorFlow needed).

tfjs-layers 4.22 has no UnitNormalization layer. It is rewritten with built-in layers
that compute the same function: the projection Dense is widened to emit z = [x, -x]
(kernel [W, -W], bias [b, -b]: the negated half is bit-exact), so z has mean 0 and
variance |x|^2 / d; LayerNormalization(epsilon=1e-12, gamma = 1/sqrt(d), no beta) then
gives z / sqrt(|x|^2 + d*1e-12) = z / |x|; Reshape + Cropping2D keep the first half,
x / |x|. When the layer before UnitNormalization is not a linear Dense, a mirror Dense
with kernel [I, -I] (exact) is inserted instead. Outputs match Keras to float32
rounding (checked in tests against Keras and in Node with @tensorflow/tfjs).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ml.inference.towers import LayerSpec, TowerSpec, UnsupportedTower, read_keras_tower
from ml.logs import get_logger

log = get_logger("deployment")

SHARD_BYTES = 4 * 1024 * 1024
KERAS2_VERSION = "2.15.0"
LN_EPSILON = 1e-12
TOWERS = ("user_tower", "item_tower")


def _glorot() -> dict:
    return {"class_name": "GlorotUniform", "config": {"seed": None}}


def _zeros() -> dict:
    return {"class_name": "Zeros", "config": {}}


def _layer(class_name: str, name: str, config: dict, inbound: str | None) -> dict:
    return {
        "class_name": class_name,
        "config": {"name": name, "trainable": False, "dtype": "float32", **config},
        "name": name,
        "inbound_nodes": [] if inbound is None else [[[inbound, 0, 0, {}]]],
    }


def _dense_config(units: int, activation: str, use_bias: bool) -> dict:
    return {"units": int(units), "activation": activation, "use_bias": bool(use_bias),
            "kernel_initializer": _glorot(), "bias_initializer": _zeros(), "kernel_regularizer": None,
            "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}


def tfjs_topology(spec: TowerSpec) -> tuple[dict, list[tuple[str, np.ndarray]]]:
    """Keras-2-style functional model config tfjs-layers loads, and (weight name, value) in order."""
    from ml.inference.towers import _activation_name

    layers: list[dict] = [{
        "class_name": "InputLayer",
        "config": {"batch_input_shape": [None, spec.input_dim], "dtype": "float32", "sparse": False,
                   "ragged": False, "name": spec.input_name},
        "name": spec.input_name,
        "inbound_nodes": [],
    }]
    weights: list[tuple[str, np.ndarray]] = []
    prev, width = spec.input_name, spec.input_dim
    pending: LayerSpec | None = None  # a linear Dense held back in case UnitNormalization follows

    def emit_dense(layer: LayerSpec, mirrored: bool) -> None:
        nonlocal prev, width
        kernel = layer.weights[0].astype(np.float32)
        use_bias = bool(layer.config.get("use_bias", True)) and len(layer.weights) > 1
        bias = layer.weights[1].astype(np.float32) if use_bias else None
        act = _activation_name(layer.config.get("activation")) or "linear"
        if mirrored:
            kernel = np.concatenate([kernel, -kernel], axis=1)
            bias = np.concatenate([bias, -bias]) if bias is not None else None
        layers.append(_layer("Dense", layer.name, _dense_config(kernel.shape[1], act, use_bias), prev))
        weights.append((f"{layer.name}/kernel", kernel))
        if bias is not None:
            weights.append((f"{layer.name}/bias", bias))
        prev, width = layer.name, int(kernel.shape[1])

    for layer in spec.layers:
        if pending is not None and layer.class_name != "UnitNormalization":
            emit_dense(pending, mirrored=False)
            pending = None
        if layer.class_name == "Dense":
            act = _activation_name(layer.config.get("activation"))
            if act in (None, "linear"):
                pending = layer
            else:
                emit_dense(layer, mirrored=False)
        elif layer.class_name == "Dropout":
            layers.append(_layer("Dropout", layer.name, {"rate": float(layer.config.get("rate", 0.0)),
                                                         "noise_shape": None, "seed": None}, prev))
            prev = layer.name
        elif layer.class_name == "UnitNormalization":
            if pending is not None:
                emit_dense(pending, mirrored=True)
                pending = None
                d = width // 2
            else:
                d = width
                mirror = f"{layer.name}_mirror"
                layers.append(_layer("Dense", mirror, _dense_config(2 * d, "linear", False), prev))
                eye = np.eye(d, dtype=np.float32)
                weights.append((f"{mirror}/kernel", np.concatenate([eye, -eye], axis=1)))
                prev, width = mirror, 2 * d
            ln = f"{layer.name}_layernorm"
            layers.append(_layer("LayerNormalization", ln, {
                "axis": -1, "epsilon": LN_EPSILON, "center": False, "scale": True,
                "beta_initializer": _zeros(), "gamma_initializer": {"class_name": "Ones", "config": {}},
                "beta_regularizer": None, "gamma_regularizer": None, "beta_constraint": None,
                "gamma_constraint": None}, prev))
            weights.append((f"{ln}/gamma", np.full(2 * d, 1.0 / math.sqrt(d), dtype=np.float32)))
            layers.append(_layer("Reshape", f"{layer.name}_pairs", {"target_shape": [2, d, 1]}, ln))
            layers.append(_layer("Cropping2D", f"{layer.name}_first", {"cropping": [[0, 1], [0, 0]],
                                                                       "data_format": "channels_last"},
                                 f"{layer.name}_pairs"))
            layers.append(_layer("Reshape", layer.name, {"target_shape": [d]}, f"{layer.name}_first"))
            prev, width = layer.name, d
        else:  # read_keras_tower already refuses anything else
            raise UnsupportedTower(f"layer {layer.name!r} ({layer.class_name}) has no TF.js equivalent here")
    if pending is not None:
        emit_dense(pending, mirrored=False)
    topology = {
        "class_name": "Model",
        "config": {"name": spec.name, "layers": layers, "input_layers": [[spec.input_name, 0, 0]],
                   "output_layers": [[prev, 0, 0]]},
        "keras_version": KERAS2_VERSION,
        "backend": "tensorflow",
    }
    return topology, weights


def write_layers_model(topology: dict, weights: list[tuple[str, np.ndarray]], out_dir: str | Path,
                       metadata: dict | None = None, shard_bytes: int = SHARD_BYTES) -> Path:
    """Write model.json and its weight shards (one group, 4 MiB shards) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("group*-shard*of*.bin"):
        old.unlink()
    blob = b"".join(np.ascontiguousarray(w, dtype="<f4").tobytes() for _, w in weights)
    n_shards = max(1, math.ceil(len(blob) / shard_bytes))
    paths = []
    for i in range(n_shards):
        name = f"group1-shard{i + 1}of{n_shards}.bin"
        (out / name).write_bytes(blob[i * shard_bytes:(i + 1) * shard_bytes])
        paths.append(name)
    manifest = [{"paths": paths, "weights": [{"name": n, "shape": list(w.shape), "dtype": "float32"}
                                             for n, w in weights]}]
    model_json: dict[str, Any] = {
        "format": "layers-model",
        "generatedBy": _generated_by(),
        "convertedBy": "towerops ml.inference.tfjs (TF.js layers format, no tensorflowjs converter)",
        "modelTopology": topology,
        "weightsManifest": manifest,
    }
    if metadata:
        model_json["userDefinedMetadata"] = metadata
    tmp = out / "model.json.tmp"
    tmp.write_text(json.dumps(model_json))
    tmp.replace(out / "model.json")  # model.json last: a reader never sees it before its shards
    return out / "model.json"


def _generated_by() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"keras v{version('keras')}"
    except PackageNotFoundError:  # pragma: no cover
        return "keras"


def export_tower(keras_path: str | Path, out_dir: str | Path, metadata: dict | None = None,
                 shard_bytes: int = SHARD_BYTES) -> Path:
    """Export one saved `.keras` tower as a TF.js layers model; returns the model.json path."""
    spec = read_keras_tower(keras_path)
    topology, weights = tfjs_topology(spec)
    meta = {"tower": spec.name, "input_name": spec.input_name, "input_dim": spec.input_dim,
            "output_dim": spec.output_dim, **(metadata or {})}
    path = write_layers_model(topology, weights, out_dir, metadata=meta, shard_bytes=shard_bytes)
    log.info("exported %s (%d -> %d) as TF.js layers model %s", keras_path, spec.input_dim, spec.output_dim, path)
    return path


def export_tfjs(bundle_dir: str | Path, out_dir: str | Path | None = None,
                shard_bytes: int = SHARD_BYTES, edge: bool = True) -> dict[str, Path]:
    """Export both towers of a model bundle (default: into `<bundle>/tfjs/<tower>/model.json`).

    Returns {"user_tower": path, "item_tower": path}. The metadata carries the bundle's
    feature-schema hash so a client can check it feeds the features the towers expect;
    `edge` also writes `<out>/edge.json`, the browser-readable preprocessing of
    `ml.inference.edge_export` (what edge/towerops-edge.js builds a user's tower input from).
    """
    bundle = Path(bundle_dir)
    meta_path = bundle / "metadata.json"
    if shard_bytes < 4:
        raise ValueError(f"shard_bytes={shard_bytes} must be at least 4 (one float32); TF.js uses 4194304")
    if not meta_path.exists():
        raise FileNotFoundError(f"{bundle} is not a towerops model bundle (no metadata.json); pass the model_dir "
                                "written by training")
    bundle_meta = json.loads(meta_path.read_text())
    out = Path(out_dir) if out_dir else bundle / "tfjs"
    paths = {}
    for tower in TOWERS:
        src = bundle / "keras" / f"{tower}.keras"
        if not src.exists():
            raise FileNotFoundError(f"{src} is missing; the bundle needs keras/{tower}.keras to export TF.js")
        paths[tower] = export_tower(src, out / tower, metadata={
            "feature_schema_hash": bundle_meta.get("feature_schema_hash"),
            "embedding_dim": bundle_meta.get("embedding_dim"),
            "bundle_created_at": bundle_meta.get("created_at"),
        }, shard_bytes=shard_bytes)
    if edge:
        from ml.inference.edge_export import export_edge

        user_dim = read_keras_tower(bundle / "keras" / "user_tower.keras").input_dim
        export_edge(bundle, out, user_dim=user_dim)
    return paths


# ------------------------------------------------------------------ reference reader (tests, checks)
def load_layers_model_weights(model_json: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Read model.json and its shards back exactly as tfjs does (concatenate the group, slice by spec)."""
    path = Path(model_json)
    doc = json.loads(path.read_text())
    weights: dict[str, np.ndarray] = {}
    for group in doc["weightsManifest"]:
        blob = b"".join((path.parent / p).read_bytes() for p in group["paths"])
        offset = 0
        for spec in group["weights"]:
            if spec["dtype"] != "float32":
                raise ValueError(f"{path}: weight {spec['name']} has dtype {spec['dtype']}; only float32 is written")
            size = int(np.prod(spec["shape"])) if spec["shape"] else 1
            weights[spec["name"]] = np.frombuffer(blob, dtype="<f4", count=size, offset=offset).reshape(spec["shape"])
            offset += 4 * size
        if offset != len(blob):
            raise ValueError(f"{path}: shards hold {len(blob)} bytes, the manifest describes {offset}")
    return doc, weights


def run_layers_model(model_json: str | Path, x: np.ndarray) -> np.ndarray:
    """numpy interpreter of the exported topology (the layer kinds written here), float32."""
    doc, weights = load_layers_model_weights(model_json)
    acts = {"linear": lambda v: v, "relu": lambda v: np.maximum(v, 0), "tanh": np.tanh,
            "sigmoid": lambda v: 1 / (1 + np.exp(-v))}
    y = np.asarray(x, dtype=np.float32)
    for layer in doc["modelTopology"]["config"]["layers"]:
        cls, cfg, name = layer["class_name"], layer["config"], layer["name"]
        if cls == "Dense":
            y = y @ weights[f"{name}/kernel"]
            if cfg["use_bias"]:
                y = y + weights[f"{name}/bias"]
            y = acts[cfg["activation"]](y).astype(np.float32)
        elif cls == "LayerNormalization":
            mean = y.mean(axis=-1, keepdims=True)
            var = ((y - mean) ** 2).mean(axis=-1, keepdims=True)
            y = ((y - mean) / np.sqrt(var + cfg["epsilon"]) * weights[f"{name}/gamma"]).astype(np.float32)
        elif cls == "Reshape":
            y = y.reshape((len(y), *cfg["target_shape"]))
        elif cls == "Cropping2D":
            (top, bottom), (left, right) = cfg["cropping"]
            y = y[:, top:y.shape[1] - bottom, left:y.shape[2] - right, :]
        elif cls in ("InputLayer", "Dropout"):
            continue
        else:
            raise ValueError(f"layer {name!r}: {cls} is not interpreted here")
    return y
