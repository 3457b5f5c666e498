"""Reading a model bundle folder back: towers, preprocessing, embeddings and metadata."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ml.preprocessing.features import FeaturePipeline

@dataclass
class ModelBundle:
    """A loaded bundle; the user tower is loaded on first use (cold users only)."""

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
    _user_tower: Any = None

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
    )
