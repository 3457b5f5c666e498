"""Champion vs challenger on the same held-out data: per-metric deltas with paired
bootstrap confidence intervals, as a table (CSV, HTML) and plots (PNG).

Why paired bootstrap over users: both models rank the same users against the same
held-out likes, so the per-user differences carry the comparison; resampling users
(not interactions) respects that one user's numbers are correlated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd

from ml.evaluation.evaluate import Evaluation, evaluate_bundle
from ml.evaluation.protocol import SEGMENTS, segment_masks
from ml.logs import get_logger

if TYPE_CHECKING:
    from ml.data.schema import Dataset

log = get_logger("training")

TABLE_COLUMNS = ["segment", "metric", "champion", "challenger", "delta", "ci_low", "ci_high", "relative_delta",
                 "p_value", "n_users", "winner"]


@dataclass
class Comparison:
    """The comparison table and both evaluations it came from."""

    table: pd.DataFrame
    champion: Evaluation
    challenger: Evaluation
    n_bootstrap: int
    confidence: float

    def overall(self) -> pd.DataFrame:
        return self.table[self.table["segment"] == "all"].reset_index(drop=True)

    def flat_metrics(self) -> dict[str, float]:
        """`champion.ndcg_at_10`, `challenger.*`, `delta.*`, `delta_ci_low.*`, `delta_ci_high.*` (segment "all");
        segments as `delta.cold.ndcg_at_10`."""
        out: dict[str, float] = {}
        for row in self.table.itertuples(index=False):
            name = row.metric if row.segment == "all" else f"{row.segment}.{row.metric}"
            if row.segment == "all":
                out[f"champion.{name}"] = row.champion
                out[f"challenger.{name}"] = row.challenger
                out[f"delta_ci_low.{name}"] = row.ci_low
                out[f"delta_ci_high.{name}"] = row.ci_high
            out[f"delta.{name}"] = row.delta
        return out

    def summary(self, metric: str) -> str:
        row = self.overall().set_index("metric").loc[metric]
        return (f"{metric}: champion {row.champion:.4f}, challenger {row.challenger:.4f}, delta {row.delta:+.4f} "
                f"[{row.ci_low:+.4f}, {row.ci_high:+.4f}] -> {row.winner}")


def paired_bootstrap(diffs: np.ndarray, n_bootstrap: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile CI and two-sided bootstrap p-value of the mean of each column of `diffs` (users x metrics)."""
    diffs = np.asarray(diffs, dtype=np.float64)
    if diffs.ndim == 1:
        diffs = diffs[:, None]
    n, m = diffs.shape
    if n == 0:
        nan = np.full(m, np.nan)
        return nan, nan.copy(), nan.copy()
    rng = np.random.default_rng(seed)
    means = np.empty((n_bootstrap, m))
    chunk = max(1, int(2e7 // max(n * m, 1)))
    for lo in range(0, n_bootstrap, chunk):
        hi = min(n_bootstrap, lo + chunk)
        idx = rng.integers(0, n, size=(hi - lo, n))
        means[lo:hi] = diffs[idx].mean(axis=1)
    alpha = 1.0 - confidence
    low = np.quantile(means, alpha / 2, axis=0)
    high = np.quantile(means, 1 - alpha / 2, axis=0)
    # share of resamples on the far side of zero, doubled (>= 1/B so it is never exactly 0)
    p_le = (means <= 0).mean(axis=0)
    p_ge = (means >= 0).mean(axis=0)
    p = np.clip(2 * np.minimum(p_le, p_ge), 1.0 / n_bootstrap, 1.0)
    p = np.where(np.all(diffs == 0, axis=0), 1.0, p)
    return low, high, p


def _per_user(sm, segment: str, key: str) -> np.ndarray | None:
    if segment == "new_items" and key in sm.per_user_new:
        return sm.per_user_new[key]
    return sm.per_user.get(key)


def compare_evaluations(champion: Evaluation, challenger: Evaluation, n_bootstrap: int = 1000,
                        confidence: float = 0.95, seed: int = 0) -> Comparison:
    """Deltas (challenger - champion) of the model metrics, per segment, with bootstrap CIs.

    Coverage and AUC are not means over users; their rows have a delta but no CI.
    """
    if not np.array_equal(champion.user_ids, challenger.user_ids) or not np.array_equal(
            champion.split.rel_indptr, challenger.split.rel_indptr):
        raise ValueError("the two evaluations are not on the same held-out users; evaluate both on the same data and "
                         "split shares (validation_split, test_split)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1), e.g. 0.95")
    if n_bootstrap < 100:
        raise ValueError(f"n_bootstrap={n_bootstrap} is too few for a percentile interval: use at least 100 (1000 is usual)")
    a, b = champion.systems["model"], challenger.systems["model"]
    masks = segment_masks(champion.split)
    rows = []
    for segment in SEGMENTS:
        mask = masks[segment]
        if not mask.any():
            continue
        summary_a = champion.summaries["model"].get(segment, {})
        summary_b = challenger.summaries["model"].get(segment, {})
        keys_ci, cols = [], []
        for key in summary_a:
            va, vb = _per_user(a, segment, key), _per_user(b, segment, key)
            if va is None or vb is None:
                continue  # coverage, AUC: not a mean over users
            va, vb = va[mask], vb[mask]
            cols.append(np.where(np.isfinite(va) & np.isfinite(vb), vb - va, 0.0))
            keys_ci.append(key)
        low = high = p = np.zeros(0)
        if cols:
            low, high, p = paired_bootstrap(np.stack(cols, axis=1), n_bootstrap, confidence, seed)
        ci = {k: (low[i], high[i], p[i]) for i, k in enumerate(keys_ci)}
        for key in summary_a:
            va, vb = summary_a[key], summary_b.get(key, np.nan)
            delta = vb - va
            lo_, hi_, pv = ci.get(key, (np.nan, np.nan, np.nan))
            if np.isfinite(lo_) and (lo_ > 0 or hi_ < 0):
                winner = "challenger" if delta > 0 else "champion"
            elif np.isfinite(lo_):
                winner = "tie"
            else:
                winner = "no CI"
            rows.append({"segment": segment, "metric": key, "champion": va, "challenger": vb, "delta": delta,
                         "ci_low": lo_, "ci_high": hi_, "relative_delta": delta / va if va else np.nan,
                         "p_value": pv, "n_users": int(mask.sum()), "winner": winner})
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return Comparison(table=table, champion=champion, challenger=challenger, n_bootstrap=n_bootstrap,
                      confidence=confidence)


def compare_bundles(champion: str | Path, challenger: str | Path, dataset: "Dataset",
                    ks: Sequence[int] | str | None = None, metrics: Sequence[str] | str | None = None,
                    validation_split: float | None = None, n_bootstrap: int = 1000, confidence: float = 0.95,
                    seed: int = 0, test_split: float | None = None) -> Comparison:
    """Evaluate two bundles on one test part (the champion's split shares unless given) and compare them."""
    from ml.bundle.load import load_bundle
    from ml.evaluation.protocol import split_shares

    champ = load_bundle(champion)
    chall = load_bundle(challenger)
    shares = split_shares(champ.config, validation_split, test_split)
    other = split_shares(chall.config, validation_split, test_split)
    if other != shares:
        log.info("challenger trained with %s; both are evaluated on the champion's %s", other, shares)
    ev_a = evaluate_bundle(champ, dataset, ks, metrics, baselines=(), seed=seed, **shares)
    ev_b = evaluate_bundle(chall, dataset, ks, metrics, baselines=(), seed=seed, **shares)
    return compare_evaluations(ev_a, ev_b, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)


# ---------------------------------------------------------------- outputs
def write_outputs(comparison: Comparison, folder: str | Path, champion_label: str = "champion",
                  challenger_label: str = "challenger") -> dict[str, Path]:
    """comparison.csv, comparison.html, deltas.png, metrics.png in `folder`."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison.table
    paths = {"csv": out / "comparison.csv", "html": out / "comparison.html",
             "deltas": out / "deltas.png", "metrics": out / "metrics.png"}
    table.to_csv(paths["csv"], index=False)
    paths["html"].write_text(_html(table, comparison, champion_label, challenger_label), encoding="utf-8")
    _plot_deltas(comparison.overall(), paths["deltas"], comparison.confidence, champion_label, challenger_label)
    _plot_metrics(comparison.overall(), paths["metrics"], champion_label, challenger_label)
    return paths


def _html(table: pd.DataFrame, comparison: Comparison, champion_label: str, challenger_label: str) -> str:
    def colour(row: pd.Series) -> list[str]:
        c = {"challenger": "background:#d8f3dc", "champion": "background:#ffd6d6"}.get(row["winner"], "")
        return [c] * len(row)

    styled = (table.style.apply(colour, axis=1).format(precision=4, na_rep="-").hide(axis="index"))
    title = f"Challenger {challenger_label} vs champion {champion_label}"
    note = (f"delta = challenger - champion; {int(comparison.confidence * 100)}% paired bootstrap CI over users "
            f"({comparison.n_bootstrap} resamples). Green: challenger better, red: champion better (CI excludes 0).")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            "<style>body{font-family:sans-serif} td,th{padding:2px 8px;font-size:13px}</style></head>"
            f"<body><h2>{title}</h2><p>{note}</p>{styled.to_html()}</body></html>")


def _plot_deltas(overall: pd.DataFrame, path: Path, confidence: float, champion_label: str,
                 challenger_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = overall[np.isfinite(overall["relative_delta"].astype(float))]
    fig, ax = plt.subplots(figsize=(7, 0.28 * max(len(data), 4) + 1.2))
    y = np.arange(len(data))
    rel = data["relative_delta"].to_numpy(float) * 100
    base = data["champion"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo = (data["ci_low"].to_numpy(float) / base) * 100
        hi = (data["ci_high"].to_numpy(float) / base) * 100
    err = np.vstack([np.where(np.isfinite(lo), rel - lo, 0), np.where(np.isfinite(hi), hi - rel, 0)])
    colours = ["#2d6a4f" if w == "challenger" else "#c1121f" if w == "champion" else "#888"
               for w in data["winner"]]
    ax.barh(y, rel, xerr=err, color=colours, capsize=2)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y, data["metric"])
    ax.invert_yaxis()
    ax.set_xlabel(f"challenger vs champion, % of champion ({int(confidence * 100)}% CI)")
    ax.set_title(f"{challenger_label} vs {champion_label}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_metrics(overall: pd.DataFrame, path: Path, champion_label: str, challenger_label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = overall[overall["metric"].str.contains("_at_") & ~overall["metric"].str.startswith(("novelty", "coverage"))]
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(data)), 3.6))
    x = np.arange(len(data))
    ax.bar(x - 0.2, data["champion"], 0.4, label=f"champion {champion_label}")
    ax.bar(x + 0.2, data["challenger"], 0.4, label=f"challenger {challenger_label}")
    ax.set_xticks(x, data["metric"], rotation=60, ha="right", fontsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


__all__ = ["Comparison", "compare_bundles", "compare_evaluations", "paired_bootstrap", "write_outputs"]
