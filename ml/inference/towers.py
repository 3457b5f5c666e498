"""The user tower as a numpy forward pass read straight from the saved .keras file, so serving never imports TensorFlow."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np


# ---------------------------------------------------------------------------- towers in numpy
class UnsupportedTower(ValueError):
    """The saved tower holds a layer the numpy forward pass (or the TF.js export) cannot express."""


@dataclass
class LayerSpec:
    """One layer of a sequential tower: class name, Keras config, weights in Keras order."""

    class_name: str
    name: str
    config: dict
    weights: list[np.ndarray] = field(default_factory=list)


@dataclass
class TowerSpec:
    """A saved Keras tower read as a chain of layers (no TensorFlow needed)."""

    name: str
    input_name: str
    input_dim: int
    layers: list[LayerSpec]

    @property
    def output_dim(self) -> int:
        for layer in reversed(self.layers):
            if layer.class_name == "Dense":
                return int(layer.config["units"])
        return self.input_dim


def _sigmoid_(y: np.ndarray) -> np.ndarray:
    np.negative(y, out=y)
    np.exp(y, out=y)
    y += np.float32(1.0)
    return np.reciprocal(y, out=y)


# in place on the float32 output of the layer's matmul (no copy of the activations)
_ACTIVATIONS: dict[str | None, Callable[[np.ndarray], np.ndarray]] = {
    None: lambda y: y,
    "linear": lambda y: y,
    "relu": lambda y: np.maximum(y, np.float32(0.0), out=y),
    "tanh": lambda y: np.tanh(y, out=y),
    "sigmoid": _sigmoid_,
}
SUPPORTED_LAYERS = ("InputLayer", "Dense", "Dropout", "UnitNormalization")


def _activation_name(value: Any) -> str | None:
    if isinstance(value, dict):  # Keras 3 may serialise activations as objects
        return value.get("config", {}).get("name") or value.get("class_name")
    return value


def read_keras_tower(path: str | Path) -> TowerSpec:
    """Read a `.keras` tower file (zip of config.json + model.weights.h5) as a chain of layers.

    Raises UnsupportedTower for anything other than a single-input, single-output chain of
    InputLayer / Dense / Dropout / UnitNormalization (what `ml.model.towers.build_tower` makes).
    """
    import h5py

    path = Path(path)
    with zipfile.ZipFile(path) as zf:
        config = json.loads(zf.read("config.json"))
        weights_bytes = zf.read("model.weights.h5")
    if config.get("class_name") not in ("Functional", "Model", "Sequential"):
        raise UnsupportedTower(f"{path}: top-level class {config.get('class_name')!r} is not a functional tower")
    cfg = config["config"]
    layers_cfg = cfg["layers"]
    by_name: dict[str, list[np.ndarray]] = {}
    import io

    with h5py.File(io.BytesIO(weights_bytes), "r") as h5:
        group = h5.get("layers")
        for key in (group.keys() if group is not None else []):
            vars_group = group[key].get("vars")
            if vars_group is None:
                continue
            lname = vars_group.attrs.get("name")
            if isinstance(lname, bytes):
                lname = lname.decode()
            if lname is None:
                raise UnsupportedTower(f"{path}: weights group layers/{key} carries no layer name attribute")
            by_name[str(lname)] = [np.asarray(vars_group[str(i)], dtype=np.float32)
                                   for i in range(len(vars_group.keys()))]
    chain: list[LayerSpec] = []
    input_name, input_dim, previous = "", 0, None
    for layer in layers_cfg:
        cls, name, lcfg = layer["class_name"], layer.get("name") or layer["config"]["name"], layer["config"]
        if cls not in SUPPORTED_LAYERS:
            raise UnsupportedTower(f"{path}: layer {name!r} is a {cls}; supported: {', '.join(SUPPORTED_LAYERS)}")
        nodes = layer.get("inbound_nodes") or []
        inbound = [a["config"]["keras_history"][0] for n in nodes for a in n.get("args", [])
                   if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__"]
        if cls == "InputLayer":
            if previous is not None:
                raise UnsupportedTower(f"{path}: more than one input layer")
            shape = lcfg.get("batch_shape") or lcfg.get("batch_input_shape")
            input_name, input_dim = name, int(shape[-1])
        elif inbound != [previous]:
            raise UnsupportedTower(f"{path}: layer {name!r} is fed by {inbound}, not by the previous layer "
                                   f"{previous!r}; only sequential towers are supported")
        if cls == "Dense":
            act = _activation_name(lcfg.get("activation"))
            if act not in _ACTIVATIONS:
                raise UnsupportedTower(f"{path}: layer {name!r} uses activation {act!r}")
            if name not in by_name:
                raise UnsupportedTower(f"{path}: no weights stored for layer {name!r}")
        if cls == "UnitNormalization":
            axis = lcfg.get("axis", -1)
            if axis not in (-1, [-1], 1, [1]):
                raise UnsupportedTower(f"{path}: layer {name!r} normalises axis {axis}, expected the last axis")
        chain.append(LayerSpec(cls, name, lcfg, by_name.get(name, [])))
        previous = name
    outputs = cfg.get("output_layers") or []
    if outputs and isinstance(outputs[0], str):  # one output: Keras 3 stores a single [name, 0, 0]
        outputs = [outputs]
    if len(outputs) != 1 or outputs[0][0] != previous:
        raise UnsupportedTower(f"{path}: output {outputs} is not the last layer {previous!r}")
    return TowerSpec(name=cfg.get("name", path.stem), input_name=input_name, input_dim=input_dim,
                     layers=[layer for layer in chain if layer.class_name != "InputLayer"])


class NumpyTower:
    """Inference-time forward pass of a `TowerSpec` (Dropout is the identity at inference)."""

    def __init__(self, spec: TowerSpec) -> None:
        self.spec = spec
        self._ops: list[Callable[[np.ndarray], np.ndarray]] = []
        for layer in spec.layers:
            if layer.class_name == "Dense":
                kernel = np.ascontiguousarray(layer.weights[0], dtype=np.float32)
                bias = layer.weights[1] if layer.config.get("use_bias", True) and len(layer.weights) > 1 else None
                act = _ACTIVATIONS[_activation_name(layer.config.get("activation"))]
                self._ops.append(_dense_op(kernel, bias, act))
            elif layer.class_name == "UnitNormalization":
                self._ops.append(_unit_norm)

    @classmethod
    def from_keras_file(cls, path: str | Path) -> "NumpyTower":
        return cls(read_keras_tower(path))

    # rows per block: a block's activations stay in cache (2,048 measured fastest on 2 cores for the
    # seed's towers, bench/catalog.py)
    BLOCK = 2048

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.spec.input_dim:
            raise ValueError(f"{self.spec.name} expects (n, {self.spec.input_dim}) inputs, got {x.shape}")
        if len(x) <= self.BLOCK:
            return self._forward(x)
        out = np.empty((len(x), self.spec.output_dim), np.float32)
        for lo in range(0, len(x), self.BLOCK):
            out[lo:lo + self.BLOCK] = self._forward(x[lo:lo + self.BLOCK])
        return out

    def _forward(self, x: np.ndarray) -> np.ndarray:
        given = x
        for op in self._ops:
            x = op(x.copy() if x is given and op is _unit_norm else x)  # never normalise the caller's array
        return x


def _dense_op(kernel: np.ndarray, bias: np.ndarray | None, act: Callable) -> Callable[[np.ndarray], np.ndarray]:
    bias = None if bias is None else np.asarray(bias, np.float32)

    def op(x: np.ndarray) -> np.ndarray:
        y = x @ kernel
        if bias is not None:
            y += bias
        return act(y)

    return op


def _unit_norm(x: np.ndarray) -> np.ndarray:
    """Keras UnitNormalization: x * min(rsqrt(sum(x^2)), 1/1e-12), in place on the layer's input
    (a fresh activation array from the Dense layer before it)."""
    inv = np.einsum("ij,ij->i", x, x)[:, None]
    np.sqrt(inv, out=inv)
    with np.errstate(divide="ignore"):
        np.divide(np.float32(1.0), inv, out=inv)
    x *= np.minimum(inv, np.float32(1e12))
    return x
