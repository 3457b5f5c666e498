"""Embedding health in numpy: dead ReLU units, effective rank, mean pairwise cosine.

A collapsed two-tower model still trains and still ranks something, so its loss does not
show the collapse; these figures do (issue: L2 0.01 left ~75% of the ReLU units dead,
item embeddings of effective rank ~12 of 768 and a mean item-item cosine of 0.87).

- `health_dead_unit_share`: the largest, over the towers' hidden layers, share of ReLU
  units that output 0 for every row of a sample of inputs (a dead unit never passes a
  gradient again). Per layer: `health_dead_unit_share.<layer name>`.
- `health_item_effective_rank`, `health_user_effective_rank`: exp of the entropy of the
  singular values normalised to sum 1 (Roy & Vetterli 2007; RankMe): d for d equal
  directions, 1 when every embedding points the same way. Bounded by the narrowest layer
  + 1 (129 for hidden [512, 256, 128]) whatever the output width.
- `health_item_mean_cosine`, `health_user_mean_cosine`: mean cosine over distinct pairs;
  near 1 when all embeddings crowd into one cone, near 0 when they spread.

Everything takes arrays; `dense_layers` reads (kernel, bias, activation) from a Keras
tower without importing Keras. `ml.bundle.health.bundle_health` applies this to a bundle.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

SAMPLE_ROWS = 2048
DenseLayer = tuple[str, np.ndarray, np.ndarray | None, str]  # name, kernel, bias, activation


def dense_layers(tower: Any) -> list[DenseLayer]:
    """The Dense layers of a tower core as (name, kernel, bias, activation name), in order."""
    out: list[DenseLayer] = []
    for layer in tower.layers:
        if type(layer).__name__ != "Dense":
            continue
        weights = [np.asarray(w, np.float32) for w in layer.get_weights()]
        act = getattr(layer.activation, "__name__", None) or str(layer.get_config().get("activation"))
        out.append((layer.name, weights[0], weights[1] if len(weights) > 1 else None, act))
    return out


def forward(x: np.ndarray, layers: Sequence[DenseLayer]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Inference forward pass of a Dense chain ending in L2 normalisation: (embeddings, ReLU activations per layer)."""
    h = np.asarray(x, np.float32)
    hidden: dict[str, np.ndarray] = {}
    for name, kernel, bias, act in layers:
        if h.shape[1] != kernel.shape[0]:
            raise ValueError(f"layer {name!r} takes {kernel.shape[0]} columns but gets inputs of shape {h.shape}; "
                             "build the inputs with ml.model.inputs for this model")
        h = h @ kernel
        if bias is not None:
            h = h + bias
        if act == "relu":
            h = np.maximum(h, 0.0)
            hidden[name] = h
        elif act not in ("linear", "None", None):
            raise ValueError(f"layer {name!r}: activation {act!r} is not one the towers use (relu, linear)")
    norm = np.linalg.norm(h, axis=1, keepdims=True)
    return h / np.maximum(norm, 1e-12), hidden


def dead_unit_shares(hidden: dict[str, np.ndarray]) -> dict[str, float]:
    """Per layer, the share of units that are 0 for every row."""
    return {name: float((h <= 0).all(axis=0).mean()) if len(h) else float("nan") for name, h in hidden.items()}


def effective_rank(emb: np.ndarray) -> float:
    """exp(entropy of singular values / their sum); nan for fewer than 2 rows."""
    emb = np.asarray(emb, np.float64)
    if emb.ndim != 2 or len(emb) < 2:
        return float("nan")
    if emb.shape[0] > emb.shape[1]:  # the d x d Gram matrix's eigenvalues: the same singular values, ~7x cheaper
        s = np.sqrt(np.clip(np.linalg.eigvalsh(emb.T @ emb), 0.0, None))
    else:
        s = np.linalg.svd(emb, compute_uv=False)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def mean_pairwise_cosine(emb: np.ndarray) -> float:
    """Mean cosine over the n(n-1) ordered pairs of distinct rows; nan for fewer than 2 rows."""
    emb = np.asarray(emb, np.float64)
    n = len(emb)
    if n < 2:
        return float("nan")
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    total = unit.sum(axis=0)
    return float((total @ total - (unit * unit).sum()) / (n * (n - 1)))


def sample_rows(n: int, size: int = SAMPLE_ROWS, seed: int = 0) -> np.ndarray:
    """A fixed, sorted sample of row indices (all rows when there are few)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def embedding_health(item_emb: np.ndarray, user_emb: np.ndarray,
                     hidden: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """The health figures under their metric names (see the module docstring)."""
    out: dict[str, float] = {}
    if hidden:
        shares = dead_unit_shares(hidden)
        out["health_dead_unit_share"] = max(shares.values())
        out.update({f"health_dead_unit_share.{name}": v for name, v in shares.items()})
    out["health_item_effective_rank"] = effective_rank(item_emb)
    out["health_user_effective_rank"] = effective_rank(user_emb)
    out["health_item_mean_cosine"] = mean_pairwise_cosine(item_emb)
    out["health_user_mean_cosine"] = mean_pairwise_cosine(user_emb)
    return out


def tower_health(user_layers: Sequence[DenseLayer], user_x: np.ndarray, item_layers: Sequence[DenseLayer],
                 item_x: np.ndarray) -> dict[str, float]:
    """Health of two towers given as Dense chains and samples of their core inputs."""
    user_emb, user_hidden = forward(user_x, user_layers)
    item_emb, item_hidden = forward(item_x, item_layers)
    return embedding_health(item_emb, user_emb, {**user_hidden, **item_hidden})
