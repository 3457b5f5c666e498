"""The model bundle: one folder holding everything serving and deployment need.

    config.json, metadata.json, history.json
    keras/two_tower.keras, keras/user_tower.keras, keras/item_tower.keras
    saved_model/user_tower/, saved_model/item_tower/        (TensorFlow SavedModel, `serve`)
    preprocessing/pipeline.joblib, preprocessing/spec.json   (fitted FeaturePipeline)
    embeddings/item_ids.json, item_embeddings.npy, item_features.npy, item_popularity.npy,
               item_id_table.npy                          (ID stage: catalog rows + OOV row last)
    users/user_ids.json, user_embeddings.npy, seen_indptr.npy, seen_items.npy, seen_labels.npy,
          user_id_table.npy                               (ID stage: user rows + OOV row last)

The Keras towers saved here are the Dense-only cores; their inputs are [content ; ID
vectors] built by `ml.model.inputs` from the two tables (items or users without a training
interaction carry the OOV row). Item embeddings are computed once here so serving scores a
catalog with one matrix product; known users' embeddings likewise, while cold users go
through the user tower from the history in the request. `metadata.json` carries the
embedding health of the exported embeddings (`ml.model.health`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.logs import get_logger
from ml.model.inputs import item_tower_inputs, user_tower_inputs

if TYPE_CHECKING:
    from ml.data.schema import Dataset
    from ml.training.trainer import TwoTowerTrainer

log = get_logger("training")

BUNDLE_FORMAT = 2  # 2: Dense cores over [content ; ID vectors], id tables


def _embed(tower: Any, features: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    if len(features) == 0:
        return np.zeros((0, tower.output_shape[-1]), dtype=np.float32)
    return np.asarray(tower.predict(features, batch_size=batch_size, verbose=0), dtype=np.float32)


def exported_health(model: Any, item_x: np.ndarray, item_emb: np.ndarray, user_x: np.ndarray,
                    user_emb: np.ndarray) -> dict[str, float]:
    """Health of the exported embeddings (a fixed sample of rows), dead units from the towers' cores."""
    from ml.model.health import dense_layers, embedding_health, forward, sample_rows

    items, users = sample_rows(len(item_x)), sample_rows(len(user_x))
    _, item_hidden = forward(item_x[items], dense_layers(model.item_tower))
    _, user_hidden = forward(user_x[users], dense_layers(model.user_tower))
    return embedding_health(item_emb[items], user_emb[users], {**user_hidden, **item_hidden})


def export_bundle(trainer: "TwoTowerTrainer", dataset: "Dataset", fingerprint: dict[str, Any]) -> Path:
    """Write the bundle of a fitted trainer; known-user state uses all interactions."""
    p, pl, model, cfg = trainer.prepared, trainer.pipeline, trainer.model, trainer.config
    out = trainer.model_dir
    t0 = time.time()
    for sub in ("keras", "saved_model", "preprocessing", "embeddings", "users"):
        (out / sub).mkdir(parents=True, exist_ok=True)

    model.save(out / "keras" / "two_tower.keras")
    model.user_tower.save(out / "keras" / "user_tower.keras")
    model.item_tower.save(out / "keras" / "item_tower.keras")
    model.user_tower.export(str(out / "saved_model" / "user_tower"), verbose=False)
    model.item_tower.export(str(out / "saved_model" / "item_tower"), verbose=False)
    pl.save(out / "preprocessing")

    tables = trainer.id_tables()
    item_x = item_tower_inputs(p.item_vectors, tables)
    item_emb = _embed(model.item_tower, item_x)
    np.save(out / "embeddings" / "item_embeddings.npy", item_emb)
    np.save(out / "embeddings" / "item_id_table.npy", tables.item)
    np.save(out / "users" / "user_id_table.npy", tables.user)
    np.save(out / "embeddings" / "item_features.npy", p.item_vectors)
    popularity = np.bincount(p.item_rows[p.labels == 1], minlength=len(p.item_ids)).astype(np.int64)
    np.save(out / "embeddings" / "item_popularity.npy", popularity)
    (out / "embeddings" / "item_ids.json").write_text(json.dumps([str(i) for i in p.item_ids]))

    n_users = len(p.user_ids)
    user_x = user_tower_inputs(pl, p.item_vectors, tables, p.profiles, p.user_rows, p.item_rows, p.labels)
    user_emb = _embed(model.user_tower, user_x)
    np.save(out / "users" / "user_embeddings.npy", user_emb)
    np.save(out / "users" / "profiles.npy", p.profiles)
    order = np.lexsort((p.item_rows, p.user_rows))
    indptr = np.r_[0, np.cumsum(np.bincount(p.user_rows, minlength=n_users))].astype(np.int64)
    np.save(out / "users" / "seen_indptr.npy", indptr)
    np.save(out / "users" / "seen_items.npy", p.item_rows[order].astype(np.int32))
    np.save(out / "users" / "seen_labels.npy", p.labels[order].astype(np.int8))
    (out / "users" / "user_ids.json").write_text(json.dumps([str(u) for u in p.user_ids]))

    metadata = {
        "format": BUNDLE_FORMAT,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "embedding_dim": int(item_emb.shape[1]) if item_emb.ndim == 2 else cfg.embedding_dim,
        "feature_schema": pl.schema(),
        "feature_schema_hash": pl.schema_hash(),
        "item_dim": pl.item_dim,
        "user_dim": pl.user_dim,
        "id_embedding_dim": tables.dim,
        "n_known_items": int(p.item_known.sum()),
        "n_known_users": int(p.user_known.sum()),
        "health": exported_health(model, item_x, item_emb, user_x, user_emb),
        "n_items": int(len(p.item_ids)),
        "n_users": int(n_users),
        "data_fingerprint": fingerprint,
        "best_epoch": trainer.best_epoch,
        "epochs_run": len(next(iter(trainer.history.values()), [])),
        "final_metrics": {k: v[trainer.best_epoch] if trainer.best_epoch is not None and trainer.best_epoch < len(v) else v[-1]
                          for k, v in trainer.history.items() if v},
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2, default=str))
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (out / "history.json").write_text(json.dumps(trainer.history, indent=2))
    log.info("exported model bundle to %s in %.1fs", out, time.time() - t0)
    return out
