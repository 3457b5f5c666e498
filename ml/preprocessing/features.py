"""Feature pipeline: item and user feature matrices for the two towers.

Items: text embedding of title + description (TF-IDF + TruncatedSVD by default; any
`TextEncoder` plugs in), multi-hot tags, one-hot genre and maker vocabularies with an
out-of-vocabulary bucket, and standardised numerics (log price, log duration,
release year). Users: the mean item-feature vector of their liked and of their noped
items, history counts, like rate, and profile columns. A user with one swipe, or a
brand-new item, therefore still has features. The fitted pipeline is saved next to
the model so serving computes exactly the training-time features.

Standardisation (`fit_scaling`, done by the trainer): every item column and every user column
is shifted and scaled to mean 0, variance 1 over the training data (the catalog; the training
users' leave-one-out histories). Raw, the log history counts (~2.3 on average) and the
multi-hot blocks put every input in one cone and drown the ID vectors next to them; the
towers then barely learn who liked what.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import joblib
import numpy as np
import pandas as pd

from ml.config import FeatureConfig
from ml.preprocessing.text import TEXT_ENCODERS

OOV = "__oov__"
_EPOCH = np.datetime64("1970-01-01T00:00:00")


def _vocab(values: Iterable[str], max_size: int) -> list[str]:
    counts = pd.Series(list(values), dtype="object").value_counts(sort=False)
    # Sort by count descending, then name, so the vocabulary is deterministic.
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))
    return [str(k) for k, _ in ordered[:max_size]]


@dataclass
class ColumnScaler:
    """Per-column (x - mean) / scale, fitted on a matrix; scale floored so a constant column stays finite."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, matrix: np.ndarray, floor: float = 1e-3) -> "ColumnScaler":
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or len(matrix) == 0:
            raise ValueError(f"cannot fit a column scaler on an array of shape {matrix.shape}: it needs (rows >= 1, "
                             "columns)")
        # float64 sums over row blocks: no float64 copy of the whole (often 100k-row) matrix
        mean = np.zeros(matrix.shape[1], np.float64)
        for lo in range(0, len(matrix), 8192):
            mean += matrix[lo:lo + 8192].sum(axis=0, dtype=np.float64)
        mean /= len(matrix)
        var = np.zeros(matrix.shape[1], np.float64)
        for lo in range(0, len(matrix), 8192):
            block = matrix[lo:lo + 8192].astype(np.float64) - mean
            var += np.einsum("ij,ij->j", block, block)
        std = np.sqrt(var / len(matrix))
        return cls(mean.astype(np.float32), np.maximum(std, floor).astype(np.float32))

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        matrix = np.asarray(matrix, np.float32)
        if matrix.shape[-1] != len(self.mean):
            raise ValueError(f"features have {matrix.shape[-1]} columns but the scaler was fitted on {len(self.mean)}; "
                             "the feature pipeline and the data disagree, refit the model")
        return ((matrix - self.mean) / self.scale).astype(np.float32)

    def transform_(self, matrix: np.ndarray) -> np.ndarray:
        """`transform` in place on a float32 matrix (the same values, no copy)."""
        if matrix.dtype != np.float32 or matrix.shape[-1] != len(self.mean):
            return self.transform(matrix)
        matrix -= self.mean
        matrix /= self.scale
        return matrix


@dataclass
class _Scaler:
    """Median imputation + standardisation of one numeric column."""

    median: float = 0.0
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, values: np.ndarray) -> "_Scaler":
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return cls()
        std = float(finite.std())
        return cls(float(np.median(finite)), float(finite.mean()), std if std > 1e-12 else 1.0)

    def transform(self, values: np.ndarray) -> np.ndarray:
        v = np.where(np.isfinite(values), values, self.median)
        return ((v - self.mean) / self.std).astype(np.float32)


def _item_numerics(items: pd.DataFrame) -> dict[str, np.ndarray]:
    price = pd.to_numeric(items["price"], errors="coerce").to_numpy(dtype=np.float64)
    duration = pd.to_numeric(items["duration_s"], errors="coerce").to_numpy(dtype=np.float64)
    released = pd.to_datetime(items["released_at"], errors="coerce")
    years = (released - pd.Timestamp("1970-01-01")).dt.total_seconds().to_numpy(dtype=np.float64) / (365.25 * 86400)
    return {
        "log_price": np.log1p(np.clip(price, 0, None)),
        "log_duration": np.log1p(np.clip(duration, 0, None)),
        "release_year": years,
    }


def _one_hot(values: Sequence[str], index: dict[str, int], width: int, out: np.ndarray | None = None) -> np.ndarray:
    """Rows of `width` with a 1 at each value's index (the OOV column for unknown ones); written
    into `out` (zeros, shape (len(values), width)) when given."""
    out = np.zeros((len(values), width), dtype=np.float32) if out is None else out
    oov = index[OOV]
    cols = np.fromiter((index.get(v, oov) for v in values), dtype=np.int64, count=len(values))
    out[np.arange(len(values)), cols] = 1.0
    return out


@dataclass
class FeaturePipeline:
    """Fitted item and user encoders; `item_matrix` and `user_matrix` give tower inputs."""

    config: FeatureConfig = field(default_factory=FeatureConfig)
    text_encoder: object | None = None
    tag_vocab: list[str] = field(default_factory=list)
    genre_vocab: list[str] = field(default_factory=list)
    maker_vocab: list[str] = field(default_factory=list)
    numeric_scalers: dict[str, _Scaler] = field(default_factory=dict)
    profile_numeric: dict[str, _Scaler] = field(default_factory=dict)
    profile_categorical: dict[str, list[str]] = field(default_factory=dict)
    seed: int = 0
    item_scaling: ColumnScaler | None = None
    user_scaling: ColumnScaler | None = None

    # ----------------------------------------------------------------- fitting
    def fit(self, items: pd.DataFrame, users: pd.DataFrame) -> "FeaturePipeline":
        cfg = self.config
        if cfg.text_encoder not in TEXT_ENCODERS:
            raise ValueError(
                f"features.text_encoder={cfg.text_encoder!r} is unknown; available: {sorted(TEXT_ENCODERS)}"
            )
        self.text_encoder = TEXT_ENCODERS[cfg.text_encoder](
            dim=cfg.text_dim, max_features=cfg.max_tfidf_features, seed=self.seed
        ).fit(self._texts(items))
        self.tag_vocab = _vocab((t for tags in items["tags"] for t in tags), cfg.max_tags)
        self.genre_vocab = _vocab(items["genre"].fillna("").astype(str), 1000)
        self.maker_vocab = _vocab(items["maker"].fillna("").astype(str), cfg.max_makers)
        self.numeric_scalers = {k: _Scaler.fit(v) for k, v in _item_numerics(items).items()}
        self.profile_numeric, self.profile_categorical = {}, {}
        for col in users.columns:
            if col == "user_id":
                continue
            series = users[col]
            if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
                self.profile_numeric[col] = _Scaler.fit(series.to_numpy(dtype=np.float64))
            else:
                self.profile_categorical[col] = _vocab(series.fillna("").astype(str), cfg.max_profile_categories)
        self._build_indexes()
        return self

    def fit_scaling(self, items: pd.DataFrame, profiles: np.ndarray, user_rows: np.ndarray, item_rows: np.ndarray,
                    labels: np.ndarray, n_users: int, keep: dict | None = None) -> "FeaturePipeline":
        """Standardise the tower inputs: item columns over `items`, user columns over the leave-one-out
        histories of the given (training) interactions, computed from the standardised items.

        `keep` (a dict) receives what fitting computed anyway, standardised: `item_vectors`
        (= `item_matrix(items)`) and `train_users` (= `leave_one_out_user_matrix` of these rows),
        so the trainer does not compute them again."""
        self.item_scaling = self.user_scaling = None
        raw = self.item_matrix(items)
        self.item_scaling = ColumnScaler.fit(raw)
        item_vectors = self.item_scaling.transform_(raw)
        users = self.leave_one_out_user_matrix(profiles, item_vectors, user_rows, item_rows, labels, n_users)
        self.user_scaling = ColumnScaler.fit(users)
        if keep is not None:
            keep["item_vectors"] = item_vectors
            keep["train_users"] = self.user_scaling.transform_(users)
        return self

    def _scale_users(self, matrix: np.ndarray) -> np.ndarray:
        return matrix if self.user_scaling is None else self.user_scaling.transform(matrix)

    def _build_indexes(self) -> None:
        self._tag_index = {t: i for i, t in enumerate(self.tag_vocab + [OOV])}
        self._genre_index = {t: i for i, t in enumerate(self.genre_vocab + [OOV])}
        self._maker_index = {t: i for i, t in enumerate(self.maker_vocab + [OOV])}
        self._profile_index = {c: {t: i for i, t in enumerate(v + [OOV])} for c, v in self.profile_categorical.items()}

    @staticmethod
    def _texts(items: pd.DataFrame) -> list[str]:
        return (items["title"].fillna("").astype(str) + " " + items["description"].fillna("").astype(str)).tolist()

    # ------------------------------------------------------------- dimensions
    @property
    def item_groups(self) -> dict[str, int]:
        return {
            "text": self.config.text_dim,
            "tags": len(self.tag_vocab) + 1,
            "genre": len(self.genre_vocab) + 1,
            "maker": len(self.maker_vocab) + 1,
            "numeric": len(self.numeric_scalers),
        }

    @property
    def item_dim(self) -> int:
        return sum(self.item_groups.values())

    @property
    def user_groups(self) -> dict[str, int]:
        return {
            "liked_mean": self.item_dim,
            "noped_mean": self.item_dim,
            "history": 3,
            "profile_numeric": len(self.profile_numeric),
            "profile_categorical": sum(len(v) + 1 for v in self.profile_categorical.values()),
        }

    @property
    def user_dim(self) -> int:
        return sum(self.user_groups.values())

    def item_feature_names(self) -> list[str]:
        return (
            [f"text_{i}" for i in range(self.config.text_dim)]
            + [f"tag={t}" for t in self.tag_vocab + [OOV]]
            + [f"genre={t}" for t in self.genre_vocab + [OOV]]
            + [f"maker={t}" for t in self.maker_vocab + [OOV]]
            + list(self.numeric_scalers)
        )

    def schema(self) -> dict:
        """Structure of the tower inputs (not the fitted values): what a model can be fed."""
        return {
            "item_inputs": ["title", "description", "tags", "genre", "maker", "price", "duration_s", "released_at"],
            "text_encoder": self.config.text_encoder,
            "text_dim": self.config.text_dim,
            "max_tags": self.config.max_tags,
            "max_makers": self.config.max_makers,
            "item_numeric": sorted(self.numeric_scalers),
            "user_groups": ["liked_mean", "noped_mean", "history"],
            "profile_numeric": sorted(self.profile_numeric),
            "profile_categorical": sorted(self.profile_categorical),
            "standardised": self.item_scaling is not None and self.user_scaling is not None,
        }

    def schema_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.schema(), sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------ transforms
    def item_matrix(self, items: pd.DataFrame) -> np.ndarray:
        """Tower input for items, shape (n_items, item_dim), float32.

        Written into one preallocated array and standardised in place: a catalog refresh runs
        this over every new item, and each temporary copy of the matrix costs as much as a part."""
        n, groups = len(items), self.item_groups
        out = np.zeros((n, self.item_dim), dtype=np.float32)
        at = 0
        out[:, :groups["text"]] = self.text_encoder.transform(self._texts(items))
        at += groups["text"]
        tags = out[:, at:at + groups["tags"]]
        oov = self._tag_index[OOV]
        index = self._tag_index
        for row, row_tags in enumerate(items["tags"]):
            for t in row_tags:
                tags[row, index.get(t, oov)] = 1.0
        at += groups["tags"]
        for column, index, width in (("genre", self._genre_index, groups["genre"]),
                                     ("maker", self._maker_index, groups["maker"])):
            _one_hot(items[column].fillna("").astype(str).tolist(), index, width, out=out[:, at:at + width])
            at += width
        numerics = _item_numerics(items)
        for j, (k, scaler) in enumerate(self.numeric_scalers.items()):
            out[:, at + j] = scaler.transform(numerics[k])
        if self.item_scaling is not None:
            self.item_scaling.transform_(out)
        return out

    def profile_matrix(self, users: pd.DataFrame) -> np.ndarray:
        parts = [np.zeros((len(users), 0), dtype=np.float32)]
        for col, scaler in self.profile_numeric.items():
            values = pd.to_numeric(users[col], errors="coerce").to_numpy(dtype=np.float64) if col in users else np.full(len(users), np.nan)
            parts.append(scaler.transform(values)[:, None])
        for col, index in self._profile_index.items():
            values = users[col].fillna("").astype(str).tolist() if col in users else [OOV] * len(users)
            parts.append(_one_hot(values, index, len(index)))
        return np.concatenate(parts, axis=1).astype(np.float32)

    @staticmethod
    def history_aggregates(
        like_sum: np.ndarray, nope_sum: np.ndarray, n_like: np.ndarray, n_nope: np.ndarray,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """[mean liked item vector | mean noped item vector | log1p likes, log1p nopes, like rate].

        With `out` (float32, at least 2 * d + 3 columns) the result is written into its first
        columns, and `like_sum` / `nope_sum` may be its first two column blocks (divided in place)."""
        d = like_sum.shape[1]
        n_like = n_like.astype(np.float32)[:, None]
        n_nope = n_nope.astype(np.float32)[:, None]
        if out is None:
            out = np.empty((len(n_like), 2 * d + 3), np.float32)
        np.divide(like_sum, np.maximum(n_like, np.float32(1.0)), out=out[:, :d])
        np.divide(nope_sum, np.maximum(n_nope, np.float32(1.0)), out=out[:, d:2 * d])
        out[:, 2 * d:2 * d + 1] = np.log1p(n_like)
        out[:, 2 * d + 1:2 * d + 2] = np.log1p(n_nope)
        out[:, 2 * d + 2:2 * d + 3] = (n_like + np.float32(1.0)) / (n_like + n_nope + np.float32(2.0))
        return out

    def user_matrix(
        self,
        profiles: np.ndarray,
        item_vectors: np.ndarray,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        labels: np.ndarray,
        n_users: int,
    ) -> np.ndarray:
        """User tower input from history given as parallel arrays (user row, item row, label)."""
        sums = _history_sums(item_vectors, user_rows, item_rows, labels, n_users)
        return self._scale_users(np.concatenate([self.history_aggregates(*sums), profiles], axis=1))

    def leave_one_out_user_matrix(
        self,
        profiles: np.ndarray,
        item_vectors: np.ndarray,
        user_rows: np.ndarray,
        item_rows: np.ndarray,
        labels: np.ndarray,
        n_users: int,
    ) -> np.ndarray:
        """Per-interaction user input that leaves that interaction out of the history.

        Training on the aggregate that contains the target item would teach the model
        to look the item up in its own input; leaving it out matches serving, where the
        candidate has not been swiped yet.
        """
        like_sum, nope_sum, n_like, n_nope = _history_sums(item_vectors, user_rows, item_rows, labels, n_users)
        # one preallocated matrix (one row per training interaction: each temporary copy of it costs as
        # much as the arithmetic): the history sums without the row itself, then history_aggregates in place
        d, n = item_vectors.shape[1], len(user_rows)
        out = np.empty((n, 2 * d + 3 + profiles.shape[1]), np.float32)
        is_like = labels.astype(np.float32)[:, None]
        x = item_vectors[item_rows]
        liked, noped = out[:, :d], out[:, d:2 * d]
        np.take(like_sum, user_rows, axis=0, out=liked)
        liked -= x * is_like
        np.take(nope_sum, user_rows, axis=0, out=noped)
        np.multiply(x, np.float32(1.0) - is_like, out=x)
        noped -= x
        self.history_aggregates(liked, noped, n_like[user_rows] - labels.astype(np.int64),
                                n_nope[user_rows] - (1 - labels.astype(np.int64)), out=out)
        if profiles.shape[1]:
            np.take(profiles, user_rows, axis=0, out=out[:, 2 * d + 3:])
        return out if self.user_scaling is None else self.user_scaling.transform_(out)

    # ------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, d / "pipeline.joblib")
        spec = {
            "schema": self.schema(),
            "schema_hash": self.schema_hash(),
            "item_dim": self.item_dim,
            "user_dim": self.user_dim,
            "item_groups": self.item_groups,
            "user_groups": self.user_groups,
            "tag_vocab": self.tag_vocab,
            "genre_vocab": self.genre_vocab,
            "maker_vocab": self.maker_vocab,
            "profile_categorical": self.profile_categorical,
            "numeric_scalers": {k: vars(v) for k, v in self.numeric_scalers.items()},
            "profile_numeric": {k: vars(v) for k, v in self.profile_numeric.items()},
            # (x - mean) / scale per column, applied last by item_matrix / user_matrix (None: raw features)
            "item_scaling": _scaler_spec(self.item_scaling),
            "user_scaling": _scaler_spec(self.user_scaling),
        }
        (d / "spec.json").write_text(json.dumps(spec, indent=2))

    @staticmethod
    def load(directory: str | Path) -> "FeaturePipeline":
        pipeline = joblib.load(Path(directory) / "pipeline.joblib")
        if not isinstance(pipeline, FeaturePipeline):
            raise ValueError(f"{directory}/pipeline.joblib does not hold a FeaturePipeline")
        pipeline._build_indexes()
        return pipeline

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        for key in ("_tag_index", "_genre_index", "_maker_index", "_profile_index"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict) -> None:
        state.setdefault("item_scaling", None)  # pipelines saved before standardisation
        state.setdefault("user_scaling", None)
        self.__dict__.update(state)
        self._build_indexes()


def _scaler_spec(scaler: ColumnScaler | None) -> dict | None:
    if scaler is None:
        return None
    return {"mean": [float(v) for v in scaler.mean], "scale": [float(v) for v in scaler.scale]}


def _history_sums(
    item_vectors: np.ndarray, user_rows: np.ndarray, item_rows: np.ndarray, labels: np.ndarray, n_users: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from scipy.sparse import csr_matrix

    n_items = item_vectors.shape[0]
    liked = labels == 1
    sums = []
    for mask in (liked, ~liked):
        rows, cols = user_rows[mask], item_rows[mask]
        counts = csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_items))
        sums.append(np.asarray(counts @ item_vectors, dtype=np.float32))
    n_like = np.bincount(user_rows[liked], minlength=n_users)
    n_nope = np.bincount(user_rows[~liked], minlength=n_users)
    return sums[0], sums[1], n_like, n_nope
