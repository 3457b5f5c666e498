"""Mixed precision for training: which Keras dtype policy, and building a model under it.

On a GPU with tensor cores float16 matmuls run several times faster than float32; Keras'
mixed policies keep the variables in float32 and compute in float16 (with dynamic loss
scaling, which `Model.compile` adds for mixed_float16) or bfloat16. On the CPU float16 is
slower, so `auto` means float32 there. Only training uses the policy: the trainer copies the
weights into a float32 model before export, so bundles, SavedModels, TF.js and the numpy
towers never see float16.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")


def gpu_count() -> int:
    """GPUs TensorFlow can use in this process (0 without CUDA or with CUDA_VISIBLE_DEVICES='')."""
    import tensorflow as tf

    return len(tf.config.list_logical_devices("GPU"))


def resolve_precision(setting: str, gpus: int | None = None) -> str:
    """The dtype policy for `training.mixed_precision`: auto -> mixed_float16 with a GPU, else float32."""
    if setting == "auto":
        return "mixed_float16" if (gpu_count() if gpus is None else gpus) > 0 else "float32"
    if setting not in POLICIES:
        raise ValueError(f"training.mixed_precision={setting!r}: use auto, float32, mixed_float16 or mixed_bfloat16")
    return setting


@contextmanager
def dtype_policy(name: str) -> Iterator[None]:
    """Layers created inside get the Keras dtype policy `name`; the global policy is restored after."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)
