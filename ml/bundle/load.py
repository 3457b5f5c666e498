"""Reading a model bundle folder back: towers, preprocessing, embeddings and metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.model.inputs import IdTables, item_tower_inputs, user_tower_inputs

if TYPE_CHECKING:
    from ml.preprocessing.features import FeaturePipeline


@dataclass
class ModelBundle:
    """A loaded bundle; the user tower is loaded on first use (cold users only).

    `id_tables` are the ID stage's tables (width 0 for a content-only model or a bundle
    written before the ID stage); `user_inputs` / `item_inputs` build the tower cores' inputs
    from them, the one way every consumer embeds users from a history.
    """

    path: Path
    metadata: dict
    config: dict
    pipeline: "FeaturePipeline"
    item_ids: list[str]
    item_embeddings: np.ndarray
    item_features: np.ndarray
    item_popularity: np.ndarray
    user_ids: list[str]
    user_embeddings: np.ndarray
    profiles: np.ndarray
    seen_indptr: np.ndarray
    seen_items: np.ndarray
    seen_labels: np.ndarray
    item_index: dict[str, int] = field(default_factory=dict)
    user_index: dict[str, int] = field(default_factory=dict)
    id_tables: IdTables | None = None
    _user_tower: Any = None

    def __post_init__(self) -> None:
        if self.id_tables is None:
            self.id_tables = IdTables.empty(len(self.item_ids), len(self.user_ids))

    def user_id_rows(self, user_ids: Any) -> np.ndarray:
        """Bundle user rows of `user_ids`; -1 (the OOV row) for users the model does not know."""
        index = self.user_index
        return np.fromiter((index.get(str(u), -1) for u in user_ids), dtype=np.int64, count=len(user_ids))

    def item_id_rows(self, item_ids: Any) -> np.ndarray:
        """Catalog rows of `item_ids`; -1 (the OOV row) for items the model does not know."""
        index = self.item_index
        return np.fromiter((index.get(str(i), -1) for i in item_ids), dtype=np.int64, count=len(item_ids))

    def user_inputs(self, profiles: np.ndarray, user_rows: np.ndarray, item_rows: np.ndarray, labels: np.ndarray,
                    id_rows: np.ndarray | None = None, item_features: np.ndarray | None = None,
                    item_id_rows: np.ndarray | None = None) -> np.ndarray:
        """User-tower inputs of `len(profiles)` users from a history of (user row into profiles, catalog row, label).

        `id_rows`: the users' bundle rows (`user_id_rows`), -1 for unknown users; default: the
        profiles are the bundle's users in order. For items other than the catalog pass their
        `item_features` and their catalog rows `item_id_rows` (`item_id_rows(ids)`, -1 unknown).
        See `ml.model.inputs.user_tower_inputs`.
        """
        feats = np.asarray(self.item_features if item_features is None else item_features, np.float32)
        return user_tower_inputs(self.pipeline, feats, self.id_tables, profiles, user_rows, item_rows, labels, id_rows,
                                 item_id_rows)

    def item_inputs(self, rows: np.ndarray | None = None, item_features: np.ndarray | None = None) -> np.ndarray:
        """Item-tower inputs of catalog rows (default: the whole catalog), or of other items given by their
        `item_features` and catalog rows `rows` (-1 for items the model does not know)."""
        if item_features is not None:
            return item_tower_inputs(item_features, self.id_tables, rows)
        feats = np.asarray(self.item_features, np.float32)
        if rows is None:
            return item_tower_inputs(feats, self.id_tables)
        rows = np.asarray(rows, np.int64)
        return item_tower_inputs(feats[rows], self.id_tables, rows)

    def towers(self) -> Any:
        """(user_tower, item_tower, id_tables()) as one object, what the validation ranking scores."""
        import types

        tables = self.id_tables
        return types.SimpleNamespace(user_tower=self.user_tower, item_tower=self.load_item_tower(),
                                     id_tables=lambda: tables)

    @property
    def embedding_dim(self) -> int:
        return int(self.item_embeddings.shape[1])

    @property
    def user_tower(self):
        if self._user_tower is None:
            import keras

            self._user_tower = keras.saving.load_model(self.path / "keras" / "user_tower.keras", compile=False)
        return self._user_tower

    def load_item_tower(self):
        import keras

        return keras.saving.load_model(self.path / "keras" / "item_tower.keras", compile=False)

    def history(self, user_row: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.seen_indptr[user_row], self.seen_indptr[user_row + 1]
        return self.seen_items[lo:hi], self.seen_labels[lo:hi]


REQUIRED_FILES = (
    "metadata.json", "config.json", "keras/user_tower.keras", "preprocessing/pipeline.joblib",
    "embeddings/item_ids.json", "embeddings/item_embeddings.npy", "users/user_ids.json",
)


def load_bundle(path: str | Path, mmap: bool = False) -> ModelBundle:
    """Load a bundle written by `export_bundle`; a missing file is named in the error."""
    from ml.preprocessing.features import FeaturePipeline

    root = Path(path)
    missing = [f for f in REQUIRED_FILES if not (root / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"{root} is not a towerops model bundle: missing {', '.join(missing)}. "
            "Pass the model_dir written by training (or the 'model_dir' artifact of a training run)."
        )
    mode = "r" if mmap else None
    item_ids = json.loads((root / "embeddings" / "item_ids.json").read_text())
    user_ids = json.loads((root / "users" / "user_ids.json").read_text())
    tables = None
    if (root / "embeddings" / "item_id_table.npy").is_file() and (root / "users" / "user_id_table.npy").is_file():
        tables = IdTables(np.load(root / "embeddings" / "item_id_table.npy"), np.load(root / "users" / "user_id_table.npy"))
        if tables.n_items != len(item_ids) or tables.n_users != len(user_ids):
            raise ValueError(f"{root}: id tables hold {tables.n_items} items / {tables.n_users} users + OOV but the "
                             f"bundle lists {len(item_ids)} items / {len(user_ids)} users; the bundle is corrupt, "
                             "export it again from training")
    return ModelBundle(
        path=root,
        metadata=json.loads((root / "metadata.json").read_text()),
        config=json.loads((root / "config.json").read_text()),
        pipeline=FeaturePipeline.load(root / "preprocessing"),
        item_ids=item_ids,
        item_embeddings=np.load(root / "embeddings" / "item_embeddings.npy", mmap_mode=mode),
        item_features=np.load(root / "embeddings" / "item_features.npy", mmap_mode=mode),
        item_popularity=np.load(root / "embeddings" / "item_popularity.npy"),
        user_ids=user_ids,
        user_embeddings=np.load(root / "users" / "user_embeddings.npy", mmap_mode=mode),
        profiles=np.load(root / "users" / "profiles.npy"),
        seen_indptr=np.load(root / "users" / "seen_indptr.npy"),
        seen_items=np.load(root / "users" / "seen_items.npy"),
        seen_labels=np.load(root / "users" / "seen_labels.npy"),
        item_index={iid: i for i, iid in enumerate(item_ids)},
        user_index={uid: i for i, uid in enumerate(user_ids)},
        id_tables=tables,
    )
