"""Files describing an evaluation: metrics.json, a table (CSV, HTML) and plots (PNG).

Kept apart from MLflow so the same files can be written locally or logged to a run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ml.evaluation.evaluate import Evaluation
from ml.evaluation.metrics import RANKING_METRICS, metric_key
from ml.evaluation.protocol import SEGMENTS

SYSTEM_COLOURS = {"model": "#1d3557", "popular": "#e76f51", "random": "#adb5bd", "als": "#f4a261", "ease": "#8d6a9f",
                  "oracle": "#2a9d8f"}


def write_evaluation_outputs(evaluation: Evaluation, folder: str | Path) -> dict[str, Path]:
    """metrics.json, metrics_table.csv/.html, metrics_by_k.png, segments.png in `folder`."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "metrics.json", "csv": out / "metrics_table.csv", "html": out / "metrics_table.html",
             "by_k": out / "metrics_by_k.png", "segments": out / "segments.png"}
    paths["json"].write_text(json.dumps(evaluation.to_json(), indent=2, allow_nan=False), encoding="utf-8")
    table = evaluation.table()
    table.to_csv(paths["csv"], index=False)
    paths["html"].write_text(_html(table, evaluation), encoding="utf-8")
    plot_by_k(evaluation, paths["by_k"])
    plot_segments(evaluation, paths["segments"])
    return paths


def _html(table: pd.DataFrame, evaluation: Evaluation) -> str:
    counts = ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in evaluation.split.counts.items())
    body = table.style.format(precision=4, na_rep="-").hide(axis="index").to_html()
    skipped = "".join(f"<p>{name} skipped: {why}</p>" for name, why in evaluation.skipped.items())
    return ("<!doctype html><html><head><meta charset='utf-8'><title>towerops evaluation</title>"
            "<style>body{font-family:sans-serif} td,th{padding:2px 8px;font-size:13px}</style></head><body>"
            f"<h2>Offline evaluation on the {evaluation.split.describe()}</h2><p>{counts}</p>"
            "<p>lift_over_X = model / baseline X on the same split (popular, random, als = implicit ALS, ease = EASE), "
            "lift_over_best_baseline = model / the best of them, oracle_ratio = model / generator oracle (synthetic "
            "data only). Segments: cold = users with fewer than 5 history interactions, new_items = relevance "
            f"restricted to items with no history interactions.</p>{skipped}{body}</body></html>")


def plot_by_k(evaluation: Evaluation, path: Path) -> Path:
    """One panel per ranking metric: value at each K for the model and each baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m for m in RANKING_METRICS if m in evaluation.metric_names]
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(3.2 * max(len(names), 1), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], names):
        for system, segs in evaluation.summaries.items():
            values = [segs.get("all", {}).get(metric_key(metric, k), np.nan) for k in evaluation.ks]
            ax.plot(evaluation.ks, values, "o-", label=system, color=SYSTEM_COLOURS.get(system))
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("K", fontsize=8)
        ax.set_xscale("log")
        ax.set_xticks(evaluation.ks, [str(k) for k in evaluation.ks])
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_segments(evaluation: Evaluation, path: Path) -> Path:
    """NDCG (or the first ranking metric) at the smallest K per segment and system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = next((m for m in ("ndcg",) + RANKING_METRICS if m in evaluation.metric_names), None)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if metric is not None:
        key = metric_key(metric, evaluation.ks[0])
        systems = list(evaluation.summaries)
        segments = [s for s in SEGMENTS if s in evaluation.summaries.get("model", {})]
        width = 0.8 / max(len(systems), 1)
        x = np.arange(len(segments))
        for j, system in enumerate(systems):
            vals = [evaluation.summaries[system].get(s, {}).get(key, np.nan) for s in segments]
            ax.bar(x + j * width - 0.4 + width / 2, vals, width, label=system, color=SYSTEM_COLOURS.get(system))
        ax.set_xticks(x, segments)
        ax.set_ylabel(key)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["plot_by_k", "plot_segments", "write_evaluation_outputs"]
