"""Evidently 0.7 reports: data drift, embedding drift, prediction drift, data quality,
online quality and serving performance.

Each builder returns a `ReportOutput`: the Evidently snapshot (saved as HTML and JSON,
added to the workspace) plus the few numbers alerts and MLflow need, read back from
the snapshot's metric values so the dashboard and the alerts see the same figures.
Snapshots carry a tag naming the report (`item_drift`, ...) that dashboard panels filter on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.reference import ITEM_CATEGORICAL, ITEM_NUMERIC, USER_NUMERIC, profile_columns


@dataclass
class ReportOutput:
    name: str
    snapshot: Any
    metrics: dict[str, float] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write `<name>.html` and `<name>.json` (plus any tables as CSV)."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"html": out / f"{self.name}.html", "json": out / f"{self.name}.json"}
        self.snapshot.save_html(str(paths["html"]))
        self.snapshot.save_json(str(paths["json"]))
        for key, table in self.tables.items():
            paths[key] = out / f"{self.name}_{key}.csv"
            table.to_csv(paths[key], index=False)
        return paths


def metric_values(snapshot: Any) -> list[dict[str, Any]]:
    """[{type, config, value}] for each metric of a snapshot (type without the evidently prefix)."""
    out = []
    for m in snapshot.dict()["metrics"]:
        cfg = m.get("config", {})
        out.append({"type": str(cfg.get("type", "")).rsplit(":", 1)[-1], "config": cfg, "value": m.get("value")})
    return out


def _find(snapshot: Any, type_: str, **match: Any) -> Any:
    for m in metric_values(snapshot):
        if m["type"] == type_ and all(str(m["config"].get(k)) == str(v) for k, v in match.items()):
            return m["value"]
    raise KeyError(f"metric {type_} {match} not in snapshot")


def _dataset(frame: pd.DataFrame, numerical: list[str], categorical: list[str], embeddings: dict | None = None):
    from evidently import DataDefinition, Dataset

    return Dataset.from_pandas(frame, data_definition=DataDefinition(
        numerical_columns=numerical, categorical_columns=categorical, embeddings=embeddings))


def _run(metrics: list, name: str, current, reference, metadata: dict[str, str] | None = None):
    from evidently import Report

    return Report(metrics, tags=[name], metadata=dict(metadata or {})).run(current, reference, name=name)


def _require_columns(frame: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: current data is missing column(s) {', '.join(missing)} that the reference has "
                         f"(current columns: {', '.join(map(str, frame.columns))})")


# ------------------------------------------------------------------ data drift
def feature_drift_report(name: str, reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str],
                         categorical: list[str], drift: dict[str, Any], metadata: dict[str, str] | None = None) -> ReportOutput:
    """DataDriftPreset over feature columns; metrics `<name>_share` and `<name>_count`."""
    from evidently.presets import DataDriftPreset

    cols = numerical + categorical
    _require_columns(current, cols, name)
    preset = DataDriftPreset(columns=cols, drift_share=float(drift.get("drift_share", 0.5)),
                             num_method=drift.get("num_method"), cat_method=drift.get("cat_method"),
                             num_threshold=drift.get("num_threshold"), cat_threshold=drift.get("cat_threshold"))
    snap = _run([preset], name, _dataset(current[cols], numerical, categorical),
                _dataset(reference[cols], numerical, categorical), metadata)
    value = _find(snap, "DriftedColumnsCount")
    return ReportOutput(name, snap, {f"{name}_share": float(value["share"]), f"{name}_count": float(value["count"])})


def item_drift_report(ref_items: pd.DataFrame, cur_items: pd.DataFrame, drift: dict[str, Any],
                      metadata: dict[str, str] | None = None) -> ReportOutput:
    return feature_drift_report("item_drift", ref_items, cur_items, ITEM_NUMERIC, ITEM_CATEGORICAL, drift, metadata)


def user_drift_report(ref_users: pd.DataFrame, cur_users: pd.DataFrame, drift: dict[str, Any],
                      metadata: dict[str, str] | None = None) -> ReportOutput:
    num, cat = profile_columns(ref_users)
    return feature_drift_report("user_drift", ref_users, cur_users, USER_NUMERIC + num, cat, drift, metadata)


# ------------------------------------------------------------------ embeddings
def embedding_drift_report(ref: dict[str, pd.DataFrame], cur: dict[str, pd.DataFrame], drift: dict[str, Any],
                           metadata: dict[str, str] | None = None, max_rows: int | None = None, seed: int = 0) -> ReportOutput:
    """EmbeddingsDrift per embedding set (`item`, `user`), classifier method after PCA, on at
    most `drift.embedding_sample` rows of each side.

    The score is the ROC AUC of a classifier telling current from reference rows
    (0.5 = indistinguishable); a test on the threshold gives Evidently's pass/fail.
    """
    from evidently.metrics import EmbeddingsDrift
    from evidently.metrics.embeddings import DistanceDriftMethod, ModelDriftMethod
    from evidently.tests import lte

    # Evidently also draws a t-SNE map of the rows for the HTML: the sample size is what costs time.
    max_rows = int(max_rows or drift.get("embedding_sample", 300))
    rng = np.random.default_rng(seed)
    frames_cur, frames_ref, embeddings = [], [], {}
    metrics = []
    threshold = float(drift.get("embedding_threshold", 0.65))
    for kind in ("item", "user"):
        r, c = ref[kind], cur[kind]
        if list(r.columns) != list(c.columns):
            raise ValueError(f"{kind} embeddings: current has {c.shape[1]} dims, the reference {r.shape[1]}; "
                             "the current window must be embedded by the same model as the reference")
        r = r.iloc[np.sort(rng.choice(len(r), min(len(r), max_rows), replace=False))] if len(r) > max_rows else r
        c = c.iloc[np.sort(rng.choice(len(c), min(len(c), max_rows), replace=False))] if len(c) > max_rows else c
        cols = [f"{kind}_{col}" for col in r.columns]
        frames_ref.append(r.set_axis(cols, axis=1).reset_index(drop=True))
        frames_cur.append(c.set_axis(cols, axis=1).reset_index(drop=True))
        embeddings[kind] = cols
        n_comp = min(int(drift.get("pca_components", 20)), len(cols))
        method = (ModelDriftMethod(threshold=threshold, pca_components=n_comp)
                  if drift.get("embedding_method", "model") == "model"
                  else DistanceDriftMethod(pca_components=n_comp))
        metrics.append(EmbeddingsDrift(embeddings_name=kind, drift_method=method, tests=[lte(threshold)]))
    # The two sets have different row counts: pad the shorter with its own rows (sampled) so
    # one frame holds both; each EmbeddingsDrift only reads its own columns.
    def _stack(parts: list[pd.DataFrame]) -> pd.DataFrame:
        n = max(len(p) for p in parts)
        return pd.concat([p.iloc[np.arange(n) % len(p)].reset_index(drop=True) for p in parts], axis=1)

    all_cols = [c for cols in embeddings.values() for c in cols]
    snap = _run(metrics, "embedding_drift", _dataset(_stack(frames_cur), all_cols, [], embeddings),
                _dataset(_stack(frames_ref), all_cols, [], embeddings), metadata)
    return ReportOutput("embedding_drift", snap, {
        f"{k}_embedding_drift": float(_find(snap, "EmbeddingsDrift", embeddings_name=k)) for k in ("item", "user")})


# ------------------------------------------------------------------ predictions
def prediction_drift_report(ref_preds: pd.DataFrame, cur_preds: pd.DataFrame, drift: dict[str, Any],
                            metadata: dict[str, str] | None = None) -> ReportOutput:
    """Drift of top-k scores and of the share of popular items among recommendations."""
    from evidently.metrics import MeanValue, ValueDrift

    _require_columns(cur_preds, ["score", "popular", "rank"], "prediction_drift")
    cols = ["score", "popular", "rank"]
    snap = _run([ValueDrift(column="score"), ValueDrift(column="popular"), MeanValue(column="score"),
                 MeanValue(column="popular")], "prediction_drift",
                _dataset(cur_preds[cols], ["score", "popular", "rank"], []),
                _dataset(ref_preds[cols], ["score", "popular", "rank"], []), metadata)
    cur_pop = float(_find(snap, "MeanValue", column="popular"))
    ref_pop = float(ref_preds["popular"].mean()) if len(ref_preds) else 0.0
    return ReportOutput("prediction_drift", snap, {
        "score_drift": float(_find(snap, "ValueDrift", column="score")),
        "popular_share": cur_pop,
        "popular_share_reference": ref_pop,
        "popular_share_change": cur_pop - ref_pop,
        "score_mean": float(_find(snap, "MeanValue", column="score")),
        "score_mean_reference": float(ref_preds["score"].mean()) if len(ref_preds) else 0.0,
    })


# ------------------------------------------------------------------ data quality
def data_quality_report(ref_items: pd.DataFrame, cur_items: pd.DataFrame, vocab: dict[str, list[str]],
                        metadata: dict[str, str] | None = None) -> ReportOutput:
    """DataSummaryPreset on item features, plus values of genre/maker unseen in training."""
    from evidently.metrics import OutListValueCount
    from evidently.presets import DataSummaryPreset

    cols = ITEM_NUMERIC + ITEM_CATEGORICAL
    _require_columns(cur_items, cols, "data_quality")
    metrics: list = [DataSummaryPreset(columns=cols)]
    metrics += [OutListValueCount(column=c, values=list(vocab.get(c, []))) for c in ITEM_CATEGORICAL]
    snap = _run(metrics, "data_quality", _dataset(cur_items[cols], ITEM_NUMERIC, ITEM_CATEGORICAL),
                _dataset(ref_items[cols], ITEM_NUMERIC, ITEM_CATEGORICAL), metadata)
    out: dict[str, float] = {}
    new_rows = np.zeros(len(cur_items), dtype=bool)
    new_values: dict[str, list[str]] = {}
    for c in ITEM_CATEGORICAL:
        known = set(vocab.get(c, []))
        vals = cur_items[c].dropna().astype(str)
        is_new = cur_items[c].notna() & ~cur_items[c].astype(str).isin(known)
        new_rows |= is_new.to_numpy()
        new_values[c] = sorted(set(vals) - known)
        out[f"new_{c}_values"] = float(len(new_values[c]))
    out["new_category_share"] = float(new_rows.mean()) if len(new_rows) else 0.0
    missing = cur_items[cols].isna().mean()
    out["missing_share_max"] = float(missing.max()) if len(missing) else 0.0
    table = pd.DataFrame([{"column": c, "new_value": v} for c, vs in new_values.items() for v in vs],
                         columns=["column", "new_value"])
    return ReportOutput("data_quality", snap, out, {"new_categories": table})


# ------------------------------------------------------------------ online quality
def online_quality_report(outcomes: pd.DataFrame, expected_top_k: float | None,
                          metadata: dict[str, str] | None = None) -> ReportOutput:
    """Like rate of recommended-and-swiped items against the model's expected like rate.

    `outcomes`: one row per recommended item the user then swiped: liked (0/1), expected
    (calibrated like probability of its score). like_rate_drop = expected - observed.
    """
    from evidently.metrics import MeanValue, RowCount

    _require_columns(outcomes, ["liked", "expected"], "online_quality")
    snap = _run([RowCount(), MeanValue(column="liked"), MeanValue(column="expected")], "online_quality",
                _dataset(outcomes[["liked", "expected"]], ["liked", "expected"], []), None, metadata)
    like_rate = float(_find(snap, "MeanValue", column="liked"))
    expected = float(_find(snap, "MeanValue", column="expected"))
    return ReportOutput("online_quality", snap, {
        "like_rate": like_rate, "expected_like_rate": expected, "like_rate_drop": expected - like_rate,
        "outcomes": float(len(outcomes)),
        **({"expected_like_rate_top_k_reference": float(expected_top_k)} if expected_top_k is not None else {}),
    })


# ------------------------------------------------------------------ performance
def performance_report(log_frame: pd.DataFrame, window: str = "5min",
                       metadata: dict[str, str] | None = None) -> ReportOutput:
    """Latency percentiles over the whole window (Evidently) and per sub-window (table)."""
    from evidently.metrics import MeanValue, QuantileValue, RowCount

    from monitoring.prediction_log import performance_windows

    frame = log_frame[["latency_ms"]].astype(float)
    snap = _run([RowCount(), MeanValue(column="latency_ms")] +
                [QuantileValue(column="latency_ms", quantile=q) for q in (0.5, 0.95, 0.99)],
                "performance", _dataset(frame, ["latency_ms"], []), None, metadata)
    per_window = performance_windows(log_frame, window)
    span = (log_frame["ts"].max() - log_frame["ts"].min()).total_seconds() if len(log_frame) > 1 else 0.0
    return ReportOutput("performance", snap, {
        "requests": float(len(log_frame)),
        "latency_mean_ms": float(_find(snap, "MeanValue", column="latency_ms")),
        "latency_p50_ms": float(_find(snap, "QuantileValue", column="latency_ms", quantile=0.5)),
        "latency_p95_ms": float(_find(snap, "QuantileValue", column="latency_ms", quantile=0.95)),
        "latency_p99_ms": float(_find(snap, "QuantileValue", column="latency_ms", quantile=0.99)),
        "throughput_rps": float(len(log_frame) / span) if span > 0 else float(len(log_frame)),
        "throughput_rps_peak_window": float(per_window["throughput_rps"].max()) if len(per_window) else 0.0,
        "error_share": float((log_frame["status"] != "ok").mean()) if "status" in log_frame and len(log_frame) else 0.0,
    }, {"windows": per_window})
