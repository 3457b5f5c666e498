"""Scoring items for users: the one top-k (ties to the lower index) and the exact low-rank reduction of the catalog."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.settings import get_settings


def top_k_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores, best first; ties go to the lower index (deterministic).

    Works on a vector or row-wise on a matrix; -inf entries sort last, NaN counts as -inf.
    argpartition picks an arbitrary subset of the scores tied at the k-th value, so rows
    where such a tie straddles position k are re-selected: all scores above the k-th
    value, then the lowest indices among those equal to it.
    """
    scores = np.asarray(scores)
    if scores.dtype.kind == "f" and np.isnan(scores).any():
        scores = np.where(np.isnan(scores), -np.inf, scores)
    n = scores.shape[-1]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(scores.shape[:-1] + (0,), dtype=np.int64)
    if k < n:
        flat = scores.reshape(-1, n)
        part = np.argpartition(flat, n - k, axis=-1)[:, n - k:]
        vals = np.take_along_axis(flat, part, axis=-1)
        kth = vals.min(axis=-1, keepdims=True)  # the k-th highest score
        straddles = np.flatnonzero((flat == kth).sum(axis=-1) > (vals == kth).sum(axis=-1))
        if len(straddles):
            rows, at = flat[straddles], kth[straddles]
            equal = rows == at
            need = k - (rows > at).sum(axis=-1, keepdims=True)
            pick = (rows > at) | (equal & (np.cumsum(equal, axis=-1) <= need))
            part[straddles] = np.nonzero(pick)[1].reshape(len(straddles), k)
        part = part.reshape(scores.shape[:-1] + (k,))
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    vals = np.take_along_axis(scores, part, axis=-1)
    order = np.lexsort((part, -vals), axis=-1)
    return np.take_along_axis(part, order, axis=-1).astype(np.int64, copy=False)


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
    return get_settings().lowrank  # $TOWEROPS_LOWRANK: auto/on or off; a bad value names the variable
