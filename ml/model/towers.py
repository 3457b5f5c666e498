"""One tower: an MLP over a feature vector ending in an L2-normalised embedding."""

from __future__ import annotations

import keras


def build_tower(
    input_dim: int,
    hidden_units: list[int],
    output_dim: int,
    dropout_rate: float,
    l2_regularization: float,
    name: str,
) -> keras.Model:
    """MLP `input_dim -> hidden_units... -> output_dim`, L2-normalised output."""
    if input_dim < 1:
        raise ValueError(f"{name}: input_dim={input_dim}; the feature pipeline produced no columns")
    inputs = keras.Input(shape=(input_dim,), name=f"{name}_features", dtype="float32")
    x = inputs
    reg = keras.regularizers.L2(l2_regularization) if l2_regularization > 0 else None
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation="relu", kernel_regularizer=reg, name=f"{name}_dense_{i}")(x)
        if dropout_rate > 0:
            x = keras.layers.Dropout(dropout_rate, name=f"{name}_dropout_{i}")(x)
    x = keras.layers.Dense(output_dim, kernel_regularizer=reg, name=f"{name}_projection")(x)
    outputs = keras.layers.UnitNormalization(axis=-1, name=f"{name}_l2norm")(x)
    return keras.Model(inputs, outputs, name=name)
