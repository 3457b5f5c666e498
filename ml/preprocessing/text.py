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
                                      token_pattern=WORD_PATTERN)
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
        reduced = (self._tfidf_matrix(texts) @ self._components_t()).astype(np.float32, copy=False)
        norms = np.linalg.norm(reduced, axis=1, keepdims=True)
        reduced /= np.maximum(norms, np.float32(1e-12))
        out[:, : reduced.shape[1]] = reduced
        return out

    # The fitted TfidfVectorizer's own transform tokenises with a regex and looks words up one by
    # one in Python (most of a catalog refresh's time). `_tfidf_matrix` computes the same matrix
    # (lowercase, the `\\b\\w+\\b` tokens, sublinear tf, idf, l2 rows): ASCII texts are tokenised
    # and looked up in numpy (`_ascii_tokens`), others through the vectorizer's own regex and
    # vocabulary; tests check it against sklearn's transform.
    def _tfidf_matrix(self, texts: Sequence[str]):
        import scipy.sparse as sp

        tfidf = self._tfidf
        if (tfidf.lowercase is not True or tfidf.analyzer != "word" or tfidf.ngram_range != (1, 1)
                or tfidf.stop_words is not None or tfidf.strip_accents is not None or tfidf.preprocessor is not None
                or tfidf.tokenizer is not None or tfidf.token_pattern != WORD_PATTERN or tfidf.norm != "l2"
                or not tfidf.use_idf or not tfidf.sublinear_tf):
            return tfidf.transform(list(texts))  # a configuration the fast path does not reproduce
        lookup = self.__dict__.get("_lookup")
        if lookup is None:
            lookup = self.__dict__["_lookup"] = _VocabLookup(tfidf.vocabulary_)
        n, width = len(texts), len(tfidf.vocabulary_)
        docs = [t.lower() for t in texts]
        plain = np.fromiter((d.isascii() and "\x00" not in d for d in docs), bool, count=n)
        rows, cols = lookup.ascii_tokens([d for d, ok in zip(docs, plain) if ok])
        rows = np.flatnonzero(plain)[rows]
        other = np.flatnonzero(~plain)
        if len(other):  # non-ASCII texts: the vectorizer's regex and vocabulary, one by one
            import re

            pattern, vocab = re.compile(tfidf.token_pattern), tfidf.vocabulary_
            o_rows, o_cols = [], []
            for r in other:
                for token in pattern.findall(docs[r]):
                    col = vocab.get(token)
                    if col is not None:
                        o_rows.append(r)
                        o_cols.append(col)
            rows = np.r_[rows, np.asarray(o_rows, np.int64)]
            cols = np.r_[cols, np.asarray(o_cols, np.int64)]
        keys, counts = np.unique(rows * width + cols, return_counts=True)
        rows, cols = np.divmod(keys, width)
        data = (np.log(counts) + 1.0) * np.asarray(tfidf.idf_, np.float64)[cols]
        norms = np.sqrt(np.bincount(rows, weights=data * data, minlength=n))
        data /= norms[rows]
        indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n))]
        return sp.csr_matrix((data, cols, indptr), shape=(n, width))

    def _components_t(self) -> np.ndarray:
        comp = self.__dict__.get("_comp_t")
        if comp is None:
            comp = self.__dict__["_comp_t"] = np.ascontiguousarray(self._svd.components_.T)
        return comp

    def __getstate__(self) -> dict:
        """Caches stay out of the saved pipeline."""
        return {k: v for k, v in self.__dict__.items() if k not in ("_lookup", "_comp_t")}


WORD_PATTERN = r"(?u)\b\w+\b"
_WORD_BYTES = np.zeros(256, bool)
for _c in b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_":
    _WORD_BYTES[_c] = True


class _VocabLookup:
    """Maximal runs of [A-Za-z0-9_] (what `\\b\\w+\\b` finds in ASCII text) found and looked up in numpy.

    A token of up to 16 bytes is its bytes zero-padded to two uint64 words; it is searched by a
    mix of the two among the vocabulary's and accepted only where both words are equal (exact, a
    collision of the mix only costs a miss). Longer tokens go through the vocabulary dict.
    """

    WIDTH = 16

    def __init__(self, vocabulary: dict[str, int]) -> None:
        self.vocabulary = vocabulary
        short = [(t.encode("ascii"), c) for t, c in vocabulary.items() if t.isascii() and len(t) <= self.WIDTH]
        words = np.zeros((len(short), self.WIDTH), np.uint8)
        for i, (t, _) in enumerate(short):
            words[i, :len(t)] = np.frombuffer(t, np.uint8)
        words = words.view(np.uint64)
        mix = self._mix(words)
        order = np.argsort(mix, kind="stable")
        self.mix, self.words = mix[order], words[order]
        self.cols = np.array([c for _, c in short], np.int64)[order]
        self._masks = np.zeros((self.WIDTH + 1, self.WIDTH), np.uint8)
        for n in range(self.WIDTH + 1):
            self._masks[n, :n] = 0xFF

    @staticmethod
    def _mix(words: np.ndarray) -> np.ndarray:
        return words[:, 0] * np.uint64(0x9E3779B97F4A7C15) ^ words[:, 1]

    def ascii_tokens(self, docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(document row, vocabulary column) of every in-vocabulary token of lowercased ASCII `docs`."""
        if not docs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        w = self.WIDTH
        text = np.frombuffer("\x00".join(docs).encode("ascii"), np.uint8)
        word = np.empty(len(text) + 2, bool)
        word[0] = word[-1] = False
        np.take(_WORD_BYTES, text, out=word[1:-1])
        edges = np.flatnonzero(word[1:] != word[:-1])
        starts, ends = edges[0::2], edges[1::2]
        lengths = ends - starts
        doc = np.searchsorted(np.flatnonzero(text == 0), starts)   # separators before a token: its document
        padded = np.r_[text, np.zeros(w, np.uint8)]
        grams = np.lib.stride_tricks.sliding_window_view(padded, w)[starts]
        grams &= self._masks[np.minimum(lengths, w)]
        keys = grams.view(np.uint64)
        cols = np.full(len(keys), -1, np.int64)
        if len(self.mix):
            at = np.minimum(np.searchsorted(self.mix, self._mix(keys)), len(self.mix) - 1)
            hit = (self.words[at] == keys).all(axis=1) & (lengths <= w)
            cols[hit] = self.cols[at[hit]]
        for i in np.flatnonzero(lengths > w):         # long tokens: the dict
            cols[i] = self.vocabulary.get(text[starts[i]:ends[i]].tobytes().decode("ascii"), -1)
        known = cols >= 0
        return doc[known].astype(np.int64), cols[known]


TEXT_ENCODERS = {"tfidf_svd": TfidfSvdEncoder}
