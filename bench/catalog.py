"""Catalog refresh throughput: items/s embedded for a catalog that grows by 100,000 items, and the
time to publish the refreshed embeddings to PostgreSQL.

Prints one JSON object. The base bundle is a seed-size model ([512, 256, 128] -> 768, one epoch on
a small synthetic dataset: speed does not depend on quality), cached under bench/results/. The new
items are the synthetic generator's (another seed, ids renamed so all of them are new).

    refresh      `ml.inference.catalog.refresh_catalog`: featurise + numpy item tower for the new
                 items, old rows copied bit for bit; items/s over the new items
    baseline     the same items through the feature pipeline and the Keras item tower's `predict`
                 (how `ml.evaluation.catalog.align_catalog` embeds cold items), measured in the same run
    publish      `registry.continuous.publish_embeddings`: binary COPY into versioned tables and the
                 views switched in one transaction, seconds for the whole refreshed catalog
                 (needs PostgreSQL: --dsn or $TOWEROPS_BENCH_PG_DSN, default postgres@127.0.0.1:5432;
                 a scratch database is created and dropped)

    python bench/catalog.py [--new-items 100000 --base-items 2000 --dim 768 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TOWEROPS_LOG_LEVEL", "WARNING")

import numpy as np  # noqa: E402

GOALS = {"refresh_items_per_s": 50_000}


def build_bundle(workdir: Path, items: int, dim: int, seed: int) -> Path:
    """A trained seed-size bundle over `items` items (cached by its parameters)."""
    out = workdir / f"catalog-bundle-{items}x{dim}-s{seed}"
    if (out / "metadata.json").exists():
        return out
    from ml.data.synthetic import generate_synthetic
    from ml.training.trainer import create_standard_trainer

    data = generate_synthetic(n_users=1000, n_items=items, n_interactions=20_000, seed=seed)
    config = {"model": {"user_embedding_dim": dim, "item_embedding_dim": dim, "hidden_units": [512, 256, 128],
                        "dropout_rate": 0.2, "l2_regularization": 0.0001},
              "training": {"batch_size": 1024, "epochs": 1, "patience": 1, "seed": seed}}
    create_standard_trainer(model_dir=out, config=config).train(dataset=data.dataset)
    return out


def new_items(n: int, seed: int):
    from ml.data.synthetic import generate_synthetic

    items = generate_synthetic(n_users=50, n_items=n, n_interactions=200, seed=seed).dataset.items.copy()
    items["item_id"] = [f"new{i:07d}" for i in range(n)]
    return items


def keras_baseline(bundle_dir: Path, items) -> float:
    """Seconds for the feature pipeline + Keras `predict` of the item tower on `items` (OOV id rows)."""
    from ml.bundle.load import load_bundle

    bundle = load_bundle(bundle_dir)
    tower = bundle.load_item_tower()
    t0 = time.perf_counter()
    feats = np.asarray(bundle.pipeline.item_matrix(items), np.float32)
    x = bundle.item_inputs(np.full(len(items), -1, np.int64), item_features=feats)
    tower.predict(x, batch_size=8192, verbose=0)
    return time.perf_counter() - t0


def scratch_db(admin: str) -> str:
    import psycopg2

    name = f"towerops_bench_{uuid.uuid4().hex[:8]}"
    conn = psycopg2.connect(admin)
    conn.autocommit = True
    conn.cursor().execute(f'CREATE DATABASE "{name}"')
    conn.close()
    return admin.rsplit("/", 1)[0] + f"/{name}"


def drop_db(admin: str, dsn: str) -> None:
    import psycopg2

    conn = psycopg2.connect(admin)
    conn.autocommit = True
    conn.cursor().execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-items", type=int, default=100_000)
    parser.add_argument("--base-items", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dsn", default=os.environ.get("TOWEROPS_BENCH_PG_DSN",
                                                      "postgresql://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--no-publish", action="store_true")
    args = parser.parse_args()

    import pandas as pd

    from ml.bundle.load import load_bundle
    from ml.inference.catalog import refresh_catalog

    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    base = build_bundle(results, args.base_items, args.dim, args.seed)
    base_bundle = load_bundle(base)
    import ml.data.synthetic as synth  # the base catalog's own items, so the refresh keeps them

    old = synth.generate_synthetic(n_users=1000, n_items=args.base_items, n_interactions=20_000,
                                   seed=args.seed).dataset.items
    added = new_items(args.new_items, args.seed + 1)
    catalog = pd.concat([old, added], ignore_index=True)
    work = Path(tempfile.mkdtemp(prefix="towerops-bench-catalog-"))
    out: dict = {"new_items": args.new_items, "base_items": len(base_bundle.item_ids), "embedding_dim": args.dim,
                 "hidden_units": [512, 256, 128], "cpu_count": os.cpu_count(), "goals": GOALS}
    try:
        runs, refresh = [], None
        for r in range(args.repeats):
            target = work / f"refresh{r}"
            t0 = time.perf_counter()
            refresh = refresh_catalog(base, catalog, target)
            runs.append({"embedded_s": refresh.embedded_s, "total_s": time.perf_counter() - t0})
            if r < args.repeats - 1:
                shutil.rmtree(target)
        best = min(runs, key=lambda x: x["embedded_s"])
        refreshed = load_bundle(work / f"refresh{args.repeats - 1}")
        rows = refreshed.item_id_rows(base_bundle.item_ids)
        out["refresh"] = {"items_per_s": round(refresh.n_embedded / best["embedded_s"], 1),
                          "embedded_s": round(best["embedded_s"], 3), "total_s": round(best["total_s"], 3),
                          "n_added": refresh.n_added, "n_changed": refresh.n_changed, "n_kept": refresh.n_kept,
                          "old_rows_bit_identical": bool(np.array_equal(refreshed.item_embeddings[rows],
                                                                        base_bundle.item_embeddings))}
        baseline_s = min(keras_baseline(base, added) for _ in range(max(1, args.repeats - 1)))
        out["baseline_keras"] = {"items_per_s": round(len(added) / baseline_s, 1), "seconds": round(baseline_s, 3)}
        out["ratio_vs_keras"] = round(baseline_s / best["embedded_s"], 2)
        out["meets_goal"] = out["refresh"]["items_per_s"] >= GOALS["refresh_items_per_s"]
        if not args.no_publish:
            from registry.continuous import publish_embeddings

            dsn = scratch_db(args.dsn)
            try:
                pub = publish_embeddings(work / f"refresh{args.repeats - 1}", dsn, work / "batch", "bench")
                out["publish"] = {"seconds": round(pub.publish_s, 3), "n_items": pub.n_items,
                                  "n_users": len(refreshed.user_ids), "vector_type": pub.vector_type,
                                  "items_per_s": round(pub.n_items / pub.publish_s, 1)}
            finally:
                drop_db(args.dsn, dsn)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
