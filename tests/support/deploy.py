"""Helpers for deployment tests: small fake bundles with the layout deployments need, and
fast deployment configs."""

from __future__ import annotations

import json
import os
from pathlib import Path

from registry.deploy.config import DeployConfig
from registry.deploy.storage import RetryPolicy

BUNDLE_FILES = {
    "metadata.json": None, "config.json": 64, "history.json": 32,
    "keras/two_tower.keras": 3000, "keras/user_tower.keras": 2000, "keras/item_tower.keras": 1500,
    "saved_model/user_tower/saved_model.pb": 900, "saved_model/user_tower/variables/variables.index": 100,
    "saved_model/user_tower/variables/variables.data-00000-of-00001": 4000,
    "saved_model/item_tower/saved_model.pb": 800, "saved_model/item_tower/variables/variables.index": 90,
    "saved_model/item_tower/variables/variables.data-00000-of-00001": 3500,
    "preprocessing/pipeline.joblib": 1200, "preprocessing/spec.json": 200,
    "embeddings/item_embeddings.npy": 6000, "embeddings/item_ids.json": 300,
    "tfjs/user_tower/model.json": 400, "tfjs/user_tower/group1-shard1of1.bin": 2500,
    "tfjs/item_tower/model.json": 400, "tfjs/item_tower/group1-shard1of1.bin": 2000,
    "users/user_ids.json": 100, "checkpoints/best.weights.h5": 700,
}
# what a deployment uploads from the bundle above (users/, checkpoints/, history.json stay behind)
DEPLOYED = sorted(k for k in BUNDLE_FILES if not k.startswith(("users/", "checkpoints/")) and k != "history.json")


def make_bundle(path: Path, seed: int = 0, big: int = 0) -> Path:
    """A fake bundle (random bytes; a `tfjs/` export already present). `seed` changes every
    file's content; `big` adds that many bytes to the item embeddings."""
    import random

    rng = random.Random(seed)
    for rel, size in BUNDLE_FILES.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if rel == "metadata.json":
            p.write_text(json.dumps({"format": 1, "embedding_dim": 32, "feature_schema_hash": f"fsh{seed}",
                                     "final_metrics": {"val_loss": 1.5 + seed}}))
        else:
            n = size + (big if rel == "embeddings/item_embeddings.npy" else 0)
            p.write_bytes(rng.randbytes(n) if n < 1 << 20 else os.urandom(n))
    return path


def fast_config(**overrides) -> DeployConfig:
    """Small retries (tests must not sleep long) and the fake bundle's own tfjs folder."""
    retry = overrides.pop("retry", RetryPolicy(attempts=3, backoff_s=0.05, max_backoff_s=0.2))
    cfg = DeployConfig(retry=retry, **overrides)
    cfg.validate()
    return cfg
