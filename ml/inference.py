"""In-process recommendations from a model bundle, and the MLflow pyfunc around them.

Known users use their exported embedding; a cold user (or a known user with swipes
newer than the model) is embedded by the user tower from the history sent in the
request. Items are scored with one matrix product against precomputed embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from ml.logs import get_logger

log = get_logger("inference")


class InferenceRequestError(ValueError):
    """A request that cannot be answered as sent (maps to HTTP 400)."""


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


class RealtimeInferenceEngine:
    """Top-k recommendations for one user at a time, in process."""

    def __init__(self, model_dir: str | Path, mmap: bool = False) -> None:
        from ml.export import load_bundle

        self.bundle = load_bundle(model_dir, mmap=mmap)
        self.model_dir = Path(model_dir)
        self._profile_default: np.ndarray | None = None
        log.info("loaded model bundle %s: %d items, %d known users, %d-d embeddings", model_dir,
                 len(self.bundle.item_ids), len(self.bundle.user_ids), self.bundle.embedding_dim)

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

    def embed_history(self, liked_rows: np.ndarray, noped_rows: np.ndarray, profile: np.ndarray | None = None) -> np.ndarray:
        """User embedding from a swipe history (rows into the catalog) through the user tower."""
        b = self.bundle
        feats = b.item_features
        like_sum = feats[liked_rows].sum(axis=0, keepdims=True) if len(liked_rows) else np.zeros((1, feats.shape[1]), np.float32)
        nope_sum = feats[noped_rows].sum(axis=0, keepdims=True) if len(noped_rows) else np.zeros((1, feats.shape[1]), np.float32)
        agg = b.pipeline.history_aggregates(like_sum, nope_sum, np.array([len(liked_rows)]), np.array([len(noped_rows)]))
        prof = self._default_profile() if profile is None else profile
        x = np.concatenate([agg, prof[None, :]], axis=1).astype(np.float32)
        return np.asarray(b.user_tower(x, training=False))[0]

    def user_embedding(self, user_id: str | None, liked_items: Sequence[str] | None = None,
                       noped_items: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(embedding, rows the user has already swiped)."""
        b = self.bundle
        liked = self._item_rows(liked_items or [], "liked_items")
        noped = self._item_rows(noped_items or [], "noped_items")
        row = b.user_index.get(str(user_id)) if user_id is not None else None
        if row is not None and not len(liked) and not len(noped):
            seen, _ = b.history(row)
            return np.asarray(b.user_embeddings[row]), seen
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
        return self.embed_history(liked.astype(np.int64), noped.astype(np.int64), profile), np.r_[liked, noped].astype(np.int64)

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
        try:
            top_k = int(top_k)
        except (TypeError, ValueError) as exc:
            raise InferenceRequestError(f"top_k={top_k!r} must be a positive integer") from exc
        if top_k <= 0:
            raise InferenceRequestError(f"top_k={top_k} must be a positive integer, e.g. 10")
        emb, seen = self.user_embedding(user_id, liked_items, noped_items)
        b = self.bundle
        if candidate_items is not None:
            rows = self._item_rows(candidate_items, "candidate_items")
            scores = b.item_embeddings[rows] @ emb
        else:
            rows = None
            scores = b.item_embeddings @ emb
        if exclude_seen and len(seen):
            if rows is None:
                scores[seen] = -np.inf
            else:
                scores[np.isin(rows, seen)] = -np.inf
        valid = int(np.isfinite(scores).sum())
        k = min(top_k, valid)
        if k == 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")][:k]
        item_rows = top if rows is None else rows[top]
        ids = b.item_ids
        return [{"item_id": ids[r], "score": float(scores[t]), "rank": n + 1}
                for n, (r, t) in enumerate(zip(item_rows, top))]


def create_standard_inference_engine(model_dir: str | Path | None = None, model_uri: str | None = None) -> RealtimeInferenceEngine:
    """An engine for a bundle folder, or for a logged model (`runs:/<id>/recommender`, `models:/two_tower@production`)."""
    if model_dir is None and model_uri is None:
        model_dir = "models/two_tower"
    if model_uri is not None:
        import mlflow

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
        candidates = [local / "artifacts" / "model_dir", local / "model_dir", local]
        model_dir = next((c for c in candidates if (c / "metadata.json").exists()), local)
    return RealtimeInferenceEngine(model_dir)  # type: ignore[arg-type]


def _pyfunc_base():
    import mlflow.pyfunc

    return mlflow.pyfunc.PythonModel


class TwoTowerRecommender(_pyfunc_base()):
    """MLflow pyfunc: a DataFrame of requests in, a DataFrame of (user_id, rank, item_id, score) out.

    Request columns: user_id; optional top_k, exclude_seen, candidate_items,
    liked_items, noped_items (lists of item ids). `params={"top_k": n}` sets the default k.
    """

    def load_context(self, context) -> None:
        self.engine = RealtimeInferenceEngine(context.artifacts["model_dir"])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        default_k = int((params or {}).get("top_k", 10))
        if isinstance(model_input, dict):
            model_input = pd.DataFrame([model_input])
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if "user_id" not in model_input.columns and "liked_items" not in model_input.columns:
            raise InferenceRequestError(
                f"request needs a user_id column (or liked_items for a cold user); got columns {list(model_input.columns)}"
            )
        rows: list[dict[str, Any]] = []
        for rec in model_input.to_dict(orient="records"):
            user_id = rec.get("user_id")
            user_id = None if user_id is None or (isinstance(user_id, float) and np.isnan(user_id)) else str(user_id)
            top_k = rec.get("top_k")
            top_k = default_k if top_k is None or (isinstance(top_k, float) and np.isnan(top_k)) else top_k
            exclude = rec.get("exclude_seen")
            exclude = True if exclude is None or (isinstance(exclude, float) and np.isnan(exclude)) else bool(exclude)
            recs = self.engine.get_recommendations(
                user_id=user_id,
                candidate_items=_as_list(rec.get("candidate_items"), "candidate_items"),
                top_k=top_k,
                exclude_seen=exclude,
                liked_items=_as_list(rec.get("liked_items"), "liked_items"),
                noped_items=_as_list(rec.get("noped_items"), "noped_items"),
            )
            rows.extend({"user_id": user_id, **r} for r in recs)
        return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank"])
