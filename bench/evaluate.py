"""Benchmark: seconds to evaluate 10,000 users x 5,000 items (goal: under 60 s).

Builds synthetic data and trains a model for one epoch (setup, not timed), then
times `evaluate_bundle` (split, user tower on train histories, model + popular +
random + oracle rankings at K = 10, 50, 100, all metrics and segments). The baseline,
measured in the same run, is the straightforward per-user loop (user tower per user
through `RealtimeInferenceEngine.embed_history`, score, argpartition) on a sample of
users, extrapolated to all users. Prints one JSON object.

    python bench/evaluate.py [--users 10000 --items 5000 --interactions 200000 --dim 768]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def naive_seconds_per_user(model_dir: Path, dataset, sample: int, k: int = 100) -> float:
    """The per-user loop a first implementation would write, timed on `sample` users."""
    import numpy as np

    from ml.evaluation.protocol import prepare_split
    from ml.inference.engine import RealtimeInferenceEngine

    engine = RealtimeInferenceEngine(model_dir)
    split = prepare_split(engine.bundle, dataset)
    engine.embed_history(np.array([0]), np.array([1]))  # warm the tower
    rows = np.arange(min(sample, len(split.user_ids)))
    t0 = time.perf_counter()
    for u in rows:
        seen = split.seen_items[split.seen_indptr[u]:split.seen_indptr[u + 1]]
        # train history labels are not in the split: treat seen as liked (same cost as the real thing)
        emb = engine.embed_history(seen, np.zeros(0, dtype=np.int64))
        scores = engine.bundle.item_embeddings @ emb
        scores[seen] = -np.inf
        top = np.argpartition(-scores, k)[:k]
        top = top[np.argsort(-scores[top])]
        rel = set(split.rel_items[split.rel_indptr[u]:split.rel_indptr[u + 1]].tolist())
        hits = [i in rel for i in top.tolist()]
        _ = sum(h / np.log2(r + 2) for r, h in enumerate(hits[:10]))
    return (time.perf_counter() - t0) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10000)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--interactions", type=int, default=200000)
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension (the seed's default is 768)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--sample", type=int, default=300, help="users timed in the per-user baseline")
    args = parser.parse_args()

    from ml.data.synthetic import generate_synthetic
    from ml.evaluation.evaluate import evaluate_bundle
    from ml.training.trainer import create_standard_trainer

    t0 = time.perf_counter()
    synth = generate_synthetic(n_users=args.users, n_items=args.items, n_interactions=args.interactions, seed=0)
    config = {"model": {"user_embedding_dim": args.dim, "item_embedding_dim": args.dim},
              "training": {"epochs": args.epochs, "batch_size": 512, "seed": 0}}
    with tempfile.TemporaryDirectory(prefix="towerops-bench-eval-") as tmp:
        model_dir = Path(tmp) / "model"
        create_standard_trainer(model_dir, config).train(dataset=synth.dataset)
        setup = time.perf_counter() - t0

        t0 = time.perf_counter()
        ev = evaluate_bundle(model_dir, synth.dataset, ks=(10, 50, 100), synthetic=synth)
        seconds = time.perf_counter() - t0

        per_user = naive_seconds_per_user(model_dir, synth.dataset, args.sample)
    n_eval = len(ev.split.user_ids)
    naive_total = per_user * n_eval
    m = ev.metrics
    print(json.dumps({
        "benchmark": "evaluate",
        "users": args.users, "items": args.items, "interactions": args.interactions, "embedding_dim": args.dim,
        "users_evaluated": n_eval, "users_ranked": ev.split.counts["users_ranked"],
        "systems": sorted(ev.systems), "ks": list(ev.ks),
        "evaluate_seconds": round(seconds, 2),
        "breakdown_seconds": {k: round(v, 2) for k, v in ev.seconds.items()},
        "goal_seconds": 60, "goal_ratio": round(seconds / 60.0, 3), "within_goal": seconds < 60,
        "baseline": f"per-user loop (user tower per user + argpartition), {args.sample} users, extrapolated",
        "baseline_seconds": round(naive_total, 2),
        "speedup_vs_baseline": round(naive_total / seconds, 1),
        "ndcg_at_10": round(m["ndcg_at_10"], 4), "popular.ndcg_at_10": round(m["popular.ndcg_at_10"], 4),
        "oracle_ratio.ndcg_at_10": round(m.get("oracle_ratio.ndcg_at_10", float("nan")), 4),
        "setup_seconds": round(setup, 1),
    }))


if __name__ == "__main__":
    main()
