"""Training: time split per user, feature fitting, Keras fit with early stopping and
best-weights checkpoints, then export of the model bundle.

`create_standard_trainer(model_dir, config).train(user_features=..., item_features=...,
interactions=...)` is the seed's API; `ml.tracking.train_run` wraps it in an MLflow run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ml.config import TowerOpsConfig, config_from_dict
from ml.data.schema import Dataset
from ml.logs import get_logger

log = get_logger("training")


@dataclass
class TimeSplit:
    """Row masks over `dataset.interactions`: each user's last interactions are validation."""

    train: np.ndarray
    valid: np.ndarray


def time_split_per_user(interactions: pd.DataFrame, validation_split: float) -> TimeSplit:
    """Hold out the latest `validation_split` share of each user's interactions.

    Splitting per user by time means nothing a user did later is used to predict what
    they did earlier; users with too few interactions stay wholly in training.
    """
    n = len(interactions)
    if validation_split <= 0 or n == 0:
        return TimeSplit(np.ones(n, dtype=bool), np.zeros(n, dtype=bool))
    order = np.lexsort((np.arange(n), interactions["timestamp"].to_numpy(), interactions["user_id"].to_numpy()))
    users_sorted = interactions["user_id"].to_numpy()[order]
    # position of each row within its user's time-ordered history
    starts = np.r_[0, np.flatnonzero(users_sorted[1:] != users_sorted[:-1]) + 1]
    lengths = np.diff(np.r_[starts, n])
    pos = np.arange(n) - np.repeat(starts, lengths)
    size = np.repeat(lengths, lengths)
    n_val = np.floor(size * validation_split).astype(int)
    is_val_sorted = pos >= size - n_val
    valid = np.zeros(n, dtype=bool)
    valid[order] = is_val_sorted
    return TimeSplit(~valid, valid)


@dataclass
class PreparedData:
    """Everything the fit and the export need, computed once."""

    item_ids: np.ndarray
    user_ids: np.ndarray
    item_vectors: np.ndarray
    profiles: np.ndarray
    user_rows: np.ndarray
    item_rows: np.ndarray
    labels: np.ndarray
    split: TimeSplit


class EpochProgress:
    """Keras callback: one line per epoch on the terminal and in logs/training.log."""

    def __new__(cls, total_epochs: int):
        import keras

        class _Progress(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self._t0 = time.time()

            def on_epoch_begin(self, epoch, logs=None):
                self._te = time.time()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(logs.items()) if isinstance(v, (int, float)))
                log.info("epoch %d/%d (%.1fs) %s", epoch + 1, total_epochs, time.time() - self._te, shown)

        return _Progress()


class TwoTowerTrainer:
    """Fits the feature pipeline and the two-tower model and writes the model bundle."""

    def __init__(self, model_dir: str | Path, config: TowerOpsConfig | Mapping[str, Any] | None = None,
                 callbacks: Sequence[Any] = ()) -> None:
        self.model_dir = Path(model_dir)
        self.config = config if isinstance(config, TowerOpsConfig) else config_from_dict(config or {})
        self.callbacks = list(callbacks)
        self.model = None
        self.pipeline = None
        self.prepared: PreparedData | None = None
        self.history: dict[str, list[float]] = {}
        self.best_epoch: int | None = None

    # ------------------------------------------------------------------ data
    def prepare(self, dataset: Dataset) -> PreparedData:
        from ml.features import FeaturePipeline

        cfg = self.config
        self.pipeline = FeaturePipeline(config=cfg.features, seed=cfg.training.seed).fit(dataset.items, dataset.users)
        item_ids = dataset.items["item_id"].to_numpy()
        user_ids = dataset.users["user_id"].to_numpy()
        item_index = pd.Index(item_ids)
        user_index = pd.Index(user_ids)
        inter = dataset.interactions
        prepared = PreparedData(
            item_ids=item_ids,
            user_ids=user_ids,
            item_vectors=self.pipeline.item_matrix(dataset.items),
            profiles=self.pipeline.profile_matrix(dataset.users),
            user_rows=user_index.get_indexer(inter["user_id"]).astype(np.int64),
            item_rows=item_index.get_indexer(inter["item_id"]).astype(np.int64),
            labels=inter["label"].to_numpy().astype(np.int64),
            split=time_split_per_user(inter, cfg.training.validation_split),
        )
        if (prepared.user_rows < 0).any() or (prepared.item_rows < 0).any():
            raise ValueError("interactions reference users or items missing from their tables; run validate_dataset first")
        n_train_likes = int(prepared.labels[prepared.split.train].sum())
        if n_train_likes == 0:
            raise ValueError(
                "the training split holds no likes (decision='like' or rating >= 0.5): the in-batch softmax "
                "has no positives to learn from; check the interactions' decision/rating column"
            )
        self.prepared = prepared
        log.info(
            "prepared features: %d users, %d items, %d train / %d validation interactions, item_dim=%d user_dim=%d",
            len(user_ids), len(item_ids), int(prepared.split.train.sum()), int(prepared.split.valid.sum()),
            self.pipeline.item_dim, self.pipeline.user_dim,
        )
        return prepared

    def training_arrays(self, p: PreparedData) -> tuple[dict, np.ndarray, tuple[dict, np.ndarray] | None]:
        pl = self.pipeline
        tr, va = p.split.train, p.split.valid
        n_users = len(p.user_ids)
        x_train = {
            "user_features": pl.leave_one_out_user_matrix(p.profiles, p.item_vectors, p.user_rows[tr], p.item_rows[tr],
                                                           p.labels[tr], n_users),
            "item_features": p.item_vectors[p.item_rows[tr]],
            "user_index": p.user_rows[tr],
            "item_index": p.item_rows[tr],
        }
        y_train = p.labels[tr].astype(np.float32)
        valid = None
        if va.any():
            history_users = pl.user_matrix(p.profiles, p.item_vectors, p.user_rows[tr], p.item_rows[tr], p.labels[tr], n_users)
            x_val = {
                "user_features": history_users[p.user_rows[va]],
                "item_features": p.item_vectors[p.item_rows[va]],
                "user_index": p.user_rows[va],
                "item_index": p.item_rows[va],
            }
            valid = (x_val, p.labels[va].astype(np.float32))
        return x_train, y_train, valid

    # ----------------------------------------------------------------- train
    def build_model(self):
        import keras

        from ml.model import TwoTowerModel

        cfg = self.config
        keras.utils.set_random_seed(cfg.training.seed)
        model = TwoTowerModel.from_config_object(cfg.model, self.pipeline.user_dim, self.pipeline.item_dim,
                                                 bce_weight=cfg.training.bce_weight)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=cfg.training.learning_rate),
                      jit_compile=cfg.training.jit_compile)
        return model

    def fit(self, x_train: dict, y_train: np.ndarray, valid: tuple[dict, np.ndarray] | None) -> dict[str, list[float]]:
        import keras

        cfg = self.config.training
        self.model = self.build_model()
        monitor = "val_loss" if valid is not None else "loss"
        ckpt_dir = self.model_dir / "checkpoints"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        callbacks = [
            keras.callbacks.EarlyStopping(monitor=monitor, patience=cfg.patience, restore_best_weights=True,
                                          verbose=0),
            keras.callbacks.ModelCheckpoint(str(ckpt_dir / "best.weights.h5"), monitor=monitor,
                                            save_best_only=True, save_weights_only=True),
            EpochProgress(cfg.epochs),
            *self.callbacks,
        ]
        batch_size = min(cfg.batch_size, len(y_train))
        log.info("training %d epochs max, batch %d, %d examples", cfg.epochs, batch_size, len(y_train))
        hist = self.model.fit(x_train, y_train, batch_size=batch_size, epochs=cfg.epochs, validation_data=valid,
                              shuffle=True, verbose=0, callbacks=callbacks)
        self.history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
        series = self.history.get(monitor, [])
        self.best_epoch = int(np.argmin(series)) if series else None
        return self.history

    def train(
        self,
        user_features: pd.DataFrame | None = None,
        item_features: pd.DataFrame | None = None,
        interactions: pd.DataFrame | None = None,
        dataset: Dataset | None = None,
        data_fingerprint: Mapping[str, Any] | None = None,
    ) -> dict[str, list[float]]:
        """Validate the data, fit, and write the model bundle to `model_dir`. Returns the Keras history."""
        from ml.data.fingerprint import dataset_fingerprint
        from ml.data.validation import validate_dataset
        from ml.export import export_bundle

        if dataset is None:
            if user_features is None or item_features is None or interactions is None:
                raise ValueError("pass user_features, item_features and interactions DataFrames, or dataset=")
            dataset = validate_dataset(user_features, item_features, interactions,
                                       {"users": "user_features", "items": "item_features", "interactions": "interactions"})
        prepared = self.prepare(dataset)
        x_train, y_train, valid = self.training_arrays(prepared)
        history = self.fit(x_train, y_train, valid)
        export_bundle(self, dataset, fingerprint=dict(data_fingerprint or dataset_fingerprint(dataset)))
        return history


def create_standard_trainer(model_dir: str | Path = "models/two_tower",
                            config: TowerOpsConfig | Mapping[str, Any] | None = None,
                            callbacks: Sequence[Any] = ()) -> TwoTowerTrainer:
    """The seed's entry point: a trainer with the standard architecture and the given overrides."""
    return TwoTowerTrainer(model_dir=model_dir, config=config, callbacks=callbacks)


def steps_per_epoch(n_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(n_examples / batch_size))
