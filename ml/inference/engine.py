"""In-process recommendations from a model bundle, and the MLflow pyfunc around them.

Known users use their exported embedding; a cold user (or a known user with swipes
newer than the model) is embedded by the user tower from the history sent in the
request. Items are scored with one matrix product against the embeddings computed
once at export (float32, C-contiguous, so numpy hands it to BLAS sgemv), or, for
catalogs too large to scan per request, through an approximate faiss index that
`ml.inference.ann` builds into the bundle (exact inner products on the candidates it returns).

The user tower runs as a numpy forward pass read straight from the saved `.keras`
file (Dense / Dropout / UnitNormalization only, which is all `ml.model` builds), so a
serving process never imports TensorFlow: it starts faster and stays smaller. Any
other layer falls back to Keras.

`TwoTowerRecommender.predict` (the pyfunc `mlflow models serve` runs) goes through
the same `RealtimeInferenceEngine` code path as `get_recommendations`, raises request
errors as MLflow INVALID_PARAMETER_VALUE (HTTP 400 with the message), logs to
`logs/inference.log` and samples every request row to the prediction log
(`ml.inference.prediction_log`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ml.bundle.resolve import bundle_dir_from_uri
from ml.inference.scoring import RankReduction, _lowrank_wanted, reduce_rank, top_k_indices
from ml.inference.towers import NumpyTower, UnsupportedTower
from ml.logs import get_logger
from ml.settings import get_settings

log = get_logger("inference")

ENV_SCORING = "TOWEROPS_SCORING"
ENV_MODEL_VERSION = "TOWEROPS_MODEL_VERSION"
SCORING_MODES = ("auto", "exact", "ann")


class InferenceRequestError(ValueError):
    """A request that cannot be answered as sent (maps to HTTP 400)."""


# ---------------------------------------------------------------------------- helpers
MAX_TOP_K = 10_000          # items one request may ask for (a bigger k is a typo or an abuse, not a use)
ECHO_LIMIT = 100            # characters of a client's value an error message repeats back
REQUEST_FIELDS = ("user_id", "top_k", "exclude_seen", "candidate_items", "liked_items", "noped_items")


def shown(value: Any, limit: int = ECHO_LIMIT) -> str:
    """repr(value), cut to `limit` characters: errors name the bad value without echoing a whole request."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _as_list(value: Any, field: str, strict: bool = False) -> list[str] | None:
    """A list of item ids from a request field (None when absent).

    strict (JSON requests): a JSON list of strings (or integers) only. Otherwise (DataFrame
    rows, CSV) also a JSON-list string or 'a|b|c'."""
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, str) and not strict:
        text = value.strip()
        if not text:
            return None
        if text.startswith("["):
            try:
                value = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as exc:
                raise InferenceRequestError(f"{field}={shown(value)} is not a JSON list of item ids: "
                                            f"{getattr(exc, 'msg', 'nested too deeply')}") from None
        else:
            value = [v for v in text.split("|") if v]
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise InferenceRequestError(f"{field} must be a list of item ids (e.g. [\"i00001\", \"i00002\"]), "
                                    f"got {type(value).__name__}: {shown(value)}")
    out: list[str] = []
    for n, v in enumerate(value):
        if isinstance(v, str):
            out.append(v)
        elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            out.append(str(v))
        else:
            raise InferenceRequestError(f"{field}[{n}] must be an item id (a string), got {type(v).__name__}: "
                                        f"{shown(v)}")
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def parse_top_k(value: Any, limit: int = MAX_TOP_K) -> int:
    """A positive int up to `limit` from a request field; anything else is an InferenceRequestError.

    Bools are refused (True is not 1), so are fractions, NaN and infinities; a string of
    digits is taken (CSV and command-line input), JSON requests refuse strings before this."""
    fix = f"must be a positive integer up to {limit}, e.g. 10"
    if isinstance(value, (bool, np.bool_)):
        raise InferenceRequestError(f"top_k={shown(value)} {fix} (true/false is not a number)")
    if isinstance(value, (int, np.integer)):
        k = int(value)
    elif isinstance(value, (float, np.floating)):
        if not np.isfinite(value) or float(value) != int(value):
            raise InferenceRequestError(f"top_k={shown(value)} {fix}")
        k = int(value)
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) <= 9:
        k = int(value.strip())
    else:
        raise InferenceRequestError(f"top_k={shown(value)} {fix}")
    if k <= 0:
        raise InferenceRequestError(f"top_k={k} {fix}")
    if k > limit:
        raise InferenceRequestError(f"top_k={k} is above the limit of {limit}: ask for at most {limit} items")
    return k


def parse_bool(value: Any, field: str) -> bool:
    """A real boolean: "false", "no", 0 and 1 are refused (bool("false") is True)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise InferenceRequestError(f"{field}={shown(value)} must be true or false (a JSON boolean, not a string or "
                                "number)")


@dataclass
class RecommendationRequest:
    """One parsed request row."""

    user_id: str | None
    top_k: int
    exclude_seen: bool = True
    candidate_items: list[str] | None = None
    liked_items: list[str] | None = None
    noped_items: list[str] | None = None

    @property
    def cold(self) -> bool:
        return bool(self.liked_items) or bool(self.noped_items)


def parse_request(record: Any, default_k: int = 10, strict: bool = False, where: str = "request") -> RecommendationRequest:
    """Check one request row's types and turn it into a RecommendationRequest.

    strict (JSON over HTTP): the row is an object with only known fields, `user_id` a
    string (or integer), `top_k` a positive integer, `exclude_seen` a boolean, the item
    lists lists of strings. Otherwise (a DataFrame row) missing values are NaN and
    unknown columns are ignored."""
    if not isinstance(record, dict):
        raise InferenceRequestError(f"{where} must be an object like {{\"user_id\": \"u00001\", \"top_k\": 10}}, got "
                                    f"{type(record).__name__}: {shown(record)}")
    if strict:
        unknown = [k for k in record if k not in REQUEST_FIELDS]
        if unknown:
            raise InferenceRequestError(f"{where}: unknown field(s) {', '.join(shown(k, 40) for k in unknown[:5])}; "
                                        f"known fields: {', '.join(REQUEST_FIELDS)}")
    try:
        user_id = record.get("user_id")
        if _missing(user_id):
            user_id = None
        elif isinstance(user_id, (bool, np.bool_)) or not isinstance(user_id, (str, int, np.integer)):
            raise InferenceRequestError(f"user_id must be a string, got {type(user_id).__name__}: {shown(user_id)}")
        else:
            user_id = str(user_id)
        top_k = record.get("top_k")
        if _missing(top_k):
            k = default_k
        elif strict and not isinstance(top_k, (int, float)):
            raise InferenceRequestError(f"top_k={shown(top_k)} must be a positive integer up to {MAX_TOP_K} "
                                        "(a JSON number, not a string), e.g. 10")
        else:
            k = parse_top_k(top_k)
        exclude = record.get("exclude_seen")
        request = RecommendationRequest(
            user_id=user_id, top_k=k, exclude_seen=True if _missing(exclude) else parse_bool(exclude, "exclude_seen"),
            candidate_items=_as_list(record.get("candidate_items"), "candidate_items", strict),
            liked_items=_as_list(record.get("liked_items"), "liked_items", strict),
            noped_items=_as_list(record.get("noped_items"), "noped_items", strict),
        )
    except InferenceRequestError as exc:
        raise InferenceRequestError(f"{where}: {exc}" if where != "request" else str(exc)) from None
    if request.user_id is None and request.liked_items is None and request.noped_items is None:
        raise InferenceRequestError(f"{where} needs a user_id (or liked_items / noped_items for a cold user); "
                                    f"got fields {', '.join(shown(k, 40) for k in list(record)[:10]) or 'none'}")
    return request


@dataclass
class Recommendation:
    """One answered request: ranked item rows and scores, plus how the user was embedded."""

    item_rows: np.ndarray
    scores: np.ndarray
    cold: bool


# ---------------------------------------------------------------------------- engine
class RealtimeInferenceEngine:
    """Top-k recommendations for one user at a time, in process.

    scoring: "exact" (one float32 matrix-vector product over the catalog), "ann" (the
    bundle's faiss index, see `ml.inference.ann`; built in memory when the bundle has none) or
    "auto" (ann when the bundle holds an index, else exact). Default: $TOWEROPS_SCORING
    or "auto". lowrank: score in the catalog's own row space when its rank is at most half
    the embedding width (`RankReduction`; same scores to 2e-5). Default: $TOWEROPS_LOWRANK
    or on.
    """

    def __init__(self, model_dir: str | Path, mmap: bool = False, scoring: str | None = None,
                 nprobe: int | None = None, lowrank: bool | None = None) -> None:
        from ml.bundle.load import load_bundle

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
            from ml.inference.ann import load_or_build_index

            self.ann, self.reduction = load_or_build_index(self.model_dir, self.item_matrix, nprobe=nprobe,
                                                           lowrank=want_lowrank)
        elif want_lowrank:
            self.reduction = reduce_rank(self.item_matrix)
        rank = (f"rank {self.reduction.rank} of {emb.shape[1]} (residual {self.reduction.max_residual:.1e})"
                if self.reduction is not None else "full rank")
        log.info("loaded model bundle %s: %d items, %d known users, %d-d embeddings, %s scoring, %s", model_dir,
                 len(self.bundle.item_ids), len(self.bundle.user_ids), self.bundle.embedding_dim, self.scoring, rank)

    def _resolve_scoring(self, scoring: str | None) -> str:
        mode = (scoring or get_settings().scoring).strip().lower()  # the setting is checked when read
        if mode not in SCORING_MODES:
            source = "scoring" if scoring else ENV_SCORING
            raise ValueError(f"{source}={mode!r} is not one of {', '.join(SCORING_MODES)}")
        if mode == "auto":
            from ml.inference.ann import has_index

            mode = "ann" if has_index(self.model_dir) else "exact"
        return mode

    # -------------------------------------------------------------- helpers
    def _item_rows(self, ids: Iterable[str], field: str) -> np.ndarray:
        index = self.bundle.item_index
        ids = list(ids)
        unknown = [i for i in ids if i not in index]
        if unknown:
            names = ", ".join(shown(u, 40) for u in unknown[:5])
            raise InferenceRequestError(
                f"{field}: {len(unknown)} unknown item id(s): {names}"
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

    def embed_history(self, liked_rows: np.ndarray, noped_rows: np.ndarray, profile: np.ndarray | None = None,
                      user_row: int | None = None) -> np.ndarray:
        """User embedding from a swipe history (rows into the catalog) through the user tower.

        The inputs come from `ModelBundle.user_inputs` (content means, pooled item-id vectors,
        the user's id vector: `user_row`, or the OOV row for a cold user), as everywhere else.
        """
        b = self.bundle
        liked_rows, noped_rows = np.asarray(liked_rows, np.int64), np.asarray(noped_rows, np.int64)
        items = np.r_[liked_rows, noped_rows]
        labels = np.r_[np.ones(len(liked_rows), np.int64), np.zeros(len(noped_rows), np.int64)]
        prof = self._default_profile() if profile is None else profile
        x = b.user_inputs(np.asarray(prof, np.float32)[None, :], np.zeros(len(items), np.int64), items, labels,
                          id_rows=np.array([-1 if user_row is None else user_row]))
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
                f"unknown user_id {shown(user_id)} with no history: send the user's recent swipes as "
                "liked_items / noped_items (item ids) to get cold-start recommendations"
            )
        profile = None
        if row is not None:
            seen, labels = b.history(row)
            liked = np.r_[seen[labels == 1], liked]
            noped = np.r_[seen[labels == 0], noped]
            profile = b.profiles[row]
        emb = self.embed_history(liked.astype(np.int64), noped.astype(np.int64), profile, user_row=row)
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
