"""Text encoders for item titles and descriptions: a small protocol and the TF-IDF + SVD default."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class TextEncoder(Protocol):
    """Turns texts into fixed-width dense vectors; `dim` is fixed after `fit`."""

    dim: int

    def fit(self, texts: Sequence[str]) -> "TextEncoder": ...

    def transform(self, texts: Sequence[str]) -> np.ndarray: ...


class TfidfSvdEncoder:
    """TF-IDF over words followed by TruncatedSVD (latent semantic analysis)."""

    def __init__(self, dim: int = 64, max_features: int = 20000, seed: int = 0) -> None:
        self.dim = dim
        self.max_features = max_features
        self.seed = seed
        self._tfidf = None
        self._svd = None

    def fit(self, texts: Sequence[str]) -> "TfidfSvdEncoder":
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        texts = [t if t.strip() else "__empty__" for t in texts]
        self._tfidf = TfidfVectorizer(max_features=self.max_features, sublinear_tf=True, min_df=1,
                                      token_pattern=r"(?u)\b\w+\b")
        matrix = self._tfidf.fit_transform(texts)
        n_comp = min(self.dim, matrix.shape[1] - 1, matrix.shape[0] - 1)
        if n_comp >= 1:
            self._svd = TruncatedSVD(n_components=n_comp, random_state=self.seed)
            self._svd.fit(matrix)
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        if self._tfidf is None:
            raise RuntimeError("TfidfSvdEncoder.transform called before fit")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if self._svd is None or len(texts) == 0:
            return out
        reduced = self._svd.transform(self._tfidf.transform(list(texts))).astype(np.float32)
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        reduced = reduced / np.maximum(norms, 1e-12)
        out[:, : reduced.shape[1]] = reduced
        return out


TEXT_ENCODERS = {"tfidf_svd": TfidfSvdEncoder}
