"""In-process recommendations from a model bundle, and the MLflow pyfunc around them.

Known users use their exported embedding; a cold user (or a known user with swipes
newer than the model) is embedded by the user tower from the history sent in the
request. Items are scored with one matrix product against the embeddings computed
once at export (float32, C-contiguous, so numpy hands it to BLAS sgemv), or, for
catalogs too large to scan per request, through an approximate faiss index that
`ml.ann` builds into the bundle (exact inner products on the candidates it returns).

The user tower runs as a numpy forward pass read straight from the saved `.keras`
file (Dense / Dropout / UnitNormalization only, which is all `ml.model` builds), so a
serving process never imports TensorFlow: it starts faster and stays smaller. Any
other layer falls back to Keras.

`TwoTowerRecommender.predict` (the pyfunc `mlflow models serve` runs) goes through
the same `RealtimeInferenceEngine` code path as `get_recommendations`, raises request
errors as MLflow INVALID_PARAMETER_VALUE (HTTP 400 with the message), logs to
`logs/inference.log` and samples every request row to the prediction log
(`ml.prediction_log`).
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ml.logs import get_logger

log = get_logger("inference")

ENV_SCORING = "TOWEROPS_SCORING"
ENV_MODEL_VERSION = "TOWEROPS_MODEL_VERSION"
SCORING_MODES = ("auto", "exact", "ann")


class InferenceRequestError(ValueError):
    """A request that cannot be answered as sent (maps to HTTP 400)."""


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


_ACTIVATIONS: dict[str | None, Callable[[np.ndarray], np.ndarray]] = {
    None: lambda x: x,
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, np.float32(0.0)),
    "tanh": np.tanh,
    "sigmoid": lambda x: (1.0 / (1.0 + np.exp(-x))).astype(np.float32),
}
SUPPORTED_LAYERS = ("InputLayer", "Dense", "Dropout", "UnitNormalization")


def _activation_name(value: Any) -> str | None:
    if isinstance(value, dict):  # Keras 3 may serialise activations as objects
        return value.get("config", {}).get("name") or value.get("class_name")
    return value


def read_keras_tower(path: str | Path) -> TowerSpec:
    """Read a `.keras` tower file (zip of config.json + model.weights.h5) as a chain of layers.

    Raises UnsupportedTower for anything other than a single-input, single-output chain of
    InputLayer / Dense / Dropout / UnitNormalization (what `ml.model.build_tower` makes).
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

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.spec.input_dim:
            raise ValueError(f"{self.spec.name} expects (n, {self.spec.input_dim}) inputs, got {x.shape}")
        for op in self._ops:
            x = op(x)
        return x


def _dense_op(kernel: np.ndarray, bias: np.ndarray | None, act: Callable) -> Callable[[np.ndarray], np.ndarray]:
    def op(x: np.ndarray) -> np.ndarray:
        y = x @ kernel
        if bias is not None:
            y += bias
        return act(y)

    return op


def _unit_norm(x: np.ndarray) -> np.ndarray:
    """Keras UnitNormalization: x * min(rsqrt(sum(x^2)), 1/1e-12)."""
    inv = 1.0 / np.sqrt(np.sum(np.square(x), axis=-1, keepdims=True, dtype=np.float32))
    return (x * np.minimum(inv, np.float32(1e12))).astype(np.float32)


# ---------------------------------------------------------------------------- helpers
def _as_list(value: Any, field: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InferenceRequestError(f"{field}={value!r} is not a JSON list of item ids: {exc}") from exc
        else:
            value = [v for v in text.split("|") if v]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise InferenceRequestError(f"{field} must be a list of item ids, got {type(value).__name__}: {value!r}")
    return [str(v) for v in value]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def parse_top_k(value: Any) -> int:
    """A positive int from a request field; anything else is an InferenceRequestError."""
    if isinstance(value, bool):
        raise InferenceRequestError(f"top_k={value!r} must be a positive integer, e.g. 10")
    try:
        k = int(value)
    except (TypeError, ValueError) as exc:
        raise InferenceRequestError(f"top_k={value!r} must be a positive integer, e.g. 10") from exc
    if isinstance(value, float) and value != k:
        raise InferenceRequestError(f"top_k={value!r} must be a positive integer, e.g. 10")
    if k <= 0:
        raise InferenceRequestError(f"top_k={k} must be a positive integer, e.g. 10")
    return k


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties go to the lower index (deterministic).

    Works on a vector or row-wise on a matrix; -inf entries sort last.
    """
    n = scores.shape[-1]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(scores.shape[:-1] + (0,), dtype=np.int64)
    if k < n:
        part = np.argpartition(scores, n - k, axis=-1)[..., n - k:]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=-1)
    order = np.lexsort((part, -vals), axis=-1)
    return np.take_along_axis(part, order, axis=-1)


@dataclass
class Recommendation:
    """One answered request: ranked item rows and scores, plus how the user was embedded."""

    item_rows: np.ndarray
    scores: np.ndarray
    cold: bool


# ---------------------------------------------------------------------------- rank reduction
ENV_LOWRANK = "TOWEROPS_LOWRANK"
LOWRANK_TOL = 2e-5


@dataclass
class RankReduction:
    """The catalog in the basis of its own row space: same dot products, fewer numbers to read.

    A tower ends in a linear Dense projection from its last hidden layer (width h) to d,
    then L2-normalises each row, so every item embedding is a multiple of a vector in an
    (h+1)-dimensional subspace: the catalog's rank is at most h+1 (129 for the seed's
    [512, 256, 128] -> 768 tower). With an orthonormal basis V (d x r) of that row space,
    E @ u == (E @ V) @ (V.T @ u) for every u, so scoring reads n*r floats instead of n*d.
    Not an approximation: `max_residual` (the largest |e - V V.T e| over all rows, checked
    on every row) bounds each score's difference from the full product for a unit-norm user.
    """

    basis: np.ndarray
    items: np.ndarray
    max_residual: float

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    def project(self, users: np.ndarray) -> np.ndarray:
        """User embedding(s) in the reduced basis."""
        return np.asarray(users, dtype=np.float32) @ self.basis

    @classmethod
    def from_basis(cls, embeddings: np.ndarray, basis: np.ndarray, chunk: int = 65536) -> "RankReduction":
        """Reduce with a given orthonormal basis, measuring the residual on every row."""
        basis = np.ascontiguousarray(basis, dtype=np.float32)
        n = len(embeddings)
        items = np.empty((n, basis.shape[1]), dtype=np.float32)
        worst = 0.0
        for lo in range(0, n, chunk):
            block = np.asarray(embeddings[lo:lo + chunk], dtype=np.float32)
            reduced = block @ basis
            items[lo:lo + chunk] = reduced
            resid = block - reduced @ basis.T
            worst = max(worst, float(np.sqrt(np.max(np.einsum("ij,ij->i", resid, resid), initial=0.0))))
        return cls(basis=basis, items=items, max_residual=worst)


def reduce_rank(embeddings: np.ndarray, tol: float = LOWRANK_TOL, max_fraction: float = 0.5,
                sample: int = 20000, seed: int = 0) -> RankReduction | None:
    """Exact rank reduction of a catalog when its numerical rank is at most `max_fraction` of d.

    The basis comes from the eigenvectors of a float64 Gram matrix of a row sample; it is kept
    only if every row of the catalog lies within `tol` of it. None when nothing is gained.
    """
    n, d = embeddings.shape
    if n == 0 or d < 8:
        return None
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, sample, replace=False)) if n > sample else slice(None)
    x = np.asarray(embeddings[rows], dtype=np.float64)
    evals, evecs = np.linalg.eigh(x.T @ x)
    order = np.argsort(evals)[::-1]
    evals, evecs = evals[order], evecs[:, order]
    r = int(np.sum(evals > max(evals[0], 1e-30) * 1e-10))
    limit = int(d * max_fraction)
    while 0 < r <= limit:
        reduction = RankReduction.from_basis(embeddings, evecs[:, :r])
        if reduction.max_residual <= tol:
            return reduction
        r += max(1, d // 32)  # the sample missed part of the row space (or noise): widen and re-check
    return None


def _lowrank_wanted(lowrank: bool | None) -> bool:
    if lowrank is not None:
        return bool(lowrank)
    raw = os.environ.get(ENV_LOWRANK, "auto").strip().lower()
    if raw in ("auto", "1", "true", "on", "yes", ""):
        return True
    if raw in ("0", "false", "off", "no"):
        return False
    raise ValueError(f"{ENV_LOWRANK}={raw!r} must be auto, on or off")


# ---------------------------------------------------------------------------- engine
class RealtimeInferenceEngine:
    """Top-k recommendations for one user at a time, in process.

    scoring: "exact" (one float32 matrix-vector product over the catalog), "ann" (the
    bundle's faiss index, see `ml.ann`; built in memory when the bundle has none) or
    "auto" (ann when the bundle holds an index, else exact). Default: $TOWEROPS_SCORING
    or "auto". lowrank: score in the catalog's own row space when its rank is at most half
    the embedding width (`RankReduction`; same scores to 2e-5). Default: $TOWEROPS_LOWRANK
    or on.
    """

    def __init__(self, model_dir: str | Path, mmap: bool = False, scoring: str | None = None,
                 nprobe: int | None = None, lowrank: bool | None = None) -> None:
        from ml.export import load_bundle

        self.bundle = load_bundle(model_dir, mmap=mmap)
        self.model_dir = Path(model_dir)
        self._profile_default: np.ndarray | None = None
        self._tower: Callable[[np.ndarray], np.ndarray] | None = None
        emb = self.bundle.item_embeddings
        if not (emb.dtype == np.float32 and emb.flags["C_CONTIGUOUS"]):
            emb = np.ascontiguousarray(emb, dtype=np.float32)
        self.item_matrix = emb
        self.scoring = self._resolve_scoring(scoring)
        self.ann = None
        self.reduction: RankReduction | None = None
        want_lowrank = _lowrank_wanted(lowrank)
        if self.scoring == "ann":
            from ml.ann import load_or_build_index

            self.ann, self.reduction = load_or_build_index(self.model_dir, self.item_matrix, nprobe=nprobe,
                                                           lowrank=want_lowrank)
        elif want_lowrank:
            self.reduction = reduce_rank(self.item_matrix)
        rank = (f"rank {self.reduction.rank} of {emb.shape[1]} (residual {self.reduction.max_residual:.1e})"
                if self.reduction is not None else "full rank")
        log.info("loaded model bundle %s: %d items, %d known users, %d-d embeddings, %s scoring, %s", model_dir,
                 len(self.bundle.item_ids), len(self.bundle.user_ids), self.bundle.embedding_dim, self.scoring, rank)

    def _resolve_scoring(self, scoring: str | None) -> str:
        mode = (scoring or os.environ.get(ENV_SCORING) or "auto").strip().lower()
        if mode not in SCORING_MODES:
            source = "scoring" if scoring else ENV_SCORING
            raise ValueError(f"{source}={mode!r} is not one of {', '.join(SCORING_MODES)}")
        if mode == "auto":
            from ml.ann import has_index

            mode = "ann" if has_index(self.model_dir) else "exact"
        return mode

    # -------------------------------------------------------------- helpers
    def _item_rows(self, ids: Iterable[str], field: str) -> np.ndarray:
        index = self.bundle.item_index
        ids = list(ids)
        unknown = [i for i in ids if i not in index]
        if unknown:
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise InferenceRequestError(
                f"{field}: {len(unknown)} unknown item id(s): {shown}"
                f"{' ...' if len(unknown) > 5 else ''}; send ids from the model's catalog "
                f"({len(index)} items) or retrain with the new items"
            )
        return np.fromiter((index[i] for i in ids), dtype=np.int64, count=len(ids))

    def _default_profile(self) -> np.ndarray:
        if self._profile_default is None:
            self._profile_default = self.bundle.pipeline.profile_matrix(pd.DataFrame(index=[0]))[0]
        return self._profile_default

    @property
    def user_tower(self) -> Callable[[np.ndarray], np.ndarray]:
        """numpy forward pass of the user tower; Keras only for towers numpy cannot express."""
        if self._tower is None:
            path = self.bundle.path / "keras" / "user_tower.keras"
            try:
                self._tower = NumpyTower.from_keras_file(path)
            except (UnsupportedTower, KeyError, OSError) as exc:
                log.warning("user tower runs through Keras (%s)", exc)
                tower = self.bundle.user_tower
                self._tower = lambda x: np.asarray(tower(x, training=False), dtype=np.float32)
        return self._tower

    def warmup(self) -> None:
        """Load the user tower and touch the catalog so the first request is not the slow one."""
        self.embed_history(np.zeros(1, np.int64), np.zeros(0, np.int64))
        float(self.scoring_matrix[:, :1].sum())

    def embed_history(self, liked_rows: np.ndarray, noped_rows: np.ndarray, profile: np.ndarray | None = None) -> np.ndarray:
        """User embedding from a swipe history (rows into the catalog) through the user tower."""
        b = self.bundle
        feats = b.item_features
        like_sum = feats[liked_rows].sum(axis=0, keepdims=True) if len(liked_rows) else np.zeros((1, feats.shape[1]), np.float32)
        nope_sum = feats[noped_rows].sum(axis=0, keepdims=True) if len(noped_rows) else np.zeros((1, feats.shape[1]), np.float32)
        agg = b.pipeline.history_aggregates(like_sum, nope_sum, np.array([len(liked_rows)]), np.array([len(noped_rows)]))
        prof = self._default_profile() if profile is None else profile
        x = np.concatenate([agg, prof[None, :]], axis=1).astype(np.float32)
        return self.user_tower(x)[0]

    def user_embedding(self, user_id: str | None, liked_items: Sequence[str] | None = None,
                       noped_items: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(embedding, rows the user has already swiped)."""
        emb, seen, _ = self._user_embedding(user_id, liked_items, noped_items)
        return emb, seen

    def _user_embedding(self, user_id: str | None, liked_items: Sequence[str] | None,
                        noped_items: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray, bool]:
        b = self.bundle
        liked = self._item_rows(liked_items or [], "liked_items")
        noped = self._item_rows(noped_items or [], "noped_items")
        row = b.user_index.get(str(user_id)) if user_id is not None else None
        if row is not None and not len(liked) and not len(noped):
            seen, _ = b.history(row)
            return np.asarray(b.user_embeddings[row], dtype=np.float32), seen, False
        if row is None and not len(liked) and not len(noped):
            raise InferenceRequestError(
                f"unknown user_id {user_id!r} with no history: send the user's recent swipes as "
                "liked_items / noped_items (item ids) to get cold-start recommendations"
            )
        profile = None
        if row is not None:
            seen, labels = b.history(row)
            liked = np.r_[seen[labels == 1], liked]
            noped = np.r_[seen[labels == 0], noped]
            profile = b.profiles[row]
        emb = self.embed_history(liked.astype(np.int64), noped.astype(np.int64), profile)
        return emb, np.r_[liked, noped].astype(np.int64), True

    @property
    def scoring_matrix(self) -> np.ndarray:
        """What a catalog scan reads: the rank-reduced catalog when there is one, else the embeddings."""
        return self.item_matrix if self.reduction is None else self.reduction.items

    def query(self, users: np.ndarray) -> np.ndarray:
        """User embedding(s) in the scoring matrix's basis."""
        return users if self.reduction is None else self.reduction.project(users)

    def score(self, emb: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Exact scores (dot products) of a user embedding against the catalog or some rows."""
        if rows is None:
            return self.scoring_matrix @ self.query(emb)
        return self.item_matrix[rows] @ emb

    def recommend(
        self,
        user_id: str | None = None,
        candidate_items: Sequence[str] | None = None,
        top_k: int = 10,
        exclude_seen: bool = True,
        liked_items: Sequence[str] | None = None,
        noped_items: Sequence[str] | None = None,
    ) -> Recommendation:
        """Ranked catalog rows and scores for one request (the code path every API shares)."""
        top_k = parse_top_k(top_k)
        emb, seen, cold = self._user_embedding(user_id, liked_items, noped_items)
        if candidate_items is not None:
            rows = self._item_rows(candidate_items, "candidate_items")
            if len(rows) == 0:
                raise InferenceRequestError("candidate_items is an empty list: send at least one item id, "
                                            "or leave candidate_items out to rank the whole catalog")
            scores = self.score(emb, rows)
            if exclude_seen and len(seen):
                scores[np.isin(rows, seen)] = -np.inf
            top = top_k_indices(scores, top_k)
            top = top[np.isfinite(scores[top])]
            return Recommendation(rows[top], scores[top], cold)
        if self.ann is not None:
            found = self._ann_search(emb, top_k, seen if exclude_seen else None)
            if found is not None:
                return Recommendation(found[0], found[1], cold)
        scores = self.score(emb)
        if exclude_seen and len(seen):
            scores[seen] = -np.inf
        top = top_k_indices(scores, top_k)
        top = top[np.isfinite(scores[top])]
        return Recommendation(top, scores[top], cold)

    def _ann_search(self, emb: np.ndarray, top_k: int, seen: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
        n_seen = 0 if seen is None else len(seen)
        want = min(top_k + n_seen, len(self.item_matrix))
        rows, scores = self.ann.search(self.query(emb)[None, :], want)
        rows, scores = rows[0], scores[0]
        keep = rows >= 0
        if n_seen:
            keep &= ~np.isin(rows, seen)
        rows, scores = rows[keep], scores[keep]
        expected = min(top_k, len(self.item_matrix) - (len(np.unique(seen)) if n_seen else 0))
        if len(rows) < expected:  # too few candidates in the probed lists: answer exactly
            return None
        return rows[:top_k].astype(np.int64), scores[:top_k].astype(np.float32)

    # ----------------------------------------------------------------- API
    def get_recommendations(
        self,
        user_id: str | None = None,
        candidate_items: Sequence[str] | None = None,
        top_k: int = 10,
        exclude_seen: bool = True,
        liked_items: Sequence[str] | None = None,
        noped_items: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Items ranked by score for a user: `[{"item_id", "score", "rank"}, ...]`."""
        rec = self.recommend(user_id, candidate_items, top_k, exclude_seen, liked_items, noped_items)
        ids = self.bundle.item_ids
        return [{"item_id": ids[r], "score": float(s), "rank": n + 1}
                for n, (r, s) in enumerate(zip(rec.item_rows.tolist(), rec.scores.tolist()))]


def create_standard_inference_engine(model_dir: str | Path | None = None, model_uri: str | None = None,
                                     scoring: str | None = None) -> RealtimeInferenceEngine:
    """An engine for a bundle folder, or for a logged model (`runs:/<id>/recommender`, `models:/two_tower@production`)."""
    if model_dir is None and model_uri is None:
        model_dir = "models/two_tower"
    if model_uri is not None:
        model_dir = bundle_dir_from_uri(model_uri)
    return RealtimeInferenceEngine(model_dir, scoring=scoring)  # type: ignore[arg-type]


def bundle_dir_from_uri(model_uri: str) -> Path:
    """Download a logged recommender and return its bundle folder (the `model_dir` artifact,
    wherever the pyfunc's MLmodel says it was stored)."""
    from ml.evaluation_run import resolve_model

    return resolve_model(model_uri)


# ---------------------------------------------------------------------------- pyfunc
def _pyfunc_base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


def _request_error_class():
    """InferenceRequestError that MLflow's scoring server maps to HTTP 400 with its message."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class ServingRequestError(MlflowException, InferenceRequestError):
        def __init__(self, message: str) -> None:
            MlflowException.__init__(self, message, error_code=INVALID_PARAMETER_VALUE)

    return ServingRequestError


def _model_version(model_dir: Path) -> str:
    """$TOWEROPS_MODEL_VERSION (set by `towerops serve`), else the logged model's run id."""
    explicit = os.environ.get(ENV_MODEL_VERSION)
    if explicit:
        return explicit
    for parent in list(model_dir.resolve().parents)[:3]:
        mlmodel = parent / "MLmodel"
        if mlmodel.exists():
            import yaml

            meta = yaml.safe_load(mlmodel.read_text()) or {}
            for key in ("run_id", "model_id"):
                if meta.get(key):
                    return str(meta[key])
    return "unknown"


REQUEST_COLUMNS = ("user_id", "top_k", "exclude_seen", "candidate_items", "liked_items", "noped_items")
OUTPUT_MODES = ("rows", "lists")


class TwoTowerRecommender(_pyfunc_base()):
    """MLflow pyfunc: a DataFrame of requests in, recommendations out.

    Request columns: user_id; optional top_k, exclude_seen, candidate_items,
    liked_items, noped_items (lists of item ids). Params: `top_k` (default k) and
    `output`: "rows" (default; one row per item: user_id, item_id, score, rank) or
    "lists" (one row per request: user_id, items, scores; what `spark_udf` needs).
    A bad request row fails the whole call with an InferenceRequestError (HTTP 400).
    """

    def load_context(self, context) -> None:
        from ml.prediction_log import PredictionLogger

        model_dir = Path(context.artifacts["model_dir"])
        self.engine = RealtimeInferenceEngine(model_dir)
        self.engine.warmup()
        self.prediction_log = PredictionLogger(model_version=_model_version(model_dir))
        log.info("pyfunc ready: model_version=%s, prediction log %s (sample %.3g)", self.prediction_log.model_version,
                 self.prediction_log.path, self.prediction_log.sample_rate)

    def _ensure_loaded(self) -> None:
        if not hasattr(self, "prediction_log"):
            from ml.prediction_log import PredictionLogger

            self.prediction_log = PredictionLogger(model_version=_model_version(self.engine.model_dir))

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        try:
            return self._predict(model_input, params)
        except InferenceRequestError as exc:
            raise _request_error_class()(str(exc)) from exc

    def _predict(self, model_input: Any, params: dict | None) -> pd.DataFrame:
        self._ensure_loaded()
        t_call = time.perf_counter()
        params = params or {}
        default_k = parse_top_k(params.get("top_k", 10))
        output = str(params.get("output") or "rows")
        if output not in OUTPUT_MODES:
            raise InferenceRequestError(f"params.output={output!r} must be one of {', '.join(OUTPUT_MODES)}")
        if isinstance(model_input, dict):
            model_input = pd.DataFrame([model_input])
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if "user_id" not in model_input.columns and "liked_items" not in model_input.columns:
            raise InferenceRequestError(
                f"request needs a user_id column (or liked_items for a cold user); got columns {list(model_input.columns)}"
            )
        columns = [c for c in REQUEST_COLUMNS if c in model_input.columns]
        records = model_input[columns].to_dict(orient="records")
        answers: list[tuple[str | None, Recommendation]] = []
        ids = self.engine.bundle.item_ids
        for rec in records:
            t0 = time.perf_counter()
            user_id = rec.get("user_id")
            user_id = None if _missing(user_id) else str(user_id)
            top_k = rec.get("top_k")
            try:
                top_k = default_k if _missing(top_k) else parse_top_k(top_k)
                exclude = rec.get("exclude_seen")
                exclude = True if _missing(exclude) else bool(exclude)
                answer = self.engine.recommend(
                    user_id=user_id,
                    candidate_items=_as_list(rec.get("candidate_items"), "candidate_items"),
                    top_k=top_k,
                    exclude_seen=exclude,
                    liked_items=_as_list(rec.get("liked_items"), "liked_items"),
                    noped_items=_as_list(rec.get("noped_items"), "noped_items"),
                )
            except InferenceRequestError as exc:
                self.prediction_log.log(user_id=user_id, cold=not _missing(rec.get("liked_items")),
                                        top_k=top_k if isinstance(top_k, int) else None, items=[], scores=[],
                                        latency_ms=(time.perf_counter() - t0) * 1e3, status="error", error=str(exc))
                log.warning("bad request for user_id=%r: %s", user_id, exc)
                raise
            latency = (time.perf_counter() - t0) * 1e3
            answers.append((user_id, answer))
            if self.prediction_log.sampled():
                try:
                    self.prediction_log.write(self.prediction_log.record(
                        user_id=user_id, cold=answer.cold, top_k=top_k, items=[ids[r] for r in answer.item_rows.tolist()],
                        scores=answer.scores.tolist(), latency_ms=latency))
                except OSError:
                    log.exception("could not append to prediction log %s", self.prediction_log.path)
        log.debug("predict: %d request row(s) in %.2f ms", len(records), (time.perf_counter() - t_call) * 1e3)
        if output == "lists":
            return pd.DataFrame({
                "user_id": [u for u, _ in answers],
                "items": [[ids[r] for r in a.item_rows.tolist()] for _, a in answers],
                "scores": [a.scores.astype(np.float64).tolist() for _, a in answers],
            })
        rows: list[dict[str, Any]] = []
        for user_id, a in answers:
            rows.extend({"user_id": user_id, "item_id": ids[r], "score": float(s), "rank": n + 1}
                        for n, (r, s) in enumerate(zip(a.item_rows.tolist(), a.scores.tolist())))
        return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank"])


# ---------------------------------------------------------------------------- serving command
def resolve_model_version(model_uri: str) -> str | None:
    """Registry version behind `models:/name@alias` or `models:/name/<n>`; None for other URIs."""
    if not model_uri.startswith("models:/"):
        return None
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ref = model_uri[len("models:/"):].strip("/")
    try:
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return str(MlflowClient().get_model_version_by_alias(name, alias).version)
        name, _, version = ref.partition("/")
        if version.isdigit():
            return version
    except MlflowException as exc:
        raise ValueError(f"cannot resolve {model_uri}: {exc.message}. Register a version and set the alias first "
                         "(e.g. `towerops registry promote`), or pass runs:/<run_id>/recommender") from exc
    return None


def serve_command(model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1,
                  scoring: str | None = None, prediction_log: str | None = None,
                  sample_rate: float | None = None, timeout_s: int | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and environment for `mlflow models serve` of the recommender (settings checked first)."""
    import sys

    from ml.prediction_log import ENV_PATH, ENV_SAMPLE, sample_rate_from_env

    if not 0 < port < 65536:
        raise ValueError(f"port={port} must be between 1 and 65535")
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1")
    env = dict(os.environ)
    if scoring is not None:
        if scoring not in SCORING_MODES:
            raise ValueError(f"scoring={scoring!r} is not one of {', '.join(SCORING_MODES)}")
        env[ENV_SCORING] = scoring
    if prediction_log:
        env[ENV_PATH] = str(Path(prediction_log).resolve())
    if sample_rate is not None:
        env[ENV_SAMPLE] = str(sample_rate)
    sample_rate_from_env(env.get(ENV_SAMPLE))  # a bad rate fails here, not in every worker
    version = resolve_model_version(model_uri)
    if version is not None:
        env[ENV_MODEL_VERSION] = version
    if timeout_s is not None:
        env["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(int(timeout_s))
    # mlflow starts `uvicorn` from PATH: make it this interpreter's, also when called by absolute path
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    argv = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
            "-h", host, "-p", str(port), "-w", str(workers)]
    return argv, env
