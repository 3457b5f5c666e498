"""Benchmark: recommendation quality of towerops against classic collaborative filtering.

On synthetic data whose likes depend on content AND on hidden communities no content reveals
(`ml.data.synthetic`, `collaborative_weight`; 80% of exposures taste-targeted, as a recommender
would show them), in two settings with different mixes, one run:
towerops with the default config, towerops content-only (`model.id_embedding_dim=0`),
most-popular, implicit ALS and EASE, all ranked by the one evaluation protocol on the test part
of the same per-user time split (`ml.evaluation`): NDCG@10, Recall@10, HR@10, coverage@10 and
train time; the default config's embedding health; latent recovery (share of items whose nearest
item shares the hidden community / the topic, for towerops and ALS's item factors); ratios of the default config to the best
collaborative baseline and to the generator's oracle (P(shown) x P(liked), the ceiling of offline
metrics on logged swipes). Prints one JSON object.

    python bench/quality.py                                   # 2,000 x 2,000 x 100,000, mixes 0.5 and 0.8
    python bench/quality.py --users 400 --items 300 --interactions 12000 --epochs 3   # a quick check

Goals (issue 13): default >= the best collaborative baseline in both settings and >= 0.8x the
oracle; no collapse (dead units < 10%, item effective rank >= 64 at the default width).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

METRICS = ("ndcg_at_10", "recall_at_10", "hit_rate_at_10", "coverage_at_10")
COLLABORATIVE = ("als", "ease")
HEALTH_GOALS = {"health_dead_unit_share": ("max", 0.10), "health_item_effective_rank": ("min", 64.0)}


def _finite(value: Any) -> float | None:
    return round(float(value), 4) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a is not None and b not in (None, 0) else None


def _system(metrics: dict[str, float], prefix: str, train_seconds: float | None) -> dict[str, Any]:
    out = {k: _finite(metrics.get(f"{prefix}{k}")) for k in METRICS}
    out["train_seconds"] = None if train_seconds is None else round(train_seconds, 2)
    return out


def _train(dataset: Any, overrides: dict[str, Any], folder: Path) -> tuple[Any, float, int]:
    """Train towerops with the default config plus `overrides`; (bundle, seconds, epochs run)."""
    from ml.bundle.load import load_bundle
    from ml.config import load_config
    from ml.training.trainer import create_standard_trainer

    config = load_config(None, overrides)
    t0 = time.perf_counter()
    trainer = create_standard_trainer(folder, config)
    history = trainer.train(dataset=dataset)
    return load_bundle(folder), time.perf_counter() - t0, len(next(iter(history.values()), []))


def latent_recovery(synth: Any, vectors: dict[str, tuple[Any, Any]]) -> dict[str, Any]:
    """Per system (item ids, item vectors): the share of items whose nearest item by cosine shares the hidden
    home community (what only who-liked-what reveals) and the dominant topic (what content reveals)."""
    from ml.evaluation.metrics import neighbour_agreement

    rows = {str(i): r for r, i in enumerate(synth.dataset.items["item_id"].astype(str))}
    communities = synth.item_communities
    out: dict[str, Any] = {"chance_community": None if communities is None else round(1 / communities.shape[1], 4),
                           "chance_topic": round(1 / synth.item_topics.shape[1], 4)}
    for name, (item_ids, v) in vectors.items():
        order = [rows[str(i)] for i in item_ids]
        topic = synth.item_topics[order].argmax(axis=1)
        out[name] = {"community": None if communities is None else
                     round(neighbour_agreement(v, communities[order].argmax(axis=1)), 4),
                     "topic": round(neighbour_agreement(v, topic), 4)}
    return out


def reference_ranks(synth: Any, als_items: Any) -> dict[str, float | None]:
    """Effective rank of item representations that fit this data by construction, to read the model's against:
    the generator's own hidden item vectors [topic mix ; community membership] (what every like depends on)
    and ALS's item factors."""
    import numpy as np

    from ml.model.health import effective_rank

    hidden = [synth.item_topics] + ([synth.item_communities] if synth.item_communities is not None else [])
    return {"generator_hidden_items": _finite(effective_rank(np.concatenate(hidden, axis=1))),
            "generator_hidden_dims": int(sum(h.shape[1] for h in hidden)),
            "als_items": _finite(effective_rank(als_items))}


def run_setting(weight: float, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """One synthetic setting: data, both towerops configs, the baselines, the oracle, on one test split."""
    from ml.data.synthetic import generate_synthetic
    from ml.evaluation.baselines import als_factors
    from ml.evaluation.evaluate import evaluate_bundle

    synth = generate_synthetic(n_users=args.users, n_items=args.items, n_interactions=args.interactions,
                               seed=args.seed, collaborative_weight=weight, targeted_exposure=args.targeted_exposure)
    common = {"training.seed": args.seed, **({"training.epochs": args.epochs} if args.epochs else {})}
    ks, names = (10,), "ndcg,recall,hit_rate,coverage"
    default, default_s, default_epochs = _train(synth.dataset, common, tmp / f"default-{weight}")
    ev = evaluate_bundle(default, synth.dataset, ks=ks, metrics=names, synthetic=synth, seed=args.seed,
                         baselines=("popular", "random", "als", "ease"))
    content, content_s, content_epochs = _train(synth.dataset, {**common, "model.id_embedding_dim": 0},
                                                tmp / f"content-{weight}")
    ev_content = evaluate_bundle(content, synth.dataset, ks=ks, metrics=names, baselines=(), seed=args.seed)
    als_items = als_factors(ev.split, args.seed)[1]
    latent = latent_recovery(synth, {"towerops_default": (default.item_ids, default.item_embeddings),
                                     "towerops_content_only": (content.item_ids, content.item_embeddings),
                                     "als": (ev.split.item_ids, als_items)})
    m = ev.metrics
    systems = {
        "towerops_default": {**_system(m, "", default_s), "epochs_run": default_epochs},
        "towerops_content_only": {**_system(ev_content.metrics, "", content_s), "epochs_run": content_epochs},
        "popular": _system(m, "popular.", ev.seconds.get("fit.popular")),
        "als": _system(m, "als.", ev.seconds.get("fit.als")),
        "ease": _system(m, "ease.", ev.seconds.get("fit.ease")),
        "random": _system(m, "random.", None),
        "oracle": _system(m, "oracle.", None),
    }
    ran = [b for b in COLLABORATIVE if systems[b]["ndcg_at_10"] is not None]
    best = max(ran, key=lambda b: systems[b]["ndcg_at_10"]) if ran else None
    ratios: dict[str, float | None] = {}
    for key in METRICS[:3]:
        d, c = systems["towerops_default"][key], systems["towerops_content_only"][key]
        ratios[f"default_over_best_collaborative.{key}"] = _ratio(d, systems[best][key]) if best else None
        ratios[f"default_over_oracle.{key}"] = _ratio(d, systems["oracle"][key])
        ratios[f"content_only_over_oracle.{key}"] = _ratio(c, systems["oracle"][key])
        ratios[f"default_over_popular.{key}"] = _ratio(d, systems["popular"][key])
    health = {k: _finite(v) for k, v in m.items() if k.startswith("health_")}
    health["reference_item_effective_rank"] = reference_ranks(synth, als_items)
    return {
        "collaborative_weight": weight,
        "data": {"users": args.users, "items": args.items, "interactions": len(synth.dataset.interactions),
                 "like_rate": round(synth.params["like_rate"], 4), "targeted_exposure": args.targeted_exposure,
                 "seed": args.seed},
        "split": {"part": ev.split.part, "test_split": ev.split.test_split,
                  "validation_split": ev.split.validation_split, **ev.split.counts},
        "systems": systems,
        "best_collaborative": best,
        "ratios": ratios,
        "health_default": health,
        "latent_recovery": latent,
        "skipped_baselines": ev.skipped,
        "goals": {
            "default_ge_best_collaborative": (ratios["default_over_best_collaborative.ndcg_at_10"] or 0) >= 1.0,
            "default_ge_0.8_oracle": (ratios["default_over_oracle.ndcg_at_10"] or 0) >= 0.8,
            "no_collapse": all(health.get(k) is not None and (health[k] <= t if b == "max" else health[k] >= t)
                               for k, (b, t) in HEALTH_GOALS.items()),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--interactions", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=0, help="max epochs (0: the default config's, early stopping)")
    parser.add_argument("--mixes", default="0.5,0.8", help="collaborative_weight of each setting, comma-separated")
    parser.add_argument("--targeted-exposure", type=float, default=0.8,
                        help="share of exposures aimed at tastes (the rest by popularity)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    mixes = [float(w) for w in args.mixes.split(",") if w.strip()]
    if len(mixes) < 1 or any(not 0.0 <= w <= 1.0 for w in mixes):
        parser.error(f"--mixes {args.mixes!r}: give collaborative weights in [0, 1], e.g. 0.5,0.8")

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="towerops-bench-quality-") as tmp:
        settings = [run_setting(w, args, Path(tmp)) for w in mixes]
    print(json.dumps({
        "benchmark": "quality",
        "args": {"users": args.users, "items": args.items, "interactions": args.interactions,
                 "epochs": args.epochs or "config default (early stopping)", "mixes": mixes,
                 "targeted_exposure": args.targeted_exposure, "seed": args.seed},
        "protocol": "test part of the per-user time split (last 10% per user; validation 20% before it for early "
                    "stopping), full ranking over all items, history items excluded, likes only are relevant",
        "settings": settings,
        "all_goals_met": all(all(s["goals"].values()) for s in settings),
        "seconds": round(time.perf_counter() - t0, 1),
    }, allow_nan=False))


if __name__ == "__main__":
    main()
