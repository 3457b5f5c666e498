"""Tower-core inputs in numpy: the one place user (and item) embeddings are fed from a history.

The Dense cores of the towers take [content ; ID vectors] (see `ml.model.towers`). Training
builds the ID part inside the graph; everything else (export of known users, the real-time
engine's cold users, the evaluation protocol, the per-epoch validation ranking, monitoring)
calls `user_tower_inputs` / `item_tower_inputs` here with the exported (or current) tables,
so all of them compute exactly what the trained graph computes.

`IdTables` holds the tables with rows aligned to the catalog (item rows of the bundle) and
to the known users (user rows of the bundle), plus one OOV row last. Items or users that had
no training interaction carry a copy of the OOV row (`with_cold_rows_as_oov`), so looking
up any row is always right; `dim == 0` means a content-only model (no ID part).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ml.preprocessing.features import FeaturePipeline


@dataclass(frozen=True)
class IdTables:
    """Item-id table (n_items + 1, d) and user-id table (n_users + 1, d or 0); the last row is OOV."""

    item: np.ndarray
    user: np.ndarray

    def __post_init__(self) -> None:
        for name, table in (("item", self.item), ("user", self.user)):
            if table.ndim != 2 or len(table) < 1:
                raise ValueError(f"IdTables.{name} has shape {table.shape}; it must be (rows + 1 OOV row, dim)")
        if self.user.shape[1] not in (0, self.item.shape[1]):
            raise ValueError(f"IdTables: item table is {self.item.shape[1]}-d, user table {self.user.shape[1]}-d; "
                             "both come from one model.id_embedding_dim (a user table of width 0: no user-id vector, "
                             "model.user_id_vector=false)")

    @classmethod
    def empty(cls, n_items: int, n_users: int) -> "IdTables":
        """Tables of width 0: a content-only model."""
        return cls(np.zeros((n_items + 1, 0), np.float32), np.zeros((n_users + 1, 0), np.float32))

    @property
    def dim(self) -> int:
        return int(self.item.shape[1])

    @property
    def n_items(self) -> int:
        return len(self.item) - 1

    @property
    def n_users(self) -> int:
        return len(self.user) - 1

    def with_cold_rows_as_oov(self, item_known: np.ndarray | None, user_known: np.ndarray | None) -> "IdTables":
        """Rows of items/users never seen in training replaced by the (learned) OOV row."""
        item, user = np.array(self.item, np.float32), np.array(self.user, np.float32)
        if item_known is not None:
            item[:-1][~np.asarray(item_known, bool)] = item[-1]
        if user_known is not None:
            user[:-1][~np.asarray(user_known, bool)] = user[-1]
        return IdTables(item, user)


def pooled_history(table: np.ndarray, user_rows: np.ndarray, item_rows: np.ndarray, n_users: int) -> np.ndarray:
    """Per user, the mean of `table[item]` over that user's (user_row, item_row) pairs; zeros for none."""
    from scipy.sparse import csr_matrix

    dim = table.shape[1]
    if dim == 0 or len(user_rows) == 0:
        return np.zeros((n_users, dim), np.float32)
    counts = csr_matrix((np.ones(len(user_rows), np.float32), (user_rows, item_rows)), shape=(n_users, len(table)))
    total = np.asarray(counts @ table, dtype=np.float32)
    n = np.bincount(user_rows, minlength=n_users).astype(np.float32)[:, None]
    return total / np.maximum(n, 1.0)


def user_tower_inputs(
    pipeline: "FeaturePipeline",
    item_features: np.ndarray,
    tables: IdTables,
    profiles: np.ndarray,
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    labels: np.ndarray,
    id_rows: np.ndarray | None = None,
    item_id_rows: np.ndarray | None = None,
) -> np.ndarray:
    """User-core inputs of `len(profiles)` users from a history of (user row, item row, label).

    `user_rows` index `profiles` (0..n-1), `item_rows` the rows of `item_features`. `id_rows`
    are the users' rows in `tables.user` (default 0..n-1, i.e. the bundle's users); -1 for a
    user the model does not know (OOV row). `item_id_rows` maps rows of `item_features` to
    rows of `tables.item` when they are not the model's catalog (default: the same rows; -1 =
    unknown item, OOV row). Row layout: [content (pipeline.user_matrix) ; mean liked item-id
    vector ; mean noped item-id vector ; user-id vector (width 0 without one)].
    """
    n_users = len(profiles)
    user_rows = np.asarray(user_rows, np.int64)
    item_rows = np.asarray(item_rows, np.int64)
    labels = np.asarray(labels, np.int64)
    if not len(user_rows) == len(item_rows) == len(labels):
        raise ValueError(f"history arrays differ in length: {len(user_rows)} user rows, {len(item_rows)} item rows, "
                         f"{len(labels)} labels; pass one (user, item, label) per interaction")
    content = pipeline.user_matrix(profiles, item_features, user_rows, item_rows, labels, n_users)
    if tables.dim == 0:
        return content
    if id_rows is None:
        id_rows = np.arange(n_users)
    id_rows = np.asarray(id_rows, np.int64)
    if id_rows.shape != (n_users,):
        raise ValueError(f"id_rows has shape {id_rows.shape}; it needs one user-table row per user, ({n_users},)")
    id_rows = np.where((id_rows < 0) | (id_rows >= tables.n_users), tables.n_users, id_rows)
    item_table = tables.item
    if item_id_rows is not None:
        item_id_rows = np.asarray(item_id_rows, np.int64)
        item_table = item_table[np.where((item_id_rows < 0) | (item_id_rows >= tables.n_items), tables.n_items,
                                         item_id_rows)]
    liked = labels == 1
    parts = [content,
             pooled_history(item_table, user_rows[liked], item_rows[liked], n_users),
             pooled_history(item_table, user_rows[~liked], item_rows[~liked], n_users),
             tables.user[id_rows]]
    return np.concatenate(parts, axis=1).astype(np.float32)


def item_tower_inputs(item_features: np.ndarray, tables: IdTables, id_rows: np.ndarray | None = None) -> np.ndarray:
    """Item-core inputs: [content ; item-id vector]; `id_rows` default 0..n-1, -1 for an unknown item."""
    item_features = np.asarray(item_features, np.float32)
    if tables.dim == 0:
        return item_features
    if id_rows is None:
        id_rows = np.arange(len(item_features))
    id_rows = np.asarray(id_rows, np.int64)
    id_rows = np.where((id_rows < 0) | (id_rows >= tables.n_items), tables.n_items, id_rows)
    return np.concatenate([item_features, tables.item[id_rows]], axis=1).astype(np.float32)


def history_id_matrix(user_rows: np.ndarray, item_rows: np.ndarray, n_users: int, length: int,
                      seed: int = 0) -> np.ndarray:
    """(n_users, length) int32 item rows of each user's history, -1 padded: the ID-stage training input.

    A user with more than `length` interactions gets a random sample of them (fixed for a
    seed), whose mean estimates the mean over the whole history that serving pools.
    """
    if length < 1:
        raise ValueError(f"model.history_length={length} must be >= 1 (item ids pooled per user and label)")
    user_rows = np.asarray(user_rows, np.int64)
    item_rows = np.asarray(item_rows, np.int64)
    out = np.full((n_users, length), -1, np.int32)
    if len(user_rows) == 0:
        return out
    perm = np.random.default_rng(seed).permutation(len(user_rows))
    order = perm[np.argsort(user_rows[perm], kind="stable")]
    users, items = user_rows[order], item_rows[order]
    starts = np.searchsorted(users, np.arange(n_users))
    pos = np.arange(len(users)) - starts[users]
    keep = pos < length
    out[users[keep], pos[keep]] = items[keep]
    return out


def leave_out(history: np.ndarray, item_rows: np.ndarray, applies: np.ndarray) -> np.ndarray:
    """Per example, its user's history ids with the example's own item removed (-1) where `applies`.

    Training on a pool that holds the target item would teach the model to find the item in
    its own input; at serving the candidate has not been swiped yet.
    """
    history = np.array(history, np.int32, copy=True)
    hit = (history == np.asarray(item_rows)[:, None]) & np.asarray(applies, bool)[:, None]
    history[hit] = -1
    return history


def model_tables(model: object, n_items: int, n_users: int, item_known: np.ndarray | None = None,
                 user_known: np.ndarray | None = None) -> IdTables:
    """The ID tables of anything with `id_tables()` (a TwoTowerModel, `ModelBundle.towers()`), cold rows
    set to the OOV row; empty tables for a content-only model."""
    get = getattr(model, "id_tables", None)
    tables = get() if callable(get) else None
    if tables is None or tables.dim == 0:
        return IdTables.empty(n_items, n_users)
    return tables.with_cold_rows_as_oov(item_known, user_known)
