"""Offline evaluation of a model bundle on the TEST part of the time split, with baselines.

Protocol (`ml.evaluation.protocol`, the same one tuning and the gate use):
- the three-way per-user time split of the bundle's config (`training.validation_split`,
  `training.test_split`): held out = each user's last `test_split` share; early stopping and
  tuning only ever saw the validation part before it;
- the user embedding comes from the history before the test part only (bundle pipeline +
  user tower); the bundle's exported user embeddings are not used;
- items in that history are excluded from the ranking; relevant = held-out likes not in
  it; users with none are left out of the ranking metrics, while AUC uses every held-out
  like and nope.

Baselines on the same split in the same run: most popular, random, implicit ALS and EASE
(`ml.evaluation.baselines`); with synthetic data also the generator's oracle. Every model
metric is reported with its lift over each baseline and over the best one. Segments: cold
users (< 5 history interactions), warm users, and new items (no history interactions:
relevance restricted to them).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ml.evaluation.baselines import BASELINES, baseline_scorers, oracle_scorer, parse_baselines
from ml.evaluation.metrics import metric_key, parse_ks, parse_metrics
from ml.evaluation.protocol import (
    COLD_USER_THRESHOLD,
    SEGMENTS,
    EvalSplit,
    ScoreFn,
    SystemMetrics,
    model_scorer,
    prepare_split,
    rank_system,
    segment_masks,
    summarize,
    system_metrics,
)
from ml.logs import get_logger, metric_text

if TYPE_CHECKING:
    from ml.bundle.load import ModelBundle
    from ml.data.schema import Dataset
    from ml.data.synthetic import SyntheticData

log = get_logger("training")

NOT_BASELINES = ("model", "oracle")


# ---------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """Everything an evaluation produced; `metrics` is the flat dict logged to MLflow (finite values only)."""

    ks: tuple[int, ...]
    metric_names: tuple[str, ...]
    split: EvalSplit
    systems: dict[str, SystemMetrics]
    summaries: dict[str, dict[str, dict[str, float]]]   # system -> segment -> metric -> value
    metrics: dict[str, float]
    seconds: dict[str, float]
    skipped: dict[str, str] = field(default_factory=dict)  # baseline -> why it did not run

    @property
    def user_ids(self) -> np.ndarray:
        return self.split.user_ids

    @property
    def baselines(self) -> list[str]:
        return [s for s in self.summaries if s not in NOT_BASELINES]

    def table(self) -> pd.DataFrame:
        """One row per (segment, metric): each system's value, the lifts over the baselines, the oracle ratio."""
        rows = []
        model = self.summaries.get("model", {})
        for segment in SEGMENTS:
            for key in model.get(segment, {}):
                row: dict[str, Any] = {"segment": segment, "metric": key}
                for name, segs in self.summaries.items():
                    row[name] = segs.get(segment, {}).get(key, np.nan)
                for name, value in lifts(self.summaries, segment, key).items():
                    row[name] = value
                rows.append(row)
        return pd.DataFrame(rows)

    def best_baselines(self) -> dict[str, str]:
        """Metric (segment 'all') -> the baseline with the highest value on it."""
        out = {}
        for key in self.summaries.get("model", {}).get("all", {}):
            best = _best_baseline(self.summaries, "all", key)
            if best is not None:
                out[key] = best[0]
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "ks": list(self.ks), "metrics": list(self.metric_names), "part": self.split.part,
            "validation_split": self.split.validation_split, "test_split": self.split.test_split,
            "counts": self.split.counts, "cold_user_threshold": COLD_USER_THRESHOLD,
            "summaries": _nan_to_none(self.summaries), "flat": self.metrics, "best_baseline": self.best_baselines(),
            "skipped_baselines": dict(self.skipped), "seconds": self.seconds,
        }


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None when either is missing or not finite, or b is 0 (no NaN in what people read)."""
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return float(a / b)


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _best_baseline(summaries: Mapping[str, Mapping[str, Mapping[str, float]]], segment: str,
                   key: str) -> tuple[str, float] | None:
    found = [(name, segs.get(segment, {}).get(key)) for name, segs in summaries.items() if name not in NOT_BASELINES]
    found = [(n, float(v)) for n, v in found if v is not None and math.isfinite(v)]
    return max(found, key=lambda nv: nv[1]) if found else None


def lifts(summaries: Mapping[str, Mapping[str, Mapping[str, float]]], segment: str, key: str) -> dict[str, float]:
    """`lift_over_<baseline>`, `lift_over_best_baseline` and `oracle_ratio` of the model's value (defined ones only)."""
    value = summaries.get("model", {}).get(segment, {}).get(key)
    out: dict[str, float] = {}
    for name, segs in summaries.items():
        if name in NOT_BASELINES:
            continue
        r = _ratio(value, segs.get(segment, {}).get(key))
        if r is not None:
            out[f"lift_over_{name}"] = r
    best = _best_baseline(summaries, segment, key)
    if best is not None and (r := _ratio(value, best[1])) is not None:
        out["lift_over_best_baseline"] = r
    if "oracle" in summaries and (r := _ratio(value, summaries["oracle"].get(segment, {}).get(key))) is not None:
        out["oracle_ratio"] = r
    return out


def flat_metrics(summaries: Mapping[str, Mapping[str, Mapping[str, float]]], counts: Mapping[str, int]) -> dict[str, float]:
    """`ndcg_at_10`, `cold.ndcg_at_10`, `<system>.ndcg_at_10`, `lift_over_<baseline>.ndcg_at_10`,
    `lift_over_best_baseline.ndcg_at_10`, `oracle_ratio.ndcg_at_10`, `eval.<count>`; finite values only."""
    out: dict[str, float] = {}
    for system, segs in summaries.items():
        for segment, values in segs.items():
            for key, value in values.items():
                name = key if segment == "all" else f"{segment}.{key}"
                out[name if system == "model" else f"{system}.{name}"] = value
    for segment, values in summaries.get("model", {}).items():
        for key in values:
            name = key if segment == "all" else f"{segment}.{key}"
            for prefix, value in lifts(summaries, segment, key).items():
                out[f"{prefix}.{name}"] = value
    out.update({f"eval.{k}": float(v) for k, v in counts.items()})
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


def evaluate_bundle(
    bundle: "ModelBundle | str | Path",
    dataset: "Dataset",
    ks: Sequence[int] | str | None = None,
    metrics: Sequence[str] | str | None = None,
    synthetic: "SyntheticData | None" = None,
    baselines: Sequence[str] | str | None = BASELINES,
    validation_split: float | None = None,
    test_split: float | None = None,
    seed: int = 0,
    batch_users: int = 1024,
    part: str = "test",
) -> Evaluation:
    """Evaluate a bundle, the baselines (and the oracle when `synthetic` is given) on the test part."""
    from ml.bundle.load import ModelBundle, load_bundle

    ks = parse_ks(ks)
    names = parse_metrics(metrics)
    wanted = parse_baselines(baselines)
    if not isinstance(bundle, ModelBundle):
        bundle = load_bundle(bundle)
    seconds: dict[str, float] = {}
    t0 = time.time()
    split = prepare_split(bundle, dataset, validation_split, test_split, part)
    seconds["prepare"] = time.time() - t0
    t0 = time.time()
    scorers: dict[str, ScoreFn] = {"model": model_scorer(bundle, dataset, split)}
    seconds["user_tower"] = time.time() - t0
    fitted = baseline_scorers(split, wanted, seed)
    scorers.update(fitted.scorers)
    seconds.update({f"fit.{k}": v for k, v in fitted.fit_seconds.items()})
    if synthetic is not None and (oracle := oracle_scorer(synthetic, split)) is not None:
        scorers["oracle"] = oracle
    systems, summaries = score_systems(scorers, split, ks, names, batch_users, seconds)
    flat = {**flat_metrics(summaries, split.counts), **bundle_health(bundle)}
    key = metric_key("ndcg", ks[0])
    log.info("evaluated %d users (%d ranked) x %d items on the %s: %s %s, %s; %.1fs", len(split.user_ids),
             split.counts["users_ranked"], split.n_items, split.describe(), key,
             metric_text(flat.get(key), why="no held-out user to rank"),
             ", ".join(f"{b} {flat[f'{b}.{key}']:.4f}" for b in fitted.scorers if f"{b}.{key}" in flat),
             sum(seconds.values()))
    return Evaluation(ks=ks, metric_names=names, split=split, systems=systems, summaries=summaries, metrics=flat,
                      seconds=seconds, skipped=fitted.skipped)


def bundle_health(bundle: "ModelBundle") -> dict[str, float]:
    """The embedding-health figures training recorded in the bundle (`health_*`, finite ones), for the gate."""
    health = bundle.metadata.get("health", {}) or {}
    return {str(k): float(v) for k, v in health.items() if str(k).startswith("health_")
            and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def score_systems(scorers: Mapping[str, ScoreFn], split: EvalSplit, ks: Sequence[int], names: Sequence[str],
                  batch_users: int = 1024, seconds: dict[str, float] | None = None
                  ) -> tuple[dict[str, SystemMetrics], dict[str, dict[str, dict[str, float]]]]:
    """Rank every system on the split and summarise it per segment (same users, same top-k)."""
    seconds = seconds if seconds is not None else {}
    masks = segment_masks(split)
    systems: dict[str, SystemMetrics] = {}
    summaries: dict[str, dict[str, dict[str, float]]] = {}
    for name, fn in scorers.items():
        ranking = rank_system(name, fn, split, max(ks), batch_users)
        seconds[f"rank.{name}"] = ranking.seconds
        t0 = time.time()
        sm = system_metrics(ranking, split, ks, names)
        systems[name] = sm
        summaries[name] = {seg: s for seg in SEGMENTS if (s := summarize(sm, split, ks, names, seg, masks))}
        seconds[f"metrics.{name}"] = time.time() - t0
    return systems, summaries


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
                                         "oracle_k", "start", "days", "collaborative_weight", "n_communities",
                                         "targeted_exposure")
                  if k in params}
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
