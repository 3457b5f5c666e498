"""Offline evaluation of a model bundle on the time-split held-out data.

Protocol (the same split as training, so the numbers mean "how well does the model
predict what users did next"):
- held-out = each user's last `training.validation_split` share of interactions by
  time (`ml.data.split.time_split_per_user`, split from the bundle's config.json);
- the user embedding comes from the TRAIN part of the history only (bundle pipeline +
  user tower); the bundle's exported user embeddings are not used, they saw the
  held-out interactions;
- items the user swiped in the train part are excluded from the ranking;
- relevant = held-out likes (not already swiped in train); users with none are left
  out of the ranking metrics, while AUC uses every held-out like and nope.

Baselines on the same split: most popular (train likes) and random; with synthetic
data also the generator's oracle (true like probability). Segments: cold users
(< 5 train interactions), warm users, and new items (no train interactions:
relevance restricted to them).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ml.evaluation.metrics import (
    metric_key,
    parse_ks,
    parse_metrics,
)
from ml.logs import get_logger

if TYPE_CHECKING:
    from ml.bundle.load import ModelBundle
    from ml.data.schema import Dataset
    from ml.data.synthetic import SyntheticData
from ml.evaluation.protocol import (
    BASELINES,
    COLD_USER_THRESHOLD,
    SEGMENTS,
    EvalSplit,
    ScoreFn,
    SystemMetrics,
    model_scorer,
    oracle_scorer,
    popularity_scorer,
    prepare_split,
    random_scorer,
    rank_system,
    segment_masks,
    summarize,
    system_metrics,
)

log = get_logger("training")

# ---------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """Everything an evaluation produced; `metrics` is the flat dict logged to MLflow."""

    ks: tuple[int, ...]
    metric_names: tuple[str, ...]
    split: EvalSplit
    systems: dict[str, SystemMetrics]
    summaries: dict[str, dict[str, dict[str, float]]]   # system -> segment -> metric -> value
    metrics: dict[str, float]
    seconds: dict[str, float]

    @property
    def user_ids(self) -> np.ndarray:
        return self.split.user_ids

    def table(self) -> pd.DataFrame:
        """One row per (segment, metric): each system's value, lift over the baselines, oracle ratio."""
        rows = []
        model = self.summaries.get("model", {})
        for segment in SEGMENTS:
            for key in model.get(segment, {}):
                row: dict[str, Any] = {"segment": segment, "metric": key}
                for name, segs in self.summaries.items():
                    row[name] = segs.get(segment, {}).get(key, np.nan)
                for base, col in (("popular", "lift_popular"), ("random", "lift_random"), ("oracle", "oracle_ratio")):
                    if base in self.summaries:
                        row[col] = _ratio(row["model"], row.get(base, np.nan))
                rows.append(row)
        return pd.DataFrame(rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "ks": list(self.ks), "metrics": list(self.metric_names),
            "validation_split": self.split.validation_split, "counts": self.split.counts,
            "cold_user_threshold": COLD_USER_THRESHOLD,
            "summaries": _nan_to_none(self.summaries), "flat": _nan_to_none(self.metrics),
            "seconds": self.seconds,
        }


def _ratio(a: float, b: float) -> float:
    if not (np.isfinite(a) and np.isfinite(b)) or b == 0:
        return float("nan")
    return float(a / b)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def flat_metrics(summaries: Mapping[str, Mapping[str, Mapping[str, float]]], counts: Mapping[str, int]) -> dict[str, float]:
    """`ndcg_at_10`, `cold.ndcg_at_10`, `popular.ndcg_at_10`, `lift.ndcg_at_10` (model / popular),
    `lift_random.*`, `oracle.*`, `oracle_ratio.*` (model / oracle), `eval.<count>`."""
    out: dict[str, float] = {}
    for system, segs in summaries.items():
        for segment, values in segs.items():
            for key, value in values.items():
                name = key if segment == "all" else f"{segment}.{key}"
                out[name if system == "model" else f"{system}.{name}"] = value
    model = summaries.get("model", {})
    for base, prefix in (("popular", "lift"), ("random", "lift_random"), ("oracle", "oracle_ratio")):
        if base not in summaries:
            continue
        for segment, values in model.items():
            for key, value in values.items():
                name = key if segment == "all" else f"{segment}.{key}"
                out[f"{prefix}.{name}"] = _ratio(value, summaries[base].get(segment, {}).get(key, np.nan))
    out.update({f"eval.{k}": float(v) for k, v in counts.items()})
    return out


def evaluate_bundle(
    bundle: "ModelBundle | str | Path",
    dataset: "Dataset",
    ks: Sequence[int] | str | None = None,
    metrics: Sequence[str] | str | None = None,
    synthetic: "SyntheticData | None" = None,
    baselines: Sequence[str] = BASELINES,
    validation_split: float | None = None,
    seed: int = 0,
    batch_users: int = 1024,
) -> Evaluation:
    """Evaluate a bundle (and baselines, and the oracle when `synthetic` is given) on held-out data."""
    from ml.bundle.load import ModelBundle, load_bundle

    ks = parse_ks(ks)
    names = parse_metrics(metrics)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}: choose from {list(BASELINES)}")
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    seconds: dict[str, float] = {}
    t0 = time.time()
    split = prepare_split(bundle, dataset, validation_split)
    seconds["prepare"] = time.time() - t0
    scorers: dict[str, ScoreFn] = {}
    t0 = time.time()
    scorers["model"] = model_scorer(bundle, split)
    seconds["user_tower"] = time.time() - t0
    if "popular" in baselines:
        scorers["popular"] = popularity_scorer(split)
    if "random" in baselines:
        scorers["random"] = random_scorer(split, seed)
    if synthetic is not None:
        oracle = oracle_scorer(synthetic, split)
        if oracle is not None:
            scorers["oracle"] = oracle
    k_max = max(ks)
    masks = segment_masks(split)
    systems: dict[str, SystemMetrics] = {}
    summaries: dict[str, dict[str, dict[str, float]]] = {}
    for name, fn in scorers.items():
        ranking = rank_system(name, fn, split, k_max, batch_users)
        seconds[f"rank.{name}"] = ranking.seconds
        t0 = time.time()
        sm = system_metrics(ranking, split, ks, names)
        systems[name] = sm
        summaries[name] = {seg: s for seg in SEGMENTS if (s := summarize(sm, split, ks, names, seg, masks))}
        seconds[f"metrics.{name}"] = time.time() - t0
    flat = flat_metrics(summaries, split.counts)
    log.info("evaluated %d users (%d ranked) x %d items: ndcg@%d model %.4f, popular %.4f; %.1fs", len(split.user_ids),
             split.counts["users_ranked"], split.n_items, ks[0], flat.get(metric_key("ndcg", ks[0]), float("nan")),
             flat.get(f"popular.{metric_key('ndcg', ks[0])}", float("nan")), sum(seconds.values()))
    return Evaluation(ks=ks, metric_names=names, split=split, systems=systems, summaries=summaries, metrics=flat,
                      seconds=seconds)


# ---------------------------------------------------------------- oracle from a folder
def synthetic_from_folder(folder: str | Path, dataset: "Dataset") -> "SyntheticData | None":
    """Regenerate the synthetic data behind `folder/generator.json` (deterministic for its seed)
    and return it if its interactions are exactly `dataset`'s; None otherwise.

    The oracle's true like probabilities are not stored with the data, but the
    generator is deterministic, so its parameters suffice.
    """
    from ml.data.synthetic import generate_synthetic

    path = Path(folder) / "generator.json"
    if not path.is_file():
        return None
    try:
        params = json.loads(path.read_text())
        kwargs = {k: params[k] for k in ("n_users", "n_items", "n_interactions", "seed", "n_topics", "shift",
                                         "oracle_k", "start", "days") if k in params}
        if int(params.get("n_interactions_generated", -1)) != len(dataset.interactions):
            log.info("oracle skipped: %s describes %s interactions, the data has %d", path,
                     params.get("n_interactions_generated"), len(dataset.interactions))
            return None
        synthetic = generate_synthetic(**kwargs)
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        log.warning("oracle skipped: cannot regenerate from %s: %s", path, exc)
        return None
    if not same_interactions(synthetic.dataset.interactions, dataset.interactions):
        log.warning("oracle skipped: the data in %s differs from what %s generates", folder, path)
        return None
    return synthetic


def same_interactions(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Same multiset of (user_id, item_id, label) rows."""
    if len(a) != len(b):
        return False

    def key(frame: pd.DataFrame) -> np.ndarray:
        s = frame["user_id"].astype(str) + "\x1f" + frame["item_id"].astype(str) + "\x1f" + frame["label"].astype(int).astype(str)
        return np.sort(s.to_numpy().astype(str))

    return bool(np.array_equal(key(a), key(b)))
